"""Latent-space oversamplers behind one imbalanced-learn-like interface (`fit_resample(X, y)`):
`vmf-kde` (docs/methods.md §4.4), `gaussian-kde`, `smote` and `distribution-calibration`
(docs/methods.md §11), registered in OVERSAMPLERS.

Written in torch rather than wrapping imbalanced-learn: SMOTE there is CPU/numpy only and has
no vMF or per-sample Gaussian KDE; here every strategy is batched and runs on the GPU.
Real samples are never modified: resampled data = real rows (unchanged, first) + synthetic rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from longtail.data.profiles import strategy_targets
from longtail.data.stats import MANY_THRESHOLD
from longtail.device import memory_budget, resolve_device
from longtail.errors import ConfigError, DataError
from longtail.maths.finite import all_finite
from longtail.maths.vmf import sample_vmf
from longtail.methods.latent import calibration
from longtail.methods.latent.concentration import class_slices, in_class_knn, local_concentration
from longtail.registry import Registry

OVERSAMPLERS: Registry = Registry("oversampler")

SamplingStrategy = str | Mapping | Callable[[np.ndarray], Mapping] | Sequence[int] | np.ndarray | None


def resolve_oversampling_targets(
    strategy: SamplingStrategy, counts: np.ndarray, class_names: Sequence[str] | None = None
) -> np.ndarray:
    """Target count per class: 'auto'/'max'/None = the largest class for every class, 'median' =
    the median class count (classes above it keep theirs), an integer N = at least N per class,
    a dict class -> target (index or name; unnamed classes keep their count, as in
    imbalanced-learn), a callable counts -> such a dict, or a full sequence of C targets.
    Explicit targets below a class's count are errors (real samples are never removed)."""
    counts = np.asarray(counts, dtype=np.int64)
    names = list(class_names) if class_names is not None else None
    if strategy is None or (isinstance(strategy, str) and strategy in ("auto", "max", "not majority", "all")):
        return np.full_like(counts, counts.max())
    if isinstance(strategy, str) and strategy == "median":
        return np.maximum(counts, int(np.median(counts)))
    if isinstance(strategy, (int, np.integer)) and not isinstance(strategy, bool):
        if strategy < 1:
            raise ConfigError(f"sampling_strategy N must be >= 1, got {strategy}")
        return np.maximum(counts, int(strategy))
    if isinstance(strategy, str):
        raise ConfigError(f"unknown sampling_strategy '{strategy}'; use 'max', 'median', a count N, a dict "
                          "or a callable")
    targets = strategy_targets(strategy, counts, names)
    under = np.flatnonzero(targets < counts)
    if under.size:
        c = int(under[0])
        raise ConfigError(
            f"sampling_strategy asks for {int(targets[c])} samples of class "
            f"'{names[c] if names else c}', which already has {int(counts[c])} (oversampling only adds)"
        )
    return targets


SYNTHETIC_SHARE = 4  # synthetic rows may use budget / SYNTHETIC_SHARE (held ~3x: drawn, joined, normalised)


def cap_targets(targets: np.ndarray, counts: np.ndarray, max_new: int) -> tuple[np.ndarray, int | None]:
    """(targets, None) when they add at most `max_new` rows; else every target lowered to
    min(target_c, T) with T the largest common cap that adds at most `max_new` rows (classes
    never lose real rows), and T. The tail keeps its priority: a class below T still gets
    brought up to T, only the largest targets are cut."""
    targets, counts = np.asarray(targets, np.int64), np.asarray(counts, np.int64)

    def added(cap: int) -> int:
        return int(np.clip(np.minimum(targets, cap) - counts, 0, None).sum())

    if added(int(targets.max())) <= max_new:
        return targets, None
    lo, hi = 0, int(targets.max())  # added(lo) = 0 <= max_new < added(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if added(mid) <= max_new else (lo, mid)
    return np.maximum(counts, np.minimum(targets, lo)), lo


