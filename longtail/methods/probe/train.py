"""Training a probe: `train_head` (one head, one loss, one solver, explicit options) and
`fit_probe` (a whole ProbeConfig: the method, then the post-hoc choices on validation).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from longtail.data.features import FeatureSet, check_compatible, match_classes
from longtail.data.stats import require_nonempty
from longtail.device import resolve_device
from longtail.errors import ConfigError, DataError
from longtail.maths.finite import all_finite, as_tensor
from longtail.methods.heads import build_head
from longtail.methods.losses import make_loss
from longtail.methods.probe.config import ProbeConfig
from longtail.methods.probe.model import Probe
from longtail.methods.probe.registry import get_method
from longtail.methods.probe.select import calibrate_temperature
from longtail.methods.probe.solvers import SOLVERS


def train_head(
    features: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    class_counts: np.ndarray,
    *,
    head: dict[str, Any] | None = None,
    loss: str = "ce",
    loss_options: dict[str, Any] | None = None,
    solver: str = "lbfgs",
    solver_options: dict[str, Any] | None = None,
    normalize: bool = True,
    init: dict[str, Any] | None = None,
    l2_target: str = "zero",
    seed: int = 0,
    device: str = "auto",
    class_names: list[str] | None = None,
    config: dict[str, Any] | None = None,
    copy: bool = True,
) -> Probe:
    """Train a head (spec `head`, default linear) on (features, labels) with loss `loss` (priors
    from class_counts) and solver `solver`; no post-hoc selection.

    `init` optionally holds starting "weight" (C, d) and "bias" (C,) (e.g. prototypes);
    l2_target "init" anchors the L2 penalty at those weights (L2-SP) instead of zero.
    `config` is recorded in the Probe (a ProbeConfig as a dict, when there is one).
    copy=False: `features` is the caller's scratch tensor, normalised in place (one N x d copy
    less at iNat size; the same values as a normalised copy).
    """
    counts = np.asarray(class_counts, dtype=np.int64)
    require_nonempty(counts, class_names)
    if l2_target not in ("zero", "init"):
        raise ConfigError(f"l2_target must be 'zero' or 'init', got '{l2_target}'")
    if l2_target == "init" and init is None:
        raise ConfigError("l2_target='init' (L2-SP) needs initial weights (init='prototypes')")
    run_on = resolve_device(device)
    x = as_tensor(features)
    y = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).long()
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise DataError(f"features (N, d) and labels (N,) expected, got {tuple(x.shape)} and {tuple(y.shape)}")
    if not all_finite(x):
        raise DataError("training features contain NaN or inf")
    if y.min() < 0 or y.max() >= counts.size:
        raise DataError(f"training label out of range for {counts.size} classes")
    x, y = x.to(device=run_on, dtype=torch.float32), y.to(run_on)
    if normalize:
        x = F.normalize(x, dim=-1, out=None if copy or not torch.is_tensor(features) else x)

    generator = torch.Generator().manual_seed(seed)
    init = init or {}
    module = build_head(head or {"type": "linear"}, counts.size, x.shape[1], weight=init.get("weight"),
                        bias=init.get("bias"), generator=generator).to(run_on)
    loss_fn = make_loss(loss, counts, **(loss_options or {})).to(run_on)
    anchor = module.weight.detach().clone() if l2_target == "init" else None
    start = time.perf_counter()
    info = SOLVERS.get(solver)(module, loss_fn, x, y, anchor=anchor, generator=generator, **(solver_options or {}))
    info["train_seconds"] = time.perf_counter() - start
    return Probe(module, counts, normalize=normalize, class_names=class_names, config=config,
                 info={"train": info})


def train_head_with(cfg: ProbeConfig, features: np.ndarray | Tensor, labels: np.ndarray | Tensor,
                    class_counts: np.ndarray, *, init: dict[str, Any] | None = None,
                    class_names: list[str] | None = None, copy: bool = True) -> Probe:
    """`train_head` with the head, loss, solver and options that `cfg` names."""
    return train_head(features, labels, class_counts, **cfg.head_training(), init=init, class_names=class_names,
                      copy=copy)


def fit_probe(train: FeatureSet, cfg: ProbeConfig, val: FeatureSet | None = None) -> Probe:
    """Fit the probe method cfg.method on `train`; `val` serves only the "auto" choices and
    temperature calibration (cfg.calibrate)."""
    method = get_method(cfg.method)
    train.check_trainable()
    if val is not None:
        val = match_classes(train.class_names, val)
        check_compatible(train, val)
    elif cfg.needs_validation():
        raise ConfigError(f"{', '.join(cfg.needs_validation())} needs a validation set (val)")
    probe = method.fit(train, cfg, val)
    return calibrate_temperature(probe, val) if cfg.calibrate == "temperature" else probe
