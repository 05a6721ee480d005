"""The decoupling family of Kang et al. (ICLR 2020, "Decoupling Representation and Classifier
for Long-Tailed Recognition") on frozen features, run as the authors run them
(facebookresearch/classifier-balancing): `ncm`, `crt`, `tau-norm`, `lws` (docs/methods.md §10).

  ncm       nearest class mean; rule "centred" (default, the authors' KNNClassifier: features
            minus the training mean, L2-normalised, squared Euclidean distance to the class
            means of those) or "cosine" (s * cos(f, mean of the normalised features))
  crt       classifier re-training with class-balanced sampling = `linear` + `weighted-ce`
            (inverse frequency), its exact expected objective, on the full batch
  tau-norm  a plain-CE head's rows rescaled, W_c / ||W_c||^tau, its bias dropped (as the authors'
            tau_norm.py); tau ("auto", the default) chosen on the authors' grid 0, 0.1, ..., 2 on
            the validation set when there is one, else by stratified k-fold cross-validation on
            the training features (pooled held-out predictions), the head then refitted on all
  lws       the plain-CE head frozen, one learned scale per class on the class-balanced objective

tau-norm and lws train their base head with plain CE (`method_options.base_loss`, default
"ce", as the authors' stage 1) whatever `loss` says, with l2 = 1 / (3 N) unless `l2` is set.
When tau is chosen on a split drawn from the training features (val_split / val_per_class), the
head is refitted on all of them afterwards.
Every method keeps the post-hoc options (posthoc_tau, interpolate, calibrate) of `linear`;
crt, tau-norm and lws also init="prototypes" / L2-SP for their underlying head.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.data.features import FeatureSet
from longtail.data.splits import stratified_folds
from longtail.data.stats import require_nonempty
from longtail.errors import ConfigError, DataError
from longtail.eval.metrics import balanced_accuracy_se
from longtail.methods.heads import HEADS, CosineHead, LinearHead
from longtail.methods.losses import LOSSES, make_loss
from longtail.methods.probe.config import ProbeConfig
from longtail.methods.probe.methods import add_zero_shot, adjust, fit_linear, initial_weights
from longtail.methods.probe.model import Probe
from longtail.methods.probe.registry import probe_method
from longtail.methods.probe.select import TAU_GRID
from longtail.methods.probe.solvers import SOLVERS
from longtail.methods.probe.train import train_head

CRT_LOSS = "weighted-ce"  # class-balanced sampling's expected objective (docs/methods.md §10.2)
CRT_LOSS_OPTIONS = {"weighting": "inverse"}
BASE_LOSS = "ce"  # tau-norm / lws base head: the authors' stage 1 is plain CE (docs/methods.md §10.3)
# ... fitted more closely than the probe's default (C = 1), as the authors' stage-1 classifier is:
# l2 = 1 / (BASE_C N) when `l2` is unset, scikit-learn's C = 3 [DEFAULT, measured: §10.3]
BASE_C = 3.0
# tau when it cannot be chosen: no validation set and no cross-validation possible (every class
# with a single training row) [DEFAULT, measured: docs/methods.md §10.3]. The authors' figure
# (classifier-balancing README, assets/tau_norm.png: ImageNet-LT, ResNeXt-50) peaks at ~0.7; with
# this base head our three benchmarks peak at 0.5-1.1 and 0.9 is the value of the authors' grid
# that loses least on the worst of them. Otherwise tau is chosen on TAU_GRID (val, else k-fold CV).
TAU_NORM_DEFAULT = 0.9
TAU_CV_FOLDS = 5  # k of the cross-validation choosing tau without a validation set (fewer: smallest class)
# base losses that already rebalance the classes: tau-norm / lws on top of them correct twice
REBALANCING = ("la", "balanced-softmax", "cf", "weighted-ce", "ccar", "ccar-la", "ccar-bs")
TAU_NORM_BIAS = ("dropped", "none")  # dropped: trained with a bias, scored without (the authors')
NCM_RULES = ("centred", "cosine")  # centred: the authors' default (feat_type cl2n, dist_type l2)
_NORM_FLOOR = 1e-12  # rows shorter than this count as this long (no division by zero)


# ----------------------------------------------------------------------------- option checks
def _check_keys(method: str, options: dict[str, Any], valid: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"method '{method}': unknown method_options key '{unknown[0]}' "
                          f"(valid: {', '.join(valid)})")


def tau_option(options: dict[str, Any]) -> float | str:
    """method_options.tau of tau-norm: "auto" (default: chosen on the validation set when there is
    one, else by k-fold cross-validation on the training features) or a finite number >= 0."""
    value = options.get("tau", "auto")
    if value is None or value == "auto":
        return "auto"
    try:
        tau = math.nan if isinstance(value, bool) else float(value)  # "1e-1" is a string in YAML 1.1
    except (TypeError, ValueError):
        tau = math.nan
    if not (math.isfinite(tau) and tau >= 0):
        raise ConfigError(f"method 'tau-norm': method_options.tau must be 'auto' or a number >= 0, got {value!r}")
    return tau


def base_loss(method: str, options: dict[str, Any]) -> str:
    """method_options.base_loss of tau-norm / lws: the loss of the base head (default "ce")."""
    value = options.get("base_loss", BASE_LOSS)
    if not isinstance(value, str) or value not in LOSSES:
        raise ConfigError(f"method '{method}': method_options.base_loss must be a loss name "
                          f"({', '.join(LOSSES.names())}), got {value!r}")
    return value


def _check_base_config(cfg: ProbeConfig) -> None:
    """loss_options apply to the base head only when base_loss is the configured loss."""
    loss = base_loss(cfg.method, cfg.method_options)
    if cfg.loss_options and loss != cfg.loss:
        raise ConfigError(f"method '{cfg.method}' trains its base head with method_options.base_loss={loss}, so "
                          f"loss_options (for loss={cfg.loss}) do not apply: drop them, or set "
                          f"method_options.base_loss={cfg.loss}")


def tau_norm_bias(options: dict[str, Any]) -> str:
    """method_options.bias of tau-norm: "dropped" (default, the authors') or "none"."""
    value = options.get("bias", TAU_NORM_BIAS[0])
    if value not in TAU_NORM_BIAS:
        raise ConfigError(f"method 'tau-norm': method_options.bias must be one of {', '.join(TAU_NORM_BIAS)}, "
                          f"got {value!r}")
    return value


def _check_tau_norm(options: dict[str, Any]) -> None:
    _check_keys("tau-norm", options, ("tau", "base_loss", "bias"))
    tau_option(options)
    base_loss("tau-norm", options)
    tau_norm_bias(options)


def lws_max_iter(options: dict[str, Any], default: int) -> int:
    """method_options.max_iter of lws: L-BFGS iterations of the scale fit (default: cfg.max_iter)."""
    value = options.get("max_iter", default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"method 'lws': method_options.max_iter must be an integer >= 0, got {value!r}")
    return value


def _check_lws(options: dict[str, Any]) -> None:
    _check_keys("lws", options, ("max_iter", "base_loss"))
    lws_max_iter(options, 0)
    base_loss("lws", options)


def _warn_rebalancing(cfg: ProbeConfig) -> None:
    """One-line warning when the user named a rebalancing base loss for tau-norm / lws."""
    loss = cfg.method_options.get("base_loss")
    if loss in REBALANCING:
        what = "tau-normalisation" if cfg.method == "tau-norm" else "LWS"
        warnings.warn(f"method '{cfg.method}': method_options.base_loss={loss} already rebalances the classes, "
                      f"so {what} on top of it corrects for the class prior twice (the authors' base head is "
                      f"plain CE: base_loss=ce)", stacklevel=3)


def ncm_rule(options: dict[str, Any]) -> str:
    """method_options.rule of ncm: "centred" (default, the authors') or "cosine"."""
    value = options.get("rule", NCM_RULES[0])
    if value not in NCM_RULES:
        raise ConfigError(f"method 'ncm': method_options.rule must be one of {', '.join(NCM_RULES)}, got {value!r}")
    return value


def _check_ncm(options: dict[str, Any]) -> None:
    _check_keys("ncm", options, ("rule",))
    ncm_rule(options)


def _check_head_config(cfg: ProbeConfig) -> None:
    if cfg.head != "linear":
        raise ConfigError(f"method '{cfg.method}' rescales the rows of a linear head: use head=linear "
                          f"(got head={cfg.head})")
    _check_base_config(cfg)


# ----------------------------------------------------------------------------- ncm
_MEAN_ROWS = 65536  # rows per float64 chunk of the class-mean sums: memory O(rows x d), not O(N x d)


def _class_sums(train: FeatureSet, transform) -> Tensor:
    """(C, d) float64 sums over each class of transform(raw rows as float64), chunk by chunk."""
    y = torch.as_tensor(np.asarray(train.labels), dtype=torch.long)
    sums = torch.zeros(train.num_classes, train.dim, dtype=torch.float64)
    for start in range(0, train.num_samples, _MEAN_ROWS):
        raw = torch.as_tensor(np.asarray(train.features[start:start + _MEAN_ROWS]), dtype=torch.float64)
        sums.index_add_(0, y[start:start + _MEAN_ROWS], transform(raw))
    return sums


def class_means(train: FeatureSet) -> Tensor:
    """(C, d) unit-norm means of the L2-normalised training features of each class."""
    sums = _class_sums(train, lambda raw: F.normalize(raw, dim=1))
    return F.normalize(sums, dim=1).to(torch.float32)  # the mean's direction: the 1/n_c cancels


def centred_class_means(train: FeatureSet) -> tuple[Tensor, Tensor]:
    """(mu (d,), means (C, d)): mu the mean of the raw training features, means[c] the mean over
    class c of normalize(f - mu), not re-normalised (the authors' `cl2ncs`)."""
    mu = torch.zeros(train.dim, dtype=torch.float64)
    for start in range(0, train.num_samples, _MEAN_ROWS):
        mu += torch.as_tensor(np.asarray(train.features[start:start + _MEAN_ROWS]), dtype=torch.float64).sum(0)
    mu /= train.num_samples
    sums = _class_sums(train, lambda raw: F.normalize(raw - mu, dim=1))
    counts = torch.bincount(torch.as_tensor(np.asarray(train.labels)), minlength=train.num_classes).to(torch.float64)
    return mu.to(torch.float32), (sums / counts[:, None]).to(torch.float32)


class NearestMeanHead(nn.Module):
    """z_c = -(s / 2) ||normalize(f - mu) - m_c||^2 on the raw feature f: the authors' NCM
    (KNNClassifier, feat_type cl2n, dist_type l2) times s / 2, so its argmax is theirs exactly.

    Built by method=ncm (rule "centred") from the training features, never trained: `weight` holds
    the class means m_c, the spec the training mean mu (and s).
    """

    def __init__(self, num_classes: int, dim: int, weight: Tensor | None = None, bias: Tensor | None = None,
                 generator: torch.Generator | None = None, scale: float = 25.0,
                 center: list[float] | Tensor | None = None) -> None:
        super().__init__()
        if weight is None or center is None or bias is not None:
            raise ConfigError("head 'nearest-mean' is what method=ncm builds from class means; it is not "
                              "trained: use head=linear or head=cosine")
        self.weight = nn.Parameter(torch.as_tensor(weight, dtype=torch.float32).clone(), requires_grad=False)
        if self.weight.shape != (num_classes, dim):
            raise ConfigError(f"nearest-mean head: means of shape {tuple(self.weight.shape)}, "
                              f"expected ({num_classes}, {dim})")
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32).reshape(dim).clone(),
                             persistent=False)  # saved in the spec (JSON), not with the weights
        self.scale = float(scale)
        self.bias = None

    def forward(self, features: Tensor) -> Tensor:
        x = F.normalize(features - self.center.to(features.dtype), dim=-1)
        m = self.weight.to(features.dtype)
        squared = (x * x).sum(-1, keepdim=True) + (m * m).sum(-1)[None] - 2.0 * F.linear(x, m)
        return -0.5 * self.scale * squared

    def spec(self) -> dict[str, Any]:
        return {"type": "nearest-mean", "scale": self.scale, "center": self.center.float().tolist()}