@dataclass
class SyntheticSamples:
    """Synthetic rows, their labels, the real row each was drawn around, and a summary."""

    features: Tensor
    labels: Tensor
    seeds: Tensor
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Oversampler:
    """Base: pick seeds uniformly within each class (with replacement) up to the targets; a
    subclass turns seeds into synthetic rows in `_generate`."""

    sampling_strategy: SamplingStrategy = "auto"
    seed: int = 0
    device: str = "auto"
    memory: str | int | None = None  # None: no cap; 'auto' / '4GB': cap the synthetic rows (cap_targets)

    name = "oversampler"

    def settings(self) -> dict[str, Any]:
        """JSON-friendly settings for run metadata."""
        out = asdict(self)
        if isinstance(out["sampling_strategy"], np.ndarray):
            out["sampling_strategy"] = out["sampling_strategy"].tolist()
        if not isinstance(out["sampling_strategy"], (str, int, float, dict, list, type(None))):
            out["sampling_strategy"] = repr(self.sampling_strategy)
        return {"oversampler": self.name, **out}

    def sample(
        self, features, labels, num_classes: int | None = None, class_names: Sequence[str] | None = None
    ) -> SyntheticSamples:
        """Draw the synthetic rows needed to bring every class to its target count."""
        device = resolve_device(self.device)
        x = torch.as_tensor(features, device=device)
        if not x.is_floating_point():
            x = x.float()
        y = torch.as_tensor(labels, device=device).long()
        if x.ndim != 2 or y.shape != (x.shape[0],):
            raise DataError(f"features {tuple(x.shape)} and labels {tuple(y.shape)} do not match")
        if y.numel() == 0 or y.min() < 0:
            raise DataError("labels must be non-empty and non-negative")
        if not all_finite(x):
            raise DataError("features contain NaN or inf")
        num_classes = int(y.max()) + 1 if num_classes is None else num_classes
        counts = torch.bincount(y, minlength=num_classes)
        if (counts == 0).any():
            raise DataError(f"class {int(torch.nonzero(counts == 0)[0])} has no training samples to oversample")
        targets = torch.as_tensor(
            resolve_oversampling_targets(self.sampling_strategy, counts.cpu().numpy(), class_names), device=device
        )
        info: dict[str, Any] = self.settings()
        if self.memory is not None:
            targets, cap = self._within_budget(targets, counts, x)
            info.update(budget_cap=cap, budget_bytes=memory_budget(self.memory, device) // SYNTHETIC_SHARE)
        n_new = torch.where(self._eligible(counts), targets - counts, 0)
        generator = torch.Generator(device=device).manual_seed(self.seed)
        order, starts, _ = class_slices(y, num_classes)
        cls = torch.repeat_interleave(torch.arange(num_classes, device=device), n_new)
        u = torch.rand(cls.numel(), generator=generator, device=device, dtype=torch.float64)
        pick = (u * counts[cls]).long().clamp_max(counts[cls] - 1)
        seeds = order[starts[cls] + pick]
        info["synthetic_per_class"] = n_new.tolist()
        synth = self._generate(x, y, seeds, cls, counts, generator, info) if cls.numel() else x[:0].clone()
        info["num_synthetic"] = int(cls.numel())
        return SyntheticSamples(synth, cls, seeds, info)

    def fit_resample(self, features, labels):
        """imbalanced-learn style: (X_res, y_res) = real rows unchanged, then synthetic rows."""
        synth = self.sample(features, labels)
        if isinstance(features, np.ndarray):
            x_new = synth.features.cpu().numpy().astype(features.dtype, copy=False)
            return np.concatenate([features, x_new]), np.concatenate([np.asarray(labels), synth.labels.cpu().numpy()])
        x = torch.as_tensor(features)
        x_new = synth.features.to(device=x.device, dtype=x.dtype)
        y = torch.as_tensor(labels)
        return torch.cat([x, x_new]), torch.cat([y, synth.labels.to(y.device, y.dtype)])

    def _within_budget(self, targets: Tensor, counts: Tensor, x: Tensor) -> tuple[Tensor, int | None]:
        """Targets capped so that the synthetic rows fit budget / SYNTHETIC_SHARE (`cap_targets`)."""
        budget = memory_budget(self.memory, x.device) // SYNTHETIC_SHARE
        max_new = budget // (x.shape[1] * x.element_size())
        eligible = self._eligible(counts).cpu().numpy()
        wanted = np.where(eligible, targets.cpu().numpy(), counts.cpu().numpy())
        capped, cap = cap_targets(wanted, counts.cpu().numpy(), max_new)
        if cap is not None:
            warnings.warn(f"{self.name}: the targets add {int((wanted - counts.cpu().numpy()).sum()):,} synthetic rows, "
                  f"over the memory budget ({budget / 2**30:.2f} GB for them: memory={self.memory}); every "
                  f"class is brought to at most {cap:,} rows instead", stacklevel=2)
        return torch.where(torch.as_tensor(eligible, device=targets.device),
                           torch.as_tensor(capped, device=targets.device), targets), cap

    def _eligible(self, counts: Tensor) -> Tensor:
        """Classes that may receive synthetic rows (bool per class); all by default."""
        return torch.ones_like(counts, dtype=torch.bool)

    def _generate(
        self, x: Tensor, y: Tensor, seeds: Tensor, cls: Tensor, counts: Tensor, generator, info: dict
    ) -> Tensor:
        """Synthetic rows (len(seeds), d) for seeds (real row indices) of classes `cls`."""
        raise NotImplementedError


@OVERSAMPLERS.register("vmf-kde")
@dataclass
class VMFKDEOversampler(Oversampler):
    """vMF kernel around each seed with its local concentration kappa_i (Wood's sampler)."""

    k_neighbors: int = 1
    min_kappa: float = 1e-3
    max_kappa: float = 1e7

    name = "vmf-kde"

    def _generate(self, x, y, seeds, cls, counts, generator, info):
        kappa = local_concentration(x, y, self.k_neighbors, self.min_kappa, self.max_kappa)
        info["kappa_median"] = float(kappa.median())
        info["kappa_capped"] = int((kappa >= self.max_kappa).sum())
        return sample_vmf(x[seeds], kappa[seeds], generator).to(x.dtype)


@OVERSAMPLERS.register("gaussian-kde")
@dataclass
class GaussianKDEOversampler(Oversampler):
    """Isotropic Gaussian kernel around each seed, per-class bandwidth h_c = factor * sigma_c.

    sigma_c^2 = mean per-dimension within-class variance; factor = Scott's n^(-1/(d+4)) (as
    scipy.stats.gaussian_kde), Silverman's, or a number. `project` puts samples back on the
    unit sphere (where the real embeddings live). Singleton classes use the median sigma.
    """

    bandwidth: str | float = "scott"
    project: bool = True

    name = "gaussian-kde"

    def _factor(self, n: Tensor, d: int) -> Tensor:
        n = n.double()
        if self.bandwidth == "scott":
            return n ** (-1.0 / (d + 4))
        if self.bandwidth == "silverman":
            return (n * (d + 2) / 4.0) ** (-1.0 / (d + 4))
        if isinstance(self.bandwidth, (int, float)) and self.bandwidth > 0:
            return torch.full_like(n, float(self.bandwidth))
        raise ConfigError(f"gaussian-kde bandwidth must be 'scott', 'silverman' or > 0, got {self.bandwidth!r}")

    def _generate(self, x, y, seeds, cls, counts, generator, info):
        num_classes = counts.numel()
        counts = counts.double()
        xd = x.double()
        mean = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, device=x.device).index_add_(0, y, xd)
        mean /= counts[:, None]
        sq = ((xd - mean[y]) ** 2).sum(1)
        var = torch.zeros(num_classes, dtype=torch.float64, device=x.device).index_add_(0, y, sq)
        var /= ((counts - 1).clamp_min(1) * x.shape[1])
        sigma = var.sqrt()
        sigma[counts < 2] = sigma[counts >= 2].median() if (counts >= 2).any() else 0.0
        h = self._factor(counts, x.shape[1]) * sigma
        info["bandwidth_median"] = float(h.median())
        noise = torch.randn(seeds.numel(), x.shape[1], generator=generator, device=x.device, dtype=x.dtype)
        out = x[seeds] + h[cls].to(x.dtype)[:, None] * noise
        return torch.nn.functional.normalize(out, dim=1) if self.project else out


