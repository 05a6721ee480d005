"""Probes on frozen features: a classifier head trained with full-batch L-BFGS or minibatch AdamW.

`fit_probe(train, cfg, val)` dispatches to a method in PROBE_METHODS; `train_head` is the bare
trainer that the oversampling methods call on resampled features. A `Probe` turns features into
logits: optional L2 normalisation, the head, an optional interpolation with a zero-shot head
(prototypes.py) and an optional post-hoc logit adjustment z - tau * log(pi).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.data.features import FeatureSet
from longtail.data.stats import require_nonempty
from longtail.device import resolve_device
from longtail.errors import ConfigError, DataError
from longtail.eval.metrics import balanced_accuracy
from longtail.io import atomic_write, write_json
from longtail.methods.heads import HEADS, build_head, head_tensors
from longtail.methods.losses import loss_parameters, make_loss
from longtail.methods.optimizers import OPTIMIZERS
from longtail.methods.registry import PROBE_METHODS

TAU_GRID = np.round(np.arange(0.0, 2.0001, 0.1), 2)  # post-hoc tau candidates for "auto"
ALPHA_GRID = np.round(np.arange(0.0, 1.0001, 0.1), 2)  # interpolation candidates for "auto"
INITS = ("random", "prototypes")
_CHUNK = 65536  # rows per inference chunk


@dataclass
class ProbeConfig:
    """How to train a head on frozen features; defaults = scikit-learn's LogisticRegression(C=1)."""

    method: str = "linear"
    loss: str = "ce"
    tau: float = 1.0  # LA / ccar-la temperature
    gamma: float | None = None  # cf exponent (None: the loss default)
    mu: float | None = None  # cf scale (cancels; kept for fidelity)
    omega: float | None = None  # CCAR confidence pivot
    loss_params: dict[str, Any] = field(default_factory=dict)  # any other loss parameter
    method_params: dict[str, Any] = field(default_factory=dict)  # options of the method (oversamplers)
    head: str = "linear"  # "linear" | "cosine"
    scale: float = 25.0  # cosine-head (and cosine zero-shot) logit scale
    optimizer: str = "lbfgs"  # "lbfgs" (full batch) | "adamw" (minibatch)
    max_iter: int = 1000  # L-BFGS iterations
    tol: float = 1e-4  # L-BFGS: stop when max |gradient| <= tol (scikit-learn's tol)
    history_size: int = 10  # L-BFGS memory (scipy's default m = 10)
    l2: float | None = None  # L-BFGS: + l2/2 ||W||^2; None: 1/N (sklearn C=1) linear, 0 cosine
    epochs: int = 30  # AdamW
    lr: float | None = None  # None: 1.0 for L-BFGS, 1e-2 for AdamW
    weight_decay: float = 1e-4  # AdamW
    batch_size: int = 256  # AdamW
    normalize: bool = True  # L2-normalise features before the head
    init: str = "random"  # "random" | "prototypes" (the file's class prototypes)
    # L2 pulls W towards "zero" (plain weight decay) or the "init" weights (L2-SP, Li et al. 2018):
    # with init="prototypes", data-poor tail rows then stay near their prototype.
    l2_target: str = "zero"
    posthoc_tau: str | float | None = None  # None | "auto" (val) | float
    calibrate: str | None = None  # None | "temperature": fit T on val by NLL (Guo et al. 2017)
    interpolate: str | float | None = None  # None | "auto" (val) | alpha in [0, 1]
    seed: int = 0
    device: str = "auto"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ProbeConfig:
        """Build from a plain dict (YAML/JSON); unknown keys are a ConfigError listing valid ones."""
        from longtail.config import update_dataclass

        return update_dataclass(cls(), values)

    def loss_kwargs(self) -> dict[str, Any]:
        """Parameters for make_loss: the named fields the loss accepts, plus loss_params."""
        accepted = loss_parameters(self.loss)
        kwargs: dict[str, Any] = {}
        for name in ("tau", "gamma", "mu", "omega"):
            value = getattr(self, name)
            if name in accepted and value is not None:
                kwargs[name] = value
            elif value is not None and not (name == "tau" and value == 1.0):
                raise ConfigError(f"loss '{self.loss}' has no parameter '{name}' (set to {value})")
        return {**kwargs, **self.loss_params}

    def validate(self) -> None:
        for name in ("max_iter", "epochs", "batch_size", "scale", "tol", "history_size"):
            minimum = 1 if name in ("batch_size", "history_size") else 0
            if getattr(self, name) < minimum:
                raise ConfigError(f"{name} must be >= {minimum}, got {getattr(self, name)}")
        if self.l2 is not None and self.l2 < 0:
            raise ConfigError(f"l2 must be >= 0, got {self.l2}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {INITS}, got '{self.init}'")
        if self.l2_target not in ("zero", "init"):
            raise ConfigError(f"l2_target must be 'zero' or 'init', got '{self.l2_target}'")
        if self.l2_target == "init" and self.init != "prototypes":
            raise ConfigError("l2_target='init' (L2-SP) needs init='prototypes'")
        for name, value, lo, hi in (("posthoc_tau", self.posthoc_tau, -np.inf, np.inf),
                                    ("interpolate", self.interpolate, 0.0, 1.0)):
            if value is None or value == "auto":
                continue
            if isinstance(value, str) or not lo <= float(value) <= hi:
                raise ConfigError(f"{name} must be None, 'auto' or a number in [{lo}, {hi}], got {value!r}")
        if self.calibrate not in (None, "temperature"):
            raise ConfigError(f"calibrate must be None or 'temperature', got {self.calibrate!r}")
        OPTIMIZERS.get(self.optimizer)
        HEADS.get(self.head)


