"""Class prototypes (CLIP text embeddings, classifier rows) as a classifier: zero-shot head and init.

How features meet prototypes is a property of the prototype source, recorded by
`longtail features` in the file's meta as `prototype_kind`:
  "text"       (CLIP text embeddings): cosine head z = s * cos(p_c, f) (+ b_c); the features'
               norm does not matter, so the rule holds with or without L2 normalisation;
  "classifier" (a pretrained head's rows, e.g. EfficientNet-Lite's ImageNet `_fc` selected by
               a class map): linear head z = p_c . f + b_c on the RAW (un-normalised) features,
               i.e. exactly the backbone's own classifier restricted to the dataset's classes.
               A class mapped to several ImageNet classes gets the mean of their rows and
               biases, so its logit is the MEAN of the member logits (the head is linear);
               with one ImageNet class per class (e.g. WordNet ids) it is that class's logit.
Files without the key (older files, user arrays, synthetic benchmarks) keep the earlier rule:
unit-norm prototypes -> cosine head, others -> linear head, on features L2-normalised or not
as `ProbeConfig.normalize` says. The rule used is recorded in the probe's info.
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
KIND_KEY = "prototype_kind"  # meta key written by `longtail.models.features.extract_features`
PROTOTYPE_KINDS = ("text", "classifier")


def require_prototypes(train: FeatureSet, why: str) -> np.ndarray:
    """The file's prototypes (C, d), or a one-line DataError saying which option needs them."""
    if train.prototypes is None:
        raise DataError(f"{train.source}: {why} needs class prototypes, but the file has none")
    return np.asarray(train.prototypes, dtype=np.float32)


def prototype_kind(train: FeatureSet) -> str | None:
    """The file's `prototype_kind` ("text" | "classifier"), or None when it does not say."""
    kind = train.meta.get(KIND_KEY)
    if kind is not None and kind not in PROTOTYPE_KINDS:
        raise DataError(f"{train.source}: unknown {KIND_KEY} {kind!r}; expected one of {', '.join(PROTOTYPE_KINDS)}")
    return kind


def is_unit(prototypes: np.ndarray) -> bool:
    """True when every prototype has norm 1 (within UNIT_TOLERANCE)."""
    return bool(np.all(np.abs(np.linalg.norm(prototypes, axis=1) - 1.0) <= UNIT_TOLERANCE))


def zero_shot_normalize(train: FeatureSet, default: bool) -> bool:
    """Whether the zero-shot method L2-normalises features: never for classifier rows (the
    backbone's head was trained on raw features), else `default` (`ProbeConfig.normalize`;
    for text embeddings the cosine head ignores the features' norm, so it changes nothing)."""
    return False if prototype_kind(train) == "classifier" else default


def interpolation_head(train: FeatureSet, scale: float, normalize: bool) -> nn.Module:
    """The zero-shot head for interpolation inside a probe whose features are L2-normalised
    when `normalize`: classifier rows are then scaled by the mean training feature norm
    (W |f|_mean f/|f| + b: the backbone's logits for features of average norm, approximate
    otherwise); exact in every other case, including classifier rows on raw features."""
    head = zero_shot_head(train, scale, why="interpolate")
    if normalize and prototype_kind(train) == "classifier":
        with torch.no_grad():
            head.weight.mul_(mean_norm(train))
    return head


def mean_norm(train: FeatureSet) -> float:
    """Mean L2 norm of the training features (the scale of classifier rows on unit features)."""
    return float(np.linalg.norm(train.features, axis=1).mean())


def zero_shot_head(train: FeatureSet, scale: float, why: str = "zero-shot") -> nn.Module:
    """The prototypes' head (module docstring): cosine (logit scale `scale`) for text
    embeddings, linear for classifier rows, by norm when the file does not say; bias =
    prototype_bias."""
    protos = require_prototypes(train, why)
    bias = None if train.prototype_bias is None else torch.from_numpy(np.asarray(train.prototype_bias, np.float32))
    num_classes, dim = protos.shape
    kind = prototype_kind(train)
    cosine = kind == "text" or (kind is None and is_unit(protos))
    if cosine:
        return CosineHead(num_classes, dim, weight=torch.from_numpy(protos), bias=bias, scale=scale)
    return LinearHead(num_classes, dim, weight=torch.from_numpy(protos), bias=bias)


def zero_shot_rule(head: nn.Module, normalize: bool | None = None) -> str:
    """The zero-shot rule in words, for the probe's info."""
    spec = head.spec()
    if spec["type"] == "cosine":
        return f"cosine: z = {spec['scale']} * cos(p_c, f) (+ b_c); unit-norm prototypes"
    features = {True: "L2-normalised f", False: "raw f", None: "f"}[normalize]
    return f"linear: z = p_c . f + b_c on {features}"


def prototype_init(train: FeatureSet, head: str, scale: float, normalize: bool = True) -> dict[str, Any]:
    """Initial weight/bias for a `head` ("linear" | "cosine") that reproduce the zero-shot logits.

    Exact for a cosine head, and for a linear head on L2-normalised features from unit
    prototypes (W = s * normalize(P)). Classifier rows on a linear head are exact on raw
    features (`normalize` False); on L2-normalised features the rows are scaled by the mean
    training feature norm, so W f/|f| + b equals the backbone's logits for features of
    average norm (exact when all norms are equal). A cosine head from non-unit prototypes
    starts from their directions only.
    """
    zs = zero_shot_head(train, scale, why="init='prototypes'")
    weight = zs.weight.detach().clone()
    bias = None if zs.bias is None else zs.bias.detach().clone()
    if head == "linear" and isinstance(zs, CosineHead):
        weight = zs.scale * F.normalize(weight, dim=-1)
    elif head == "linear" and normalize and prototype_kind(train) == "classifier":
        weight = weight * mean_norm(train)
    return {"weight": weight, "bias": bias}