HEADS.register("nearest-mean", NearestMeanHead)


@probe_method("ncm", check_options=_check_ncm)
def fit_ncm(train: FeatureSet, cfg: ProbeConfig, val: FeatureSet | None = None) -> Probe:
    """Nearest class mean (Kang et al. 2020): rule "centred" (default, the authors' code) or "cosine"."""
    if cfg.init != "random":
        raise ConfigError("method 'ncm' trains no head, so init='prototypes' does not apply "
                          "(interpolate mixes in the prototypes)")
    counts = train.class_counts()
    require_nonempty(counts, train.names())
    rule = ncm_rule(cfg.method_options)
    if rule == "centred":
        mu, means = centred_class_means(train)
        head: nn.Module = NearestMeanHead(train.num_classes, train.dim, weight=means, scale=cfg.scale, center=mu)
        normalize = False  # the rule centres the raw features, then normalises them
        words = f"-{cfg.scale / 2:g} * ||normalize(f - mu) - m_c||^2, m_c the class mean of normalize(f - mu)"
    else:
        head = CosineHead(train.num_classes, train.dim, weight=class_means(train), scale=cfg.scale)
        normalize = cfg.normalize
        words = f"{cfg.scale:g} * cos(f, mean of normalised features of c)"
    probe = Probe(head, counts, normalize=normalize, class_names=train.names(), config=cfg.to_dict(),
                  info={"ncm": {"rule": rule, "formula": words}})
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
def _plain_head(train: FeatureSet, cfg: ProbeConfig, *, bias: bool) -> tuple[Probe, dict[str, Any]]:
    """(the base head of cfg: method_options.base_loss (default CE), solver, init, L2-SP, with or
    without a bias, no post-hoc; what trained it)."""
    counts = train.class_counts()
    require_nonempty(counts, train.names())
    loss = base_loss(cfg.method, cfg.method_options)
    options = dict(cfg.loss_options) if loss == cfg.loss else {}
    l2 = base_l2(cfg, train.num_samples)
    training = cfg.head_training()
    solver_options = {**training["solver_options"], **({"l2": l2} if cfg.solver == "lbfgs" else {})}
    training = {**training, "head": {"type": "linear", "use_bias": bias}, "loss": loss, "loss_options": options,
                "solver_options": solver_options}
    probe = train_head(train.features, train.labels, counts, **training, init=initial_weights(train, cfg),
                       class_names=train.names())
    return probe, {"base_loss": loss, "base_loss_options": options, "configured_loss": cfg.loss, "l2": l2}


