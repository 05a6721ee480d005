"""Class prototypes (e.g. CLIP text embeddings) as a classifier: zero-shot, head init, interpolation.

Unit-norm prototypes (CLIP-style) give a cosine zero-shot head z = s * cos(p_c, f) (+ b_c);
other prototypes a linear one z = p_c . f + b_c. The rule used is recorded in the probe.
Interpolation (WiSE-FT style, on logits): z = (1 - alpha) z_zero_shot + alpha z_trained.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from longtail.data.features import FeatureSet
from longtail.errors import DataError
from longtail.methods.heads import CosineHead, LinearHead
from longtail.methods.probe import Probe, ProbeConfig, select_adjustments
from longtail.methods.registry import PROBE_METHODS

UNIT_TOLERANCE = 1e-3  # prototypes whose norms are all within this of 1 count as unit vectors


def require_prototypes(train: FeatureSet, why: str) -> np.ndarray:
    """The file's prototypes (C, d), or a one-line DataError saying which option needs them."""
    if train.prototypes is None:
        raise DataError(f"{train.source}: {why} needs class prototypes, but the file has none")
    return np.asarray(train.prototypes, dtype=np.float32)


def is_unit(prototypes: np.ndarray) -> bool:
    return bool(np.all(np.abs(np.linalg.norm(prototypes, axis=1) - 1.0) <= UNIT_TOLERANCE))


def zero_shot_head(train: FeatureSet, cfg: ProbeConfig, why: str = "zero-shot") -> nn.Module:
    """Cosine head (scale cfg.scale) for unit prototypes, else linear head; bias = prototype_bias."""
    protos = require_prototypes(train, why)
    bias = None if train.prototype_bias is None else np.asarray(train.prototype_bias, dtype=np.float32)
    num_classes, dim = protos.shape
    if is_unit(protos):
        return CosineHead(num_classes, dim, weight=torch.from_numpy(protos),
                          bias=None if bias is None else torch.from_numpy(bias), scale=cfg.scale)
    return LinearHead(num_classes, dim, weight=torch.from_numpy(protos),
                      bias=None if bias is None else torch.from_numpy(bias))


def zero_shot_rule(head: nn.Module) -> str:
    spec = head.spec()
    if spec["type"] == "cosine":
        return f"cosine: z = {spec['scale']} * cos(p_c, f) (+ b_c); unit-norm prototypes"
    return "linear: z = p_c . f + b_c"


def prototype_init(train: FeatureSet, cfg: ProbeConfig) -> dict[str, Any]:
    """Initial weight/bias for cfg.head that reproduce the zero-shot logits before any step.

    Exact for a cosine head, and for a linear head on L2-normalised features
    (W = s * normalize(P) for unit prototypes); a cosine head from non-unit prototypes
    starts from their directions only.
    """
    zs = zero_shot_head(train, cfg, why="init='prototypes'")
    weight = zs.weight.detach().clone()
    bias = None if zs.bias is None else zs.bias.detach().clone()
    if cfg.head == "linear" and isinstance(zs, CosineHead):
        weight = zs.scale * F.normalize(weight, dim=-1)
    return {"weight": weight, "bias": bias}


@PROBE_METHODS.register("zero-shot")
def fit_zero_shot(train: FeatureSet, cfg: ProbeConfig, val: FeatureSet | None = None) -> Probe:
    """No training: classify with the file's prototypes (+ optional post-hoc adjustment)."""
    if cfg.interpolate is not None:
        from longtail.errors import ConfigError

        raise ConfigError("interpolate applies to trained methods, not 'zero-shot'")
    head = zero_shot_head(train, cfg)
    probe = Probe(head, train.class_counts(), normalize=cfg.normalize, class_names=train.names(),
                  config=asdict(cfg), info={"zero_shot_rule": zero_shot_rule(head)})
    return select_adjustments(probe, cfg, val)
