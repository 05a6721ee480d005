"""Class prototypes (e.g. CLIP text embeddings) as a classifier: zero-shot head and head init.

Unit-norm prototypes (CLIP-style) give a cosine zero-shot head z = s * cos(p_c, f) (+ b_c);
other prototypes a linear one z = p_c . f + b_c. The rule used is recorded in the probe.
Interpolation with a trained head (WiSE-FT style, on logits) is `Probe.combine`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from longtail.data.features import FeatureSet
from longtail.errors import DataError
from longtail.methods.heads import CosineHead, LinearHead

UNIT_TOLERANCE = 1e-3  # prototypes whose norms are all within this of 1 count as unit vectors


def require_prototypes(train: FeatureSet, why: str) -> np.ndarray:
    """The file's prototypes (C, d), or a one-line DataError saying which option needs them."""
    if train.prototypes is None:
        raise DataError(f"{train.source}: {why} needs class prototypes, but the file has none")
    return np.asarray(train.prototypes, dtype=np.float32)


def is_unit(prototypes: np.ndarray) -> bool:
    """True when every prototype has norm 1 (within UNIT_TOLERANCE)."""
    return bool(np.all(np.abs(np.linalg.norm(prototypes, axis=1) - 1.0) <= UNIT_TOLERANCE))


def zero_shot_head(train: FeatureSet, scale: float, why: str = "zero-shot") -> nn.Module:
    """Cosine head (logit scale `scale`) for unit prototypes, else linear head; bias = prototype_bias."""
    protos = require_prototypes(train, why)
    bias = None if train.prototype_bias is None else np.asarray(train.prototype_bias, dtype=np.float32)
    num_classes, dim = protos.shape
    if is_unit(protos):
        return CosineHead(num_classes, dim, weight=torch.from_numpy(protos),
                          bias=None if bias is None else torch.from_numpy(bias), scale=scale)
    return LinearHead(num_classes, dim, weight=torch.from_numpy(protos),
                      bias=None if bias is None else torch.from_numpy(bias))


def zero_shot_rule(head: nn.Module) -> str:
    """The zero-shot rule in words, for the probe's info."""
    spec = head.spec()
    if spec["type"] == "cosine":
        return f"cosine: z = {spec['scale']} * cos(p_c, f) (+ b_c); unit-norm prototypes"
    return "linear: z = p_c . f + b_c"


def prototype_init(train: FeatureSet, head: str, scale: float) -> dict[str, Any]:
    """Initial weight/bias for a `head` ("linear" | "cosine") that reproduce the zero-shot logits.

    Exact for a cosine head, and for a linear head on L2-normalised features
    (W = s * normalize(P) for unit prototypes); a cosine head from non-unit prototypes
    starts from their directions only.
    """
    zs = zero_shot_head(train, scale, why="init='prototypes'")
    weight = zs.weight.detach().clone()
    bias = None if zs.bias is None else zs.bias.detach().clone()
    if head == "linear" and isinstance(zs, CosineHead):
        weight = zs.scale * F.normalize(weight, dim=-1)
    return {"weight": weight, "bias": bias}
