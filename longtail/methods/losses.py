"""Long-tail classification losses (docs/methods.md §1.2, §5.3, §6): CE, class re-weighting, logit
adjustment, CF, CCAR.

Every loss is an `nn.Module` with `forward(logits, targets) -> scalar` (batch mean) and
`per_sample(logits, targets) -> (B,)`; all go through `F.cross_entropy` (log-softmax), never
through exponentiated raw logits. Build them by name with `make_loss`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.errors import ConfigError, DataError
from longtail.registry import Registry

LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss")  # loss=NAME: factory(class_counts, **loss_options)
CCAR_WEIGHTS: Registry = Registry("CCAR weight function")
CCAR_FREQS = ("total", "max")
CCAR_PT = ("raw", "adjusted")


def _log_counts(class_counts) -> Tensor:
    counts = torch.as_tensor(np.asarray(class_counts), dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() == 0:
        raise DataError(f"class counts must be a non-empty 1-D array, got shape {tuple(counts.shape)}")
    if (counts <= 0).any():
        raise DataError(
            f"class {int(torch.nonzero(counts <= 0)[0])} has no training samples; "
            "logit-adjusted losses need every class count > 0"
        )
    return counts.log()


class ShiftedCrossEntropy(nn.Module):
    """Cross-entropy on z + shift, shift a fixed per-class vector (0 for CE, tau*log pi for LA)."""

    def __init__(self, shift: Tensor) -> None:
        super().__init__()
        self.register_buffer("shift", shift.to(torch.float64))  # cast per call: exact in fp64 tests

    def adjusted(self, logits: Tensor) -> Tensor:
        """Logits the loss sees (z + shift); prediction still uses the unadjusted z."""
        return logits + self.shift.to(logits.dtype)

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(self.adjusted(logits), targets, reduction="none")

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return self.per_sample(logits, targets).mean()

    def softmax_ce_terms(self) -> tuple[Tensor | None, Tensor | None]:
        """(shift, class weights) with loss = mean_i w[y_i] CE(z_i + shift, y_i): closed-form gradients.

        A subclass that changes the loss must override this (or L-BFGS will use the wrong gradient)."""
        return self.shift, None


def cross_entropy(class_counts) -> ShiftedCrossEntropy:
    """Plain cross-entropy (the class counts are only validated)."""
    return ShiftedCrossEntropy(torch.zeros_like(_log_counts(class_counts)))


def logit_adjusted(class_counts, tau: float = 1.0) -> ShiftedCrossEntropy:
    """LA loss (Menon et al.): CE(z + tau*log pi, y); log pi = log n - log N (the shift cancels)."""
    log_n = _log_counts(class_counts)
    return ShiftedCrossEntropy(float(tau) * (log_n - torch.logsumexp(log_n, 0)))


def balanced_softmax(class_counts) -> ShiftedCrossEntropy:
    """Balanced softmax (Ren et al.) = LA with tau = 1."""
    return logit_adjusted(class_counts, tau=1.0)


def compensation_factor(class_counts, gamma: float = 0.06, mu: float = 0.5) -> ShiftedCrossEntropy:
    """Sage CF loss, exactly Eq. 22: -log(e^{z_y} n_y L_y / sum_k e^{z_k} n_k L_k).

    Lambda_c = mu * n_c^gamma * S_N / (C * n_min), applied in log space; mu and S_N/(C n_min)
    are class-independent and cancel in the softmax (kept for fidelity, docs/methods.md §5.3).
    """
    if mu <= 0:
        raise ConfigError(f"cf: mu must be > 0, got {mu}")
    log_n = _log_counts(class_counts)
    n = log_n.exp()
    log_lambda = (
        math.log(mu) + float(gamma) * log_n + torch.log(n.sum()) - math.log(n.numel() * n.min())
    )
    return ShiftedCrossEntropy(log_n + log_lambda)


class ClassWeightedCrossEntropy(nn.Module):
    """Re-weighted CE: w_y * CE(z, y) with fixed per-class weights (mean over the batch)."""

    def __init__(self, class_weights: Tensor) -> None:
        super().__init__()
        self.register_buffer("class_weights", class_weights.to(torch.float64))

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        ce = F.cross_entropy(logits, targets, reduction="none")
        return self.class_weights.to(logits.dtype)[targets] * ce

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return self.per_sample(logits, targets).mean()

    def softmax_ce_terms(self) -> tuple[Tensor | None, Tensor | None]:
        """(shift, class weights) with loss = mean_i w[y_i] CE(z_i + shift, y_i): closed-form gradients."""
        return None, self.class_weights


# Raw per-class weights from counts n; normalised afterwards so that sum_c n_c w_c = N.
CLASS_WEIGHTINGS: Registry = Registry("class weighting")
CLASS_WEIGHTINGS.register("inverse", lambda n, beta: 1.0 / n)  # scikit-learn class_weight="balanced"
CLASS_WEIGHTINGS.register("sqrt", lambda n, beta: n.rsqrt())  # square-root inverse frequency
# Class-balanced loss (Cui et al. 2019): inverse "effective number" (1 - beta^n) / (1 - beta)
CLASS_WEIGHTINGS.register("effective", lambda n, beta: (1.0 - beta) / (1.0 - torch.pow(beta, n)))


def weighted_cross_entropy(class_counts, weighting: str = "inverse", beta: float = 0.999) -> ClassWeightedCrossEntropy:
    """CE re-weighted per class: weighting 'inverse' (= scikit-learn's class_weight='balanced'),
    'sqrt' or 'effective' (Cui et al. 2019, with beta); weights average 1 over training samples."""
    if not 0.0 <= beta < 1.0:
        raise ConfigError(f"weighted-ce: beta must be in [0, 1), got {beta}")
    n = _log_counts(class_counts).exp()
    raw = CLASS_WEIGHTINGS.get(weighting)(n, beta)
    return ClassWeightedCrossEntropy(raw * n.sum() / (raw * n).sum())


# ---------------------------------------------------------------------------------------------
# CCAR (docs/methods.md §6): per-sample weights Omega(p_t, f_c) multiplying a base loss.


@CCAR_WEIGHTS.register("exp")
def ccar_exp_weight(p_t: Tensor, f: Tensor, omega: float) -> Tensor:
    """Reconstructed Omega = exp((1 - f') (omega - p_t)), f' = f below the pivot, 1 - f above."""
    f_prime = torch.where(p_t < omega, f, 1.0 - f)
    return torch.exp((1.0 - f_prime) * (omega - p_t))


@CCAR_WEIGHTS.register("one")
def ccar_unit_weight(p_t: Tensor, f: Tensor, omega: float) -> Tensor:
    """Constant 1: reproduces the base loss exactly (a check of the plumbing)."""
    return torch.ones_like(p_t)


class CCARLoss(nn.Module):
    """L = mean_i Omega_i * l_base(z_i, y_i) with detached Omega from p_t and class frequency."""

    def __init__(
        self,
        base: ShiftedCrossEntropy,
        class_counts,
        omega: float = 0.75,
        freq: str = "total",
        weight: str = "exp",
        p_t: str = "raw",
    ) -> None:
        super().__init__()
        if not 0.0 < omega <= 1.0:
            raise ConfigError(f"ccar: omega must be in (0, 1], got {omega}")
        if freq not in CCAR_FREQS:
            raise ConfigError(f"ccar: freq must be one of {CCAR_FREQS}, got '{freq}'")
        if p_t not in CCAR_PT:
            raise ConfigError(f"ccar: p_t must be one of {CCAR_PT}, got '{p_t}'")
        self.base = base
        self.omega = float(omega)
        self.weight_fn: Callable[[Tensor, Tensor, float], Tensor] = CCAR_WEIGHTS.get(weight)
        self.p_t_from_adjusted = p_t == "adjusted"
        n = _log_counts(class_counts).exp()
        self.register_buffer("freq", n / (n.sum() if freq == "total" else n.max()))

    def weights(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Omega_i, detached (constants for the gradient)."""
        with torch.no_grad():
            z = self.base.adjusted(logits) if self.p_t_from_adjusted else logits
            dtype = torch.promote_types(z.dtype, torch.float32)  # fp16 logits: softmax in fp32
            p_t = torch.softmax(z, dim=-1, dtype=dtype).gather(1, targets[:, None])[:, 0]
            f = self.freq.to(dtype)[targets]
            return self.weight_fn(p_t, f, self.omega).to(logits.dtype)

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        return self.weights(logits, targets) * self.base.per_sample(logits, targets)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return self.per_sample(logits, targets).mean()


def _ccar(base_factory):
    def factory(class_counts, omega=0.75, freq="total", weight="exp", p_t="raw", **base_params):
        base = base_factory(class_counts, **base_params)
        return CCARLoss(base, class_counts, omega=omega, freq=freq, weight=weight, p_t=p_t)

    # Advertise the combined signature so make_loss can reject unknown parameters.
    base_sig = inspect.signature(base_factory)
    params = [p for p in inspect.signature(factory).parameters.values() if p.kind != p.VAR_KEYWORD]
    params += [p for name, p in base_sig.parameters.items() if name != "class_counts"]
    factory.__signature__ = inspect.Signature(params)
    factory.__doc__ = f"CCAR reweighting over: {base_factory.__doc__}"
    return factory


LOSSES.register("ce", cross_entropy)
LOSSES.register("la", logit_adjusted)
LOSSES.register("balanced-softmax", balanced_softmax)
LOSSES.register("cf", compensation_factor)
LOSSES.register("weighted-ce", weighted_cross_entropy)
LOSSES.register("ccar", _ccar(cross_entropy))
LOSSES.register("ccar-la", _ccar(logit_adjusted))
LOSSES.register("ccar-bs", _ccar(balanced_softmax))


def loss_parameters(name: str) -> list[str]:
    """Names of the keyword parameters loss `name` accepts."""
    sig = inspect.signature(LOSSES.get(name))
    return [p for p in sig.parameters if p != "class_counts"]


def make_loss(name: str, class_counts, **params) -> nn.Module:
    """Build loss `name` for the given training class counts; unknown parameters are errors."""
    accepted = loss_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"loss '{name}' has no parameter {', '.join(repr(u) for u in unknown)}; "
            f"it accepts: {', '.join(accepted) or 'none'}"
        )
    return LOSSES.get(name)(class_counts, **params)