def base_l2(cfg: ProbeConfig, num_samples: int) -> float:
    """The L2 strength of the base head (and of LWS's scale fit): cfg.l2, else 1 / (BASE_C N)."""
    return cfg.l2 if cfg.l2 is not None else 1.0 / (BASE_C * num_samples)


def row_norms(weight: Tensor) -> Tensor:
    """||W_c|| per row (floored at 1e-12)."""
    return weight.detach().norm(dim=1).clamp_min(_NORM_FLOOR)


def tau_normalised(weight: Tensor, tau: float) -> Tensor:
    """W_c / ||W_c||^tau (tau = 0: W itself, bit for bit)."""
    return weight.detach() / row_norms(weight).pow(float(tau))[:, None]


def _grid_predictions(probe: Probe, features: np.ndarray) -> np.ndarray:
    """(len(TAU_GRID), N) predicted classes of probe's bias-free head with rows W_c / ||W_c||^tau,
    one row per tau of TAU_GRID: tau-normalisation is post-hoc, so one head serves the whole grid."""
    norms = row_norms(probe.head.weight)
    out = np.empty((len(TAU_GRID), len(features)), dtype=np.int64)
    rows = probe.chunk_rows(3 * probe.num_classes * 4, len(features))
    for start in range(0, len(features), rows):  # row chunks: memory O(rows x C) at any N
        raw, _ = probe.parts(features[start:start + rows])  # z_c = f . W_c: tau-normalised z_c / ||W_c||^tau
        for i, t in enumerate(TAU_GRID):
            out[i, start:start + rows] = (raw / norms.pow(float(t))).numpy().argmax(1)
    return out


