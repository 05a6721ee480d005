"""Classifier heads on frozen features: linear (W f + b) and cosine (s * cos(w_c, f) [+ b]).

Both can start from given weights (class prototypes, text embeddings) or a seeded random draw,
and describe themselves as (tensors, JSON spec). A standalone head has one file layout and one
writer (`save_head` / `load_head`): probe runs and every export use it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.errors import ConfigError, DataError
from longtail.registry import Registry

HEADS: Registry = Registry("head")
INIT_STD = 0.01  # std of the seeded random initial weights


def _initial_weight(
    num_classes: int, dim: int, weight: Tensor | None, generator: torch.Generator | None
) -> Tensor:
    if weight is None:
        return torch.randn(num_classes, dim, generator=generator) * INIT_STD
    weight = torch.as_tensor(weight, dtype=torch.float32).clone()
    if weight.shape != (num_classes, dim):
        raise ConfigError(
            f"initial head weight has shape {tuple(weight.shape)}, expected ({num_classes}, {dim})"
        )
    return weight


def _initial_bias(num_classes: int, bias: Tensor | None) -> Tensor:
    if bias is None:
        return torch.zeros(num_classes)
    bias = torch.as_tensor(bias, dtype=torch.float32).clone()
    if bias.shape != (num_classes,):
        raise ConfigError(f"initial head bias has shape {tuple(bias.shape)}, expected ({num_classes},)")
    return bias


@HEADS.register("linear")
class LinearHead(nn.Module):
    """z = f W^T + b; the bias is not L2-penalised (as in scikit-learn)."""

    def __init__(
        self,
        num_classes: int,
        dim: int,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
        generator: torch.Generator | None = None,
        use_bias: bool = True,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(_initial_weight(num_classes, dim, weight, generator))
        self.bias = nn.Parameter(_initial_bias(num_classes, bias)) if use_bias else None

    def forward(self, features: Tensor) -> Tensor:
        return F.linear(features, self.weight, self.bias)

    def spec(self) -> dict[str, Any]:
        return {"type": "linear", "use_bias": self.bias is not None}


@HEADS.register("cosine")
class CosineHead(nn.Module):
    """z_c = s * cos(w_c, f) (+ b_c); rows stored unnormalised, s a constant (LIFT: 25)."""

    def __init__(
        self,
        num_classes: int,
        dim: int,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
        generator: torch.Generator | None = None,
        scale: float = 25.0,
        use_bias: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(_initial_weight(num_classes, dim, weight, generator))
        self.scale = float(scale)
        use_bias = use_bias or bias is not None
        self.bias = nn.Parameter(_initial_bias(num_classes, bias)) if use_bias else None

    def forward(self, features: Tensor) -> Tensor:
        cos = F.linear(F.normalize(features, dim=-1), F.normalize(self.weight, dim=-1))
        z = self.scale * cos
        return z if self.bias is None else z + self.bias

    def spec(self) -> dict[str, Any]:
        return {"type": "cosine", "scale": self.scale, "use_bias": self.bias is not None}


def build_head(spec: dict[str, Any], num_classes: int, dim: int, **kwargs) -> nn.Module:
    """Build a head from its spec (`{"type": ..., **options}`) plus weight/bias/generator."""
    options = {k: v for k, v in spec.items() if k != "type"}
    return HEADS.get(spec["type"])(num_classes, dim, **options, **kwargs)


HEAD_FILE = "head.safetensors"
HEAD_FORMAT = "longtail-head/1"


def head_tensors(head: nn.Module) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, spec) of a classifier head in the one head-file layout: `weight` (C x d), `bias`
    (C) when it has one, `scale` (a scalar) for a cosine head: z = scale cos(W, f) + b, or W f + b."""
    spec = head.spec() if hasattr(head, "spec") else {"type": "linear", "use_bias": head.bias is not None}
    if spec["type"] not in HEADS:
        raise ConfigError(f"head {type(head).__name__} has no head-file layout")
    tensors = {"weight": head.weight.detach().float().cpu().contiguous()}
    if getattr(head, "bias", None) is not None:
        tensors["bias"] = head.bias.detach().float().cpu().contiguous()
    if spec["type"] == "cosine":
        tensors["scale"] = torch.tensor(float(head.scale))
    return tensors, spec


def save_head(path: str | Path, head: nn.Module, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Write `head` to the safetensors file `path` (atomic, never over an existing file): its
    tensors (`head_tensors`) with the spec and class names in the file's metadata. The one writer
    of a standalone head: probe runs (head/head.safetensors, head/zero_shot.safetensors) and every
    export (head.safetensors). Returns the spec."""
    from safetensors.torch import save_file

    from longtail.io import atomic_write

    path = Path(path)
    if path.exists():
        raise DataError(f"{path}: a saved head already exists (not overwriting)")
    tensors, spec = head_tensors(head)
    metadata = {"format": "pt", "longtail": HEAD_FORMAT, "spec": json.dumps(spec),
                "class_names": json.dumps(None if class_names is None else list(class_names))}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))
    return spec


def load_head(path: str | Path, legacy: tuple[dict[str, Tensor], str, dict[str, Any]] | None = None,
              ) -> tuple[nn.Module, list[str] | None]:
    """(head, class names) from a file written by `save_head`. `legacy`: (tensors, key prefix,
    spec) of a head stored the old way (probe runs before the one head file: `head.weight`,
    `zero_shot.weight` side by side, spec in head.json), migrated on read."""
    from longtail.io import open_weights_file

    if legacy is not None:
        tensors, prefix, spec = legacy
        names = None
    else:
        with open_weights_file(path) as handle:
            meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        if meta.get("longtail") != HEAD_FORMAT:
            raise DataError(f"{path}: not a longtail head file (no '{HEAD_FORMAT}' metadata)")
        prefix, spec, names = "", json.loads(meta["spec"]), json.loads(meta["class_names"])
    weight = tensors[f"{prefix}weight"]
    options = {k: v for k, v in spec.items() if k != "type"}
    if spec["type"] == "cosine" and f"{prefix}scale" in tensors:
        options["scale"] = float(tensors[f"{prefix}scale"])
    head = HEADS.get(spec["type"])(weight.shape[0], weight.shape[1], weight=weight,
                                   bias=tensors.get(f"{prefix}bias"), **options)
    return head, names
