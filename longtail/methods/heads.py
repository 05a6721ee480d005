"""Classifier heads on frozen features: linear (W f + b) and cosine (s * cos(w_c, f) [+ b]).

Both can start from given weights (class prototypes, text embeddings) or a seeded random draw,
and describe themselves as (tensors, JSON spec) so a Probe can save and rebuild them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.errors import ConfigError
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


def head_tensors(head: nn.Module, prefix: str = "") -> dict[str, Tensor]:
    """The head's weights as a flat dict for safetensors."""
    return {f"{prefix}{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