def _pick_tau(predictions: np.ndarray, labels: np.ndarray, num_classes: int, how: str,
              held_per_class: np.ndarray) -> tuple[float, dict[str, Any]]:
    """The tau of TAU_GRID with the best balanced accuracy of `predictions` (ties: the smaller tau),
    with each score's binomial SE; warns when the winner leads the runner-up by less than its SE.
    The runner-up is the best tau that is not the winner's grid neighbour (|tau - winner| > 0.1):
    neighbours score alike on any smooth curve, so comparing with them would always warn."""
    scored = [balanced_accuracy_se(p, labels, num_classes) for p in predictions]
    scores, errors = np.array([s for s, _ in scored]), np.array([e for _, e in scored])
    best = int(np.argmax(scores))
    runner = int(np.argmax(np.where(np.abs(np.arange(scores.size) - best) <= 1, -np.inf, scores)))
    close = bool(scores[best] - scores[runner] < errors[best])
    if close:
        warnings.warn(f"method 'tau-norm': tau={TAU_GRID[best]:g} ({how}: balanced accuracy "
                      f"{scores[best]:.4f} +- {errors[best]:.4f}) beats the runner-up tau={TAU_GRID[runner]:g} "
                      f"({scores[runner]:.4f}) by less than one SE: the data do not pin tau down", stacklevel=4)
    present = held_per_class[held_per_class > 0]
    return float(TAU_GRID[best]), {
        "metric": "balanced accuracy", "validated_by": how, "grid": TAU_GRID, "scores": scores, "se": errors,
        "best": float(scores[best]), "best_se": float(errors[best]),
        "runner_up": {"tau": float(TAU_GRID[runner]), "score": float(scores[runner])}, "within_one_se": close,
        "val_rows": int(labels.size), "val_per_class": [int(present.min()), int(present.max())],
        "classes_with_at_most_2_val_rows": int((held_per_class <= 2).sum())}