def log_prior(class_counts: np.ndarray) -> np.ndarray:
    """log pi_c = log(n_c / N); DataError when a class is empty."""
    counts = np.asarray(class_counts, dtype=np.float64)
    require_nonempty(counts)
    return np.log(counts / counts.sum())


class Probe:
    """A trained head plus how to turn features into the logits that are evaluated."""

    def __init__(
        self,
        head: nn.Module,
        class_counts: np.ndarray,
        *,
        normalize: bool = True,
        posthoc_tau: float = 0.0,
        zero_shot: nn.Module | None = None,
        alpha: float = 1.0,
        temperature: float = 1.0,
        class_names: list[str] | None = None,
        config: dict[str, Any] | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.head = head.cpu().eval()
        self.class_counts = np.asarray(class_counts, dtype=np.int64)
        self.normalize = bool(normalize)
        self.posthoc_tau = float(posthoc_tau)
        self.zero_shot = None if zero_shot is None else zero_shot.cpu().eval()
        self.alpha = float(alpha)
        self.temperature = float(temperature)  # divides the final logits; argmax unchanged
        self.class_names = class_names
        self.config = config or {}
        self.info = info or {}

    @property
    def num_classes(self) -> int:
        return int(self.head.weight.shape[0])

    @torch.no_grad()
    def parts(self, features: np.ndarray | Tensor) -> tuple[Tensor, Tensor | None]:
        """(trained-head logits, zero-shot logits or None), before interpolation and post-hoc."""
        x = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
        x = x.to(torch.float32).cpu()
        if x.ndim != 2 or x.shape[1] != self.head.weight.shape[1]:
            raise DataError(f"features must have shape (N, {self.head.weight.shape[1]}), got {tuple(x.shape)}")
        if self.normalize:
            x = F.normalize(x, dim=-1)
        trained = torch.cat([self.head(c) for c in x.split(_CHUNK)])
        zs = None if self.zero_shot is None else torch.cat([self.zero_shot(c) for c in x.split(_CHUNK)])
        return trained, zs

    def combine(self, trained: Tensor, zs: Tensor | None, alpha: float, tau: float) -> Tensor:
        """(1 - alpha) * zero-shot + alpha * trained (exact at 0 and 1), then z - tau * log pi."""
        z = trained
        if zs is not None and alpha != 1.0:
            z = zs if alpha == 0.0 else (1.0 - alpha) * zs + alpha * trained
        if tau != 0.0:
            z = z - tau * torch.as_tensor(log_prior(self.class_counts), dtype=z.dtype)
        return z

    def logits(self, features: np.ndarray | Tensor) -> np.ndarray:
        """(N, C) logits used for prediction and evaluation."""
        trained, zs = self.parts(features)
        return (self.combine(trained, zs, self.alpha, self.posthoc_tau) / self.temperature).numpy()

    def predict(self, features: np.ndarray | Tensor) -> np.ndarray:
        return self.logits(features).argmax(axis=1)

    def save(self, folder: str | Path) -> None:
        """Write head.safetensors (weights) and head.json (everything else); never overwrites."""
        from safetensors.torch import save_file

        folder = Path(folder)
        if (folder / "head.safetensors").exists() or (folder / "head.json").exists():
            raise DataError(f"{folder}: a saved head already exists (not overwriting)")
        tensors = head_tensors(self.head, "head.")
        if self.zero_shot is not None:
            tensors.update(head_tensors(self.zero_shot, "zero_shot."))
        atomic_write(folder / "head.safetensors", lambda p: save_file(tensors, str(p)))
        write_json(folder / "head.json", {
            "format": 1,
            "head": self.head.spec(),
            "zero_shot": None if self.zero_shot is None else self.zero_shot.spec(),
            "num_classes": self.num_classes,
            "dim": int(self.head.weight.shape[1]),
            "normalize": self.normalize,
            "posthoc_tau": self.posthoc_tau,
            "alpha": self.alpha,
            "temperature": self.temperature,
            "class_counts": self.class_counts,
            "class_names": self.class_names,
            "config": self.config,
            "info": self.info,
        })

    @classmethod
    def load(cls, folder: str | Path) -> Probe:
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in ("head.json", "head.safetensors"):
            if not (folder / name).exists():
                raise DataError(f"{folder}: missing {name}")
        meta = json.loads((folder / "head.json").read_text(encoding="utf-8"))
        tensors = load_file(str(folder / "head.safetensors"))

        def rebuild(spec: dict, prefix: str) -> nn.Module:
            return build_head(spec, meta["num_classes"], meta["dim"],
                              weight=tensors[f"{prefix}weight"], bias=tensors.get(f"{prefix}bias"))

        return cls(
            rebuild(meta["head"], "head."),
            np.asarray(meta["class_counts"]),
            normalize=meta["normalize"],
            posthoc_tau=meta["posthoc_tau"],
            zero_shot=None if meta["zero_shot"] is None else rebuild(meta["zero_shot"], "zero_shot."),
            alpha=meta["alpha"],
            temperature=meta.get("temperature", 1.0),
            class_names=meta["class_names"],
            config=meta["config"],
            info=meta["info"],
        )


def train_head(
    features: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    class_counts: np.ndarray,
    cfg: ProbeConfig,
    init: dict[str, Any] | None = None,
    class_names: list[str] | None = None,
) -> Probe:
    """Train cfg.head on (features, labels) with cfg.loss (priors from class_counts); no selection.

    `init` optionally holds starting "weight" (C, d) and "bias" (C,) (e.g. prototypes).
    """
    cfg.validate()
    counts = np.asarray(class_counts, dtype=np.int64)
    require_nonempty(counts, class_names)
    device = resolve_device(cfg.device)
    x = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
    y = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).long()
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise DataError(f"features (N, d) and labels (N,) expected, got {tuple(x.shape)} and {tuple(y.shape)}")
    if not torch.isfinite(x).all():
        raise DataError("training features contain NaN or inf")
    if y.min() < 0 or y.max() >= counts.size:
        raise DataError(f"training label out of range for {counts.size} classes")
    x, y = x.to(device=device, dtype=torch.float32), y.to(device)
    if cfg.normalize:
        x = F.normalize(x, dim=-1)

    generator = torch.Generator().manual_seed(cfg.seed)
    spec = {"type": cfg.head, **({"scale": cfg.scale} if cfg.head == "cosine" else {})}
    init = init or {}
    head = build_head(spec, counts.size, x.shape[1], weight=init.get("weight"),
                      bias=init.get("bias"), generator=generator).to(device)
    loss_fn = make_loss(cfg.loss, counts, **cfg.loss_kwargs()).to(device)
    start = time.perf_counter()
    info = OPTIMIZERS.get(cfg.optimizer)(head, loss_fn, x, y, cfg, generator)
    info["train_seconds"] = time.perf_counter() - start
    return Probe(head, counts, normalize=cfg.normalize, class_names=class_names,
                 config=asdict(cfg), info={"train": info})