@OVERSAMPLERS.register("smote")
@dataclass
class SMOTEOversampler(Oversampler):
    """SMOTE (Chawla et al. 2002): x = u_i + gap * (u_j - u_i), u_j one of the seed's k nearest
    in-class neighbours (cosine), gap ~ U(0, 1). Singleton classes repeat their only sample."""

    k_neighbors: int = 5
    project: bool = False

    name = "smote"

    def _generate(self, x, y, seeds, cls, counts, generator, info):
        index, _ = in_class_knn(x, y, self.k_neighbors, classes=torch.bincount(cls, minlength=counts.numel()) > 0)
        available = (index[seeds] >= 0).sum(1)
        u = torch.rand(seeds.numel(), generator=generator, device=x.device, dtype=torch.float64)
        which = (u * available).long().clamp_min(0).clamp_max((available - 1).clamp_min(0))
        partner = index[seeds, which]
        partner = torch.where(available > 0, partner, seeds)
        info["duplicated_singletons"] = int((available == 0).sum())
        gap = torch.rand(seeds.numel(), 1, generator=generator, device=x.device, dtype=x.dtype)
        out = torch.lerp(x[seeds], x[partner], gap)  # x_i + gap * (x_j - x_i)
        return torch.nn.functional.normalize(out, dim=1) if self.project else out