def choose_tau(probe: Probe, val: FeatureSet) -> tuple[float, dict[str, Any]]:
    """The tau of TAU_GRID (the authors' np.linspace(0, 2, 21)) with the best validation balanced
    accuracy of probe's bias-free head with rows W_c / ||W_c||^tau (ties: the smaller tau);
    with the binomial SE of each score and the validation rows per class."""
    return _pick_tau(_grid_predictions(probe, val.features), np.asarray(val.labels), probe.num_classes, "val",
                     val.class_counts(probe.num_classes))


def cv_folds(train: FeatureSet) -> int:
    """k of the cross-validation choosing tau: TAU_CV_FOLDS, fewer when the smallest class is
    smaller (at least 2)."""
    return max(2, min(TAU_CV_FOLDS, int(train.class_counts().min())))


def cv_tau(train: FeatureSet, cfg: ProbeConfig, bias: str) -> tuple[float, dict[str, Any]]:
    """tau chosen by stratified k-fold cross-validation on `train` alone (`cv_folds`, folds seeded
    by cfg.seed): one base head per fold, its held-out rows predicted at every tau of the grid,
    the predictions pooled over the folds (each row held out once; a class with a single row is
    never held out) and scored as one validation set. DataError when no fold can hold anything out."""
    k = cv_folds(train)
    labels = np.asarray(train.labels)
    folds = stratified_folds(labels, k, cfg.seed, train.num_classes)
    predictions = np.full((TAU_GRID.size, labels.size), -1, dtype=np.int64)
    for part, held in folds:
        probe, _ = _bias_free_head(train.with_arrays(train.features[part], labels[part]), cfg, bias)
        predictions[:, held] = _grid_predictions(probe, train.features[held])
    scored = predictions[0] >= 0
    held_per_class = np.bincount(labels[scored], minlength=train.num_classes)
    tau, info = _pick_tau(predictions[:, scored], labels[scored], train.num_classes,
                          f"{k}-fold CV on train", held_per_class)
    return tau, {**info, "folds": k, "seed": cfg.seed}


def drawn_from(train: FeatureSet, val: FeatureSet | None) -> bool:
    """Whether `val` is a split drawn from `train`'s file (`data.splits.split_features`:
    val_split / val_per_class), rather than a validation set of its own."""
    if val is None or "val_split" not in train.meta:
        return False
    return val.meta.get("val_split") == train.meta["val_split"] and val.source == f"{train.source}#val"


def _refit_blocker(cfg: ProbeConfig) -> str | None:
    """Why the head fitted on the training part is kept: other choices made on the same split."""
    others = [f"{k}={v!r}" for k, v in (("posthoc_tau", cfg.posthoc_tau), ("interpolate", cfg.interpolate))
              if v == "auto"] + (["calibrate='temperature'"] if cfg.calibrate == "temperature" else [])
    return f"{', '.join(others)} also choose on this split" if others else None


