"""ProbeConfig: how to train a head on frozen features, validated when it is built.

Every registry name (method, loss, head, solver) is looked up with `Registry.get`, option
names are checked against the loss / method that takes them and every value against its
type and range, so a typo fails in milliseconds, before any feature file is read. Overrides
use the one grammar (`longtail.config.apply_overrides`: `loss=la loss_options.tau=0.5`).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

import numpy as np

from longtail.config import apply_overrides, coerce_field
from longtail.data.splits import ValRule
from longtail.device import parse_memory
from longtail.errors import ConfigError
from longtail.methods.heads import HEADS
from longtail.methods.losses import LOSSES, loss_parameters, make_loss
from longtail.methods.probe.registry import get_method
from longtail.methods.probe.solvers import SOLVERS, solver_options
from longtail.methods.tracking import check_tracker

TRAINABLE_HEADS = ("linear", "cosine")  # what head= trains; other HEADS (nearest-mean) are built by a method
INITS = ("random", "prototypes")
L2_TARGETS = ("zero", "init")
CALIBRATIONS = (None, "temperature")
MAX_HISTORY = 1000  # L-BFGS pairs: more never helps a convex probe and would not fit in memory
_DRY_RUN_COUNTS = np.array([2, 1])  # class counts to build the loss on, only to check its options


@dataclass
class ProbeConfig:
    """How to train a head on frozen features.

    The default is long-tail-aware: a cosine head trained with the logit-adjusted loss (tau 1),
    the best fixed probe on the real CIFAR-10-LT benchmark (README, "Measured results").
    `method="linear", loss="ce"` is scikit-learn's LogisticRegression(C=1) (same objective).
    """

    # a changed loss / method drops the options of the one it replaces (config.apply_overrides)
    OPTIONS_OF = {"loss": "loss_options", "method": "method_options"}

    method: str = "cosine"  # probe method (`longtail list probe-methods`)
    method_options: dict[str, Any] = field(default_factory=dict)  # e.g. oversampler options, loss_prior
    loss: str = "la"  # training loss (LOSSES); "ce" is plain cross-entropy
    loss_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"tau": 1.0} for la
    head: str = "linear"  # "linear" | "cosine"
    scale: float = 25.0  # cosine-head (and cosine zero-shot) logit scale
    solver: str = "lbfgs"  # "lbfgs" (full batch) | "adamw" (minibatch)
    max_iter: int = 1000  # L-BFGS iterations
    tol: float = 1e-4  # L-BFGS: stop when max |gradient| <= tol (scikit-learn's tol)
    history_size: int = 10  # L-BFGS memory (scipy's default m = 10)
    l2: float | None = None  # L-BFGS: + l2/2 ||W||^2; None: 1/N (sklearn C=1) linear, 0 cosine
    # Work memory for N x C arrays (logits): "auto" (half the free RAM / GPU memory) or a size
    # ("4GB"); over it the solver sums over row chunks, oversamplers cap their targets.
    memory: str = "auto"
    epochs: int = 30  # AdamW
    lr: float | None = None  # None: 1.0 for L-BFGS, 1e-2 for AdamW
    weight_decay: float = 1e-4  # AdamW
    batch_size: int = 256  # AdamW
    normalize: bool = True  # L2-normalise features before the head (zero-shot: see fit_zero_shot)
    init: str = "random"  # "random" | "prototypes" (the file's class prototypes)
    # L2 pulls W towards "zero" (plain weight decay) or the "init" weights (L2-SP, Li et al. 2018):
    # with init="prototypes", data-poor tail rows then stay near their prototype.
    l2_target: str = "zero"
    posthoc_tau: float | str | None = None  # None | "auto" (val) | float: z - tau * log pi
    calibrate: str | None = None  # None | "temperature": fit T on val by NLL (Guo et al. 2017)
    interpolate: float | str | None = None  # None | "auto" (val) | alpha in [0, 1]
    # Without a validation file: draw it from the training features (each class keeps >= 1
    # training sample; longtail.data.splits, the one validation vocabulary).
    val_split: float | None = None  # fraction of each class, 0 < f < 1
    val_per_class: int = 0  # or N samples of each class (0: off)
    val_rule: str = "stratified"  # which: stratified (seeded by `seed`) | first (file order)
    seed: int = 0
    device: str = "auto"
    log_with: str | None = None  # experiment tracker: tensorboard | mlflow | wandb (logs in RUN/tracking)

    def __post_init__(self) -> None:
        hints = _hints()
        for f in dataclasses.fields(self):  # types first: every later check can trust them
            setattr(self, f.name, coerce_field(f.name, getattr(self, f.name), hints[f.name]))
        self._check_ranges()
        self.validation_rule()  # val_split / val_per_class / val_rule: ranges, not both
        self._check_choices()
        method = get_method(self.method)
        method.validate(self)
        if self.interpolate is not None and not method.trains:
            raise ConfigError(f"interpolate applies to trained methods, not '{self.method}'")
        self._check_loss_options()

    def _check_ranges(self) -> None:
        for name, minimum in (("max_iter", 0), ("epochs", 0), ("batch_size", 1), ("history_size", 1),
                              ("tol", 0.0), ("weight_decay", 0.0)):
            if getattr(self, name) < minimum:
                raise ConfigError(f"{name} must be >= {minimum}, got {getattr(self, name)}")
        if self.history_size > MAX_HISTORY:  # issue 22 item 12: it sizes an (m + 1) x parameters buffer
            raise ConfigError(f"history_size must be at most {MAX_HISTORY} (L-BFGS keeps that many "
                              f"parameter-sized pairs; scipy's default is 10), got {self.history_size}")
        parse_memory(self.memory)
        if not self.scale > 0:
            raise ConfigError(f"scale must be > 0, got {self.scale}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be > 0 (or none for the solver's default), got {self.lr}")
        if self.l2 is not None and not self.l2 >= 0:
            raise ConfigError(f"l2 must be >= 0 (or none for 1/N), got {self.l2}")
        for name, lo, hi in (("posthoc_tau", -math.inf, math.inf), ("interpolate", 0.0, 1.0)):
            value = getattr(self, name)
            if value is None or value == "auto":
                continue
            if isinstance(value, str):  # "1e-1": YAML 1.1 leaves exponent notation a string
                try:
                    value = float(value)
                    setattr(self, name, value)
                except ValueError:
                    pass
            if isinstance(value, str) or not (math.isfinite(value) and lo <= value <= hi):
                span = "a finite number" if math.isinf(hi) else f"a number in [{lo:g}, {hi:g}]"
                raise ConfigError(f"{name} must be none, 'auto' or {span}, got {value!r}")

    def _check_choices(self) -> None:
        LOSSES.get(self.loss)
        HEADS.get(self.head)
        if self.head not in TRAINABLE_HEADS:
            raise ConfigError(f"head must be one of {', '.join(TRAINABLE_HEADS)} (a trained head); got '{self.head}'")
        SOLVERS.get(self.solver)
        check_tracker(self.log_with)
        for name, valid in (("init", INITS), ("l2_target", L2_TARGETS), ("calibrate", CALIBRATIONS)):
            if getattr(self, name) not in valid:
                raise ConfigError(f"{name} must be one of {', '.join(map(str, valid))}; got {getattr(self, name)!r}")
        if self.l2_target == "init" and self.init != "prototypes":
            raise ConfigError("l2_target='init' (L2-SP) needs init='prototypes'")
        if self.device != "auto":
            import torch

            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ConfigError(f"unknown device '{self.device}' (auto, cpu, cuda, cuda:N)") from None

    def _check_loss_options(self) -> None:
        """Names against the loss's signature, values by building the loss once on dummy counts."""
        accepted = loss_parameters(self.loss)
        unknown = sorted(set(self.loss_options) - set(accepted))
        if unknown:
            raise ConfigError(f"loss '{self.loss}': unknown loss_options key '{unknown[0]}' "
                              f"(valid: {', '.join(accepted) or 'none'})")
        try:
            make_loss(self.loss, _DRY_RUN_COUNTS, **self.loss_options)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"loss '{self.loss}': bad loss_options {self.loss_options} ({err})") from None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ProbeConfig:
        """Build from a plain dict (YAML/JSON); an unknown key is a ConfigError naming it."""
        if not isinstance(values, dict):
            raise ConfigError(f"a probe config must be a mapping, got {type(values).__name__}")
        return apply_overrides(cls(), values)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain data (what config.yaml stores under `probe`; `from_dict` reads it)."""
        return asdict(self)

    def validation_rule(self) -> ValRule:
        """The rule drawing validation from the training features (inactive unless set)."""
        return ValRule(self.val_split, self.val_per_class, self.seed, self.val_rule)

    def needs_validation(self) -> list[str]:
        """The options set here that choose something on a validation set."""
        wanted = (("posthoc_tau", "auto"), ("interpolate", "auto"), ("calibrate", "temperature"))
        own = [f"{k}={v!r}" for k, v in wanted if getattr(self, k) == v]
        return own + get_method(self.method).validation_needs(self.method_options)

    def head_spec(self) -> dict[str, Any]:
        """The head to build: `{"type": head, **options}`."""
        return {"type": self.head, **({"scale": self.scale} if self.head == "cosine" else {})}

    def head_training(self) -> dict[str, Any]:
        """Keyword arguments of `train.train_head` (everything except data, init and names)."""
        options = {name: getattr(self, name) for name in solver_options(self.solver)}
        return {
            "head": self.head_spec(), "loss": self.loss, "loss_options": dict(self.loss_options),
            "solver": self.solver, "solver_options": {k: v for k, v in options.items() if v is not None},
            "normalize": self.normalize, "l2_target": self.l2_target, "seed": self.seed,
            "device": self.device, "config": self.to_dict(),
        }


@cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(ProbeConfig)


# ----------------------------------------------------------------------- saved configs
_LEGACY_LOSS_FIELDS = ("tau", "gamma", "mu", "omega")
_LEGACY_RENAMES = {"method_params": "method_options", "optimizer": "solver"}


def upgrade_saved(values: dict[str, Any], format_version: int) -> dict[str, Any]:
    """A probe config saved by run format_version <= 1 in today's keys.

    Before issue 10 the loss options were flat fields (tau, gamma, mu, omega) plus
    `loss_params` (which won on a clash), `method_options` was `method_params` and `solver`
    was `optimizer`. Flat fields the loss does not take (unset, or tau's default, then) are dropped.
    """
    legacy = set(_LEGACY_LOSS_FIELDS) | set(_LEGACY_RENAMES) | {"loss_params"}
    if format_version > 1 or not legacy & set(values):
        return values
    out = {k: v for k, v in values.items() if k not in legacy}
    accepted = loss_parameters(values.get("loss", "ce"))
    options = {k: values[k] for k in _LEGACY_LOSS_FIELDS
               if k in accepted and values.get(k) is not None}
    out["loss_options"] = {**options, **dict(values.get("loss_params") or {}), **dict(values.get("loss_options") or {})}
    for old, new in _LEGACY_RENAMES.items():
        if old in values:
            out[new] = values[old]
    return out