@OVERSAMPLERS.register("distribution-calibration")
@dataclass
class DistributionCalibrationOversampler(Oversampler):
    """Distribution calibration (Yang et al. 2021): tail Gaussians calibrated by the k nearest heads.

    docs/methods.md §11: every tail class (n_c <= head_threshold, default the many-shot
    threshold) is sampled from N(mu', Sigma') calibrated with its k nearest head classes in
    Tukey space; head classes get no synthetic rows. `calibrate`: "sample" (one calibration per seed row, as the paper) or
    "class" (the tail class mean as the query). `alpha_relative`: alpha in units of the mean
    per-dimension head variance (scale-free), else absolute as in the paper. Tukey's x^lambda
    needs non-negative features: with negative entries it is skipped, unless `signed_tukey`
    (sign(x) |x|^lambda)."""

    k: int = 2
    alpha: float = 0.21
    tukey_lambda: float = 0.5
    head_threshold: int | None = None
    calibrate: str = "sample"
    alpha_relative: bool = True
    signed_tukey: bool = False

    name = "distribution-calibration"

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"distribution-calibration k must be an integer >= 1, got {self.k!r}")
        if not (isinstance(self.alpha, (int, float)) and 0 <= self.alpha < float("inf")):
            raise ConfigError(f"distribution-calibration alpha must be a finite number >= 0, got {self.alpha!r}")
        if not (isinstance(self.tukey_lambda, (int, float)) and 0 < self.tukey_lambda < float("inf")):
            raise ConfigError(f"distribution-calibration tukey_lambda must be > 0 (1 = no transform), "
                              f"got {self.tukey_lambda!r}")
        threshold = self.head_threshold
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1):
            raise ConfigError(f"distribution-calibration head_threshold must be an integer >= 1, got {threshold!r}")
        if self.calibrate not in ("sample", "class"):
            raise ConfigError(f"distribution-calibration calibrate must be 'sample' or 'class', got {self.calibrate!r}")

    @property
    def threshold(self) -> int:
        return MANY_THRESHOLD if self.head_threshold is None else self.head_threshold

    def _eligible(self, counts):
        return ~calibration.head_mask(counts, self.threshold, self.k)

    def _generate(self, x, y, seeds, cls, counts, generator, info):
        lam = self.tukey_lambda if self.signed_tukey or bool((x >= 0).all()) else 1.0
        z = calibration.tukey(x, lam)
        heads = torch.nonzero(calibration.head_mask(counts, self.threshold, self.k))[:, 0]
        queries = z[seeds] if self.calibrate == "sample" else calibration.class_means(z, y, counts.numel())[cls]
        scale = calibration.mean_head_variance(z, y, heads) if self.alpha_relative else 1.0
        info.update(head_classes=heads.tolist(), alpha_effective=self.alpha * scale, tukey_applied=lam != 1)
        out = calibration.sample_calibrated(z, y, heads, queries, self.k, self.alpha * scale, generator)
        return calibration.inverse_tukey(out, lam).to(x.dtype)


def make_oversampler(name: str, **params) -> Oversampler:
    """Build oversampler `name` with its parameters; unknown parameters are ConfigErrors."""
    cls = OVERSAMPLERS.get(name)
    try:
        return cls(**params)
    except TypeError as err:
        raise ConfigError(f"bad parameters for oversampler '{name}': {err}") from None