@probe_method("tau-norm", check_options=_check_tau_norm, check_config=_check_head_config)
def fit_tau_norm(train: FeatureSet, cfg: ProbeConfig, val: FeatureSet | None = None) -> Probe:
    """tau-normalisation (Kang et al. 2020): a plain-CE linear head, bias dropped, rows W_c / ||W_c||^tau;
    tau chosen on val (grid 0..2) when given, else by k-fold CV on train (method_options.tau fixes it)."""
    option = tau_option(cfg.method_options)
    _warn_rebalancing(cfg)
    bias = tau_norm_bias(cfg.method_options)
    probe, info = _bias_free_head(train, cfg, bias)
    if option == "auto" and val is None:
        try:  # the head above, fitted on all of train, is the refit
            tau, info["selection"] = cv_tau(train, cfg, bias)
            info["tau_from"] = "k-fold cross-validation on train"
        except DataError as error:  # no class has two rows: nothing can be held out
            tau, info["tau_from"] = TAU_NORM_DEFAULT, f"default (no validation set; {error})"
    elif option == "auto":
        tau, info["selection"] = choose_tau(probe, val)
        info["tau_from"] = "validation set"
        if drawn_from(train, val):
            blocker = _refit_blocker(cfg)
            info["refit"] = {"done": blocker is None, "why_not": blocker,
                             "rows": int(train.num_samples + (0 if blocker else val.num_samples))}
            if blocker is None:  # tau chosen: the head again on every training row, split included
                train = train.with_arrays(np.concatenate([train.features, val.features]),
                                          np.concatenate([train.labels, val.labels]))
                probe, refitted = _bias_free_head(train, cfg, bias)
                info.update({k: refitted[k] for k in ("l2", "row_norms", "dropped_bias")})
    else:
        tau, info["tau_from"] = option, "method_options.tau"
    info["tau"] = tau
    probe.head = LinearHead(probe.num_classes, probe.dim, weight=tau_normalised(probe.head.weight, tau),
                            use_bias=False).eval()
    probe.info["tau_norm"] = info
    return adjust(add_zero_shot(probe, train, cfg), cfg, val)


def _bias_free_head(train: FeatureSet, cfg: ProbeConfig, bias: str) -> tuple[Probe, dict[str, Any]]:
    """(the base head with its bias dropped (bias "dropped") or trained without one ("none"), info)."""
    probe, info = _plain_head(train, cfg, bias=bias == "dropped")
    info = {**info, "bias": bias, "row_norms": row_norms(probe.head.weight).numpy(),
            "dropped_bias": None if probe.head.bias is None else probe.head.bias.detach().numpy()}
    if probe.head.bias is not None:  # the authors' tau_norm.py scores f . W_c only
        probe.head = LinearHead(probe.num_classes, probe.dim, weight=probe.head.weight.detach(), use_bias=False).eval()
    return probe, info


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
    training features + l2/2 sum_c f_c^2 ||W_c||^2 (l2 = the base head's, `base_l2`); L-BFGS from f = 1."""
    logits, _ = probe.parts(train.features)
    labels = torch.as_tensor(np.asarray(train.labels), dtype=torch.long)
    norms = row_norms(probe.head.weight)
    lengths = _RowLengths(norms)
    loss_fn = make_loss(CRT_LOSS, probe.class_counts, **CRT_LOSS_OPTIONS)
    l2 = base_l2(cfg, train.num_samples)
    info = SOLVERS.get("lbfgs")(lengths, loss_fn, logits, labels, l2=l2, lr=1.0,
                                max_iter=lws_max_iter(cfg.method_options, cfg.max_iter), tol=cfg.tol,
                                history_size=cfg.history_size)
    scales = lengths.weight.detach() / norms  # exactly 1 where the solver did not move
    return scales, {**info, "scales": scales.numpy(), "objective": f"{CRT_LOSS} (inverse), l2 {l2:g}"}


@probe_method("lws", check_options=_check_lws, check_config=_check_head_config)
def fit_lws(train: FeatureSet, cfg: ProbeConfig, val: FeatureSet | None = None) -> Probe:
    """LWS (Kang et al. 2020): the plain-CE linear head frozen, one class-balanced scale per class."""
    _warn_rebalancing(cfg)
    probe, base = _plain_head(train, cfg, bias=True)
    scales, info = learn_scales(probe, train, cfg)
    weight, bias = probe.head.weight.detach(), probe.head.bias.detach()
    probe.head = LinearHead(probe.num_classes, probe.dim, weight=scales[:, None] * weight,
                            bias=scales * bias).eval()
    probe.info["lws"] = {**base, **info}
    return adjust(add_zero_shot(probe, train, cfg), cfg, val)