# --------------------------------------------------------------------------------------------
# Validation-set selection of alpha (interpolation) and tau (post-hoc adjustment)


def _grid(option: str | float | None, grid: np.ndarray, default: float) -> np.ndarray:
    if option is None:
        return np.array([default])
    return grid if option == "auto" else np.array([float(option)])


def select_adjustments(probe: Probe, cfg: ProbeConfig, val: FeatureSet | None) -> Probe:
    """Set probe.alpha and probe.posthoc_tau from cfg; "auto" values maximise val balanced accuracy.

    Both "auto": joint grid search; ties go to the first grid point (smaller tau, smaller alpha).
    """
    cfg.validate()
    alpha_grid = _grid(cfg.interpolate if probe.zero_shot is not None else None, ALPHA_GRID, 1.0)
    tau_grid = _grid(cfg.posthoc_tau, TAU_GRID, 0.0)
    if alpha_grid.size == 1 and tau_grid.size == 1:
        probe.alpha, probe.posthoc_tau = float(alpha_grid[0]), float(tau_grid[0])
        return probe
    if val is None:
        raise ConfigError("posthoc_tau/interpolate 'auto' needs a validation set (val)")
    trained, zs = probe.parts(val.features)
    scores = np.array([[balanced_accuracy(probe.combine(trained, zs, a, t).numpy(), val.labels,
                                          probe.num_classes) for t in tau_grid] for a in alpha_grid])
    i, j = np.unravel_index(np.argmax(scores), scores.shape)
    probe.alpha, probe.posthoc_tau = float(alpha_grid[i]), float(tau_grid[j])
    probe.info["selection"] = {"metric": "val balanced accuracy", "alpha_grid": alpha_grid,
                               "tau_grid": tau_grid, "scores": scores, "best": float(scores[i, j])}
    return probe


