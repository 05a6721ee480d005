"""The decoupling family of Kang et al. (ICLR 2020, "Decoupling Representation and Classifier
for Long-Tailed Recognition") on frozen features: `ncm`, `crt`, `tau-norm`, `lws`
(docs/methods.md §10).

  ncm       nearest class mean: s * cos(f, mean_c), the means of the L2-normalised features
  crt       classifier re-training with class-balanced sampling = `linear` + `weighted-ce`
            (inverse frequency), its exact expected objective, on the full batch
  tau-norm  the plain head's rows rescaled, W_c / ||W_c||^tau (no bias); tau fixed or "auto"
  lws       the plain head frozen, one learned scale per class on the class-balanced objective

Every method keeps the post-hoc options (posthoc_tau, interpolate, calibrate) of `linear`;
crt, tau-norm and lws also init="prototypes" / L2-SP for their underlying head.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.data.features import FeatureSet
from longtail.data.stats import require_nonempty
from longtail.errors import ConfigError
from longtail.eval.metrics import balanced_accuracy
from longtail.methods.heads import CosineHead, LinearHead
from longtail.methods.losses import make_loss
from longtail.methods.probe.config import ProbeConfig
from longtail.methods.probe.methods import add_zero_shot, adjust, fit_linear, initial_weights
from longtail.methods.probe.model import Probe
from longtail.methods.probe.registry import probe_method
from longtail.methods.probe.select import TAU_GRID
from longtail.methods.probe.solvers import SOLVERS
from longtail.methods.probe.train import train_head

CRT_LOSS = "weighted-ce"  # class-balanced sampling's expected objective (docs/methods.md §10.2)
CRT_LOSS_OPTIONS = {"weighting": "inverse"}
TAU_NORM_DEFAULT = 1.0  # full row normalisation; the paper chooses tau on validation ("auto")
_NORM_FLOOR = 1e-12  # rows shorter than this count as this long (no division by zero)


# ----------------------------------------------------------------------------- option checks
def _check_keys(method: str, options: dict[str, Any], valid: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"method '{method}': unknown method_options key '{unknown[0]}' "
                          f"(valid: {', '.join(valid)})")


def tau_option(options: dict[str, Any]) -> float | str:
    """method_options.tau of tau-norm: "auto" or a finite number >= 0 (default 1)."""
    value = options.get("tau", TAU_NORM_DEFAULT)
    if value == "auto":
        return value
    try:
        tau = math.nan if isinstance(value, bool) else float(value)  # "1e-1" is a string in YAML 1.1
    except (TypeError, ValueError):
        tau = math.nan
    if not (math.isfinite(tau) and tau >= 0):
        raise ConfigError(f"method 'tau-norm': method_options.tau must be 'auto' or a number >= 0, got {value!r}")
    return tau


def _check_tau_norm(options: dict[str, Any]) -> None:
    _check_keys("tau-norm", options, ("tau",))
    tau_option(options)


def _tau_norm_needs_val(options: dict[str, Any]) -> list[str]:
    return ["method_options.tau='auto'"] if options.get("tau") == "auto" else []


def lws_max_iter(options: dict[str, Any], default: int) -> int:
    """method_options.max_iter of lws: L-BFGS iterations of the scale fit (default: cfg.max_iter)."""
    value = options.get("max_iter", default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"method 'lws': method_options.max_iter must be an integer >= 0, got {value!r}")
    return value


def _check_lws(options: dict[str, Any]) -> None:
    _check_keys("lws", options, ("max_iter",))
    lws_max_iter(options, 0)


def _require_linear_head(method: str, cfg: ProbeConfig) -> None:
    if cfg.head != "linear":
        raise ConfigError(f"method '{method}' rescales the rows of a linear head: use head=linear "
                          f"(got head={cfg.head})")


# ----------------------------------------------------------------------------- ncm
def class_means(train: FeatureSet) -> Tensor:
    """(C, d) unit-norm means of the L2-normalised training features of each class."""
    x = F.normalize(torch.as_tensor(np.asarray(train.features), dtype=torch.float64), dim=1)
    y = torch.as_tensor(np.asarray(train.labels), dtype=torch.long)
    sums = torch.zeros(train.num_classes, x.shape[1], dtype=torch.float64).index_add_(0, y, x)
    return F.normalize(sums, dim=1).to(torch.float32)  # the mean's direction: the 1/n_c cancels


@probe_method("ncm")
def fit_ncm(train: FeatureSet, cfg: ProbeConfig, val: FeatureSet | None = None) -> Probe:
    """Nearest class mean (Kang et al. 2020): scale * cos(f, class mean); no training."""
    if cfg.init != "random":
        raise ConfigError("method 'ncm' trains no head, so init='prototypes' does not apply "
                          "(interpolate mixes in the prototypes)")
    counts = train.class_counts()
    require_nonempty(counts, train.names())
    means = class_means(train)
    head = CosineHead(train.num_classes, train.dim, weight=means, scale=cfg.scale)
    probe = Probe(head, counts, normalize=cfg.normalize, class_names=train.names(), config=cfg.to_dict(),
                  info={"ncm": {"rule": f"{cfg.scale:g} * cos(f, mean of normalised features of c)"}})
    return adjust(add_zero_shot(probe, train, cfg), cfg, val)


# ----------------------------------------------------------------------------- crt
@probe_method("crt")
def fit_crt(train: FeatureSet, cfg: ProbeConfig, val: FeatureSet | None = None) -> Probe:
    """cRT (Kang et al. 2020): cfg.head re-trained class-balanced = linear + weighted-ce (inverse)."""
    balanced = replace(cfg, loss=CRT_LOSS, loss_options=dict(CRT_LOSS_OPTIONS))
    probe = fit_linear(train, balanced, val)
    probe.info["crt"] = {"loss": CRT_LOSS, "loss_options": dict(CRT_LOSS_OPTIONS), "replaced_loss": cfg.loss,
                         "replaced_loss_options": dict(cfg.loss_options)}
    return probe


# ----------------------------------------------------------------------------- tau-norm
def _plain_head(train: FeatureSet, cfg: ProbeConfig, *, bias: bool) -> Probe:
    """The plain head of cfg (loss, solver, init, L2-SP), with or without a bias; no post-hoc."""
    counts = train.class_counts()
    require_nonempty(counts, train.names())
    training = {**cfg.head_training(), "head": {"type": "linear", "use_bias": bias}}
    return train_head(train.features, train.labels, counts, **training, init=initial_weights(train, cfg),
                      class_names=train.names())


def row_norms(weight: Tensor) -> Tensor:
    """||W_c|| per row (floored at 1e-12)."""
    return weight.detach().norm(dim=1).clamp_min(_NORM_FLOOR)


def tau_normalised(weight: Tensor, tau: float) -> Tensor:
    """W_c / ||W_c||^tau (tau = 0: W itself, bit for bit)."""
    return weight.detach() / row_norms(weight).pow(float(tau))[:, None]


def choose_tau(probe: Probe, val: FeatureSet) -> tuple[float, dict[str, Any]]:
    """The tau of TAU_GRID with the best validation balanced accuracy of probe's bias-free head
    with rows W_c / ||W_c||^tau (ties: the smaller tau)."""
    raw, _ = probe.parts(val.features)  # z_c = f . W_c, so the tau-normalised logits are z_c / ||W_c||^tau
    norms = row_norms(probe.head.weight)
    scores = np.array([balanced_accuracy((raw / norms.pow(float(t))).numpy(), val.labels, probe.num_classes)
                       for t in TAU_GRID])
    best = int(np.argmax(scores))
    return float(TAU_GRID[best]), {"metric": "val balanced accuracy", "grid": TAU_GRID, "scores": scores,
                                   "best": float(scores[best])}


@probe_method("tau-norm", check_options=_check_tau_norm, needs_validation=_tau_norm_needs_val)
def fit_tau_norm(train: FeatureSet, cfg: ProbeConfig, val: FeatureSet | None = None) -> Probe:
    """tau-normalisation (Kang et al. 2020): bias-free linear head, rows W_c / ||W_c||^tau."""
    _require_linear_head("tau-norm", cfg)
    tau = tau_option(cfg.method_options)
    if tau == "auto" and val is None:
        raise ConfigError("method_options.tau='auto' needs a validation set (val)")
    probe = _plain_head(train, cfg, bias=False)
    info: dict[str, Any] = {"tau": tau, "row_norms": row_norms(probe.head.weight).numpy()}
    if tau == "auto":
        tau, info["selection"] = choose_tau(probe, val)
        info["tau"] = tau
    weight = tau_normalised(probe.head.weight, tau)
    probe.head = LinearHead(probe.num_classes, probe.dim, weight=weight, use_bias=False).eval()
    probe.info["tau_norm"] = info
    return adjust(add_zero_shot(probe, train, cfg), cfg, val)


# ----------------------------------------------------------------------------- lws
class _RowLengths(nn.Module):
    """Logits z * g / ||W||: z the frozen head's logits (N, C), g the learned row lengths (C,).

    g = f * ||W|| with f the per-class scale, so the solver's l2/2 ||g||^2 is the head's own L2
    penalty on the scaled rows f_c W_c.
    """

    def __init__(self, norms: Tensor) -> None:
        super().__init__()
        self.norms = norms
        self.weight = nn.Parameter(norms.clone())  # f = 1

    def forward(self, logits: Tensor) -> Tensor:
        return logits * (self.weight / self.norms)

    def spec(self) -> dict[str, Any]:
        return {"type": "row-lengths"}  # not a closed-form head: the solver uses autograd


def learn_scales(probe: Probe, train: FeatureSet, cfg: ProbeConfig) -> tuple[Tensor, dict[str, Any]]:
    """Per-class scales f (C,) of the frozen head minimising the class-balanced CE of f * z on the
    training features + l2/2 sum_c f_c^2 ||W_c||^2 (l2 = cfg.l2, default 1/N); L-BFGS from f = 1."""
    logits, _ = probe.parts(train.features)
    labels = torch.as_tensor(np.asarray(train.labels), dtype=torch.long)
    norms = row_norms(probe.head.weight)
    lengths = _RowLengths(norms)
    loss_fn = make_loss(CRT_LOSS, probe.class_counts, **CRT_LOSS_OPTIONS)
    l2 = cfg.l2 if cfg.l2 is not None else 1.0 / train.num_samples
    info = SOLVERS.get("lbfgs")(lengths, loss_fn, logits, labels, l2=l2, lr=1.0,
                                max_iter=lws_max_iter(cfg.method_options, cfg.max_iter), tol=cfg.tol,
                                history_size=cfg.history_size)
    scales = lengths.weight.detach() / norms  # exactly 1 where the solver did not move
    return scales, {**info, "scales": scales.numpy(), "objective": f"{CRT_LOSS} (inverse), l2 {l2:g}"}


@probe_method("lws", check_options=_check_lws)
def fit_lws(train: FeatureSet, cfg: ProbeConfig, val: FeatureSet | None = None) -> Probe:
    """LWS (Kang et al. 2020): the plain linear head frozen, one class-balanced scale per class."""
    _require_linear_head("lws", cfg)
    probe = _plain_head(train, cfg, bias=True)
    scales, info = learn_scales(probe, train, cfg)
    weight, bias = probe.head.weight.detach(), probe.head.bias.detach()
    probe.head = LinearHead(probe.num_classes, probe.dim, weight=scales[:, None] * weight,
                            bias=scales * bias).eval()
    probe.info["lws"] = info
    return adjust(add_zero_shot(probe, train, cfg), cfg, val)