def calibrate_temperature(probe: Probe, val: FeatureSet | None) -> Probe:
    """Temperature scaling: the T > 0 minimising validation NLL of logits / T (predictions unchanged)."""
    if val is None:
        raise ConfigError("calibrate='temperature' needs a validation set (val)")
    probe.temperature = 1.0
    z = torch.as_tensor(probe.logits(val.features), dtype=torch.float64)
    y = torch.as_tensor(val.labels, dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    probe.temperature = float(log_t.detach().exp())
    probe.info["calibration"] = {"method": "temperature", "temperature": probe.temperature,
                                 "val_nll": float(F.cross_entropy(z / probe.temperature, y))}
    return probe


# --------------------------------------------------------------------------------------------
# Methods


def fit_probe(train: FeatureSet, cfg: ProbeConfig, val: FeatureSet | None = None) -> Probe:
    """Fit the probe method cfg.method on `train` (val only for 'auto' selections)."""
    from longtail.methods.registry import load_builtin_methods

    load_builtin_methods()
    cfg.validate()
    if val is not None:
        from longtail.data.features import check_compatible

        check_compatible(train, val)
    probe = PROBE_METHODS.get(cfg.method)(train, cfg, val)
    return calibrate_temperature(probe, val) if cfg.calibrate == "temperature" else probe


@PROBE_METHODS.register("linear")
def fit_linear(train: FeatureSet, cfg: ProbeConfig, val: FeatureSet | None = None) -> Probe:
    """Train cfg.head (linear by default) with cfg.loss; optional prototype init/interpolation."""
    from longtail.methods import prototypes

    counts = train.class_counts()
    require_nonempty(counts, train.names())
    init = prototypes.prototype_init(train, cfg) if cfg.init == "prototypes" else None
    probe = train_head(train.features, train.labels, counts, cfg, init=init, class_names=train.names())
    if cfg.interpolate is not None:
        probe.zero_shot = prototypes.zero_shot_head(train, cfg, why="interpolate")
        probe.info["zero_shot_rule"] = prototypes.zero_shot_rule(probe.zero_shot)
    return select_adjustments(probe, cfg, val)


@PROBE_METHODS.register("cosine")
def fit_cosine(train: FeatureSet, cfg: ProbeConfig, val: FeatureSet | None = None) -> Probe:
    """The linear method with a cosine head z = s * cos(w_c, f) (LIFT's classifier)."""
    from dataclasses import replace

    return fit_linear(train, replace(cfg, head="cosine"), val)
