"""AdaptFormer as used by LIFT (docs/methods.md §1.3): a bottleneck MLP in parallel with every block's MLP."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.models.adapters.base import (
    AdapterConfig,
    AdapterHandle,
    ParallelToMLP,
    VisionParts,
    kaiming_down_,
    register_adapter,
    resolve_r,
)


class AdaptFormerBlock(nn.Module):
    """a = s_l * (ReLU(LN_a(f_tilde) W_down + b_down) W_up + b_up); zero output at init (W_up = 0)."""

    def __init__(self, dim: int, r: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim, eps=eps)
        self.down = nn.Linear(dim, r)
        self.up = nn.Linear(r, dim)
        self.scale = nn.Parameter(torch.ones(()))
        kaiming_down_(self.down)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, f_tilde: Tensor) -> Tensor:
        x = f_tilde.to(self.down.weight.dtype)
        return self.scale * self.up(F.relu(self.down(self.ln(x))))


@register_adapter("adaptformer")
@dataclass
class AdaptFormerConfig(AdapterConfig):
    """LIFT's AdaptFormer in all blocks; r = "auto" applies the LIFT bottleneck rule."""

    r: int | str = "auto"

    def validate(self) -> None:
        self._check_r(self.r)

    def inject(self, parts: VisionParts, num_classes: int, handle: AdapterHandle) -> None:
        r = resolve_r(self.r, num_classes, parts.num_layers)
        for layer in parts.layers:
            block = AdaptFormerBlock(parts.hidden_size, r, parts.layer_norm_eps)
            ParallelToMLP(block, handle.state).attach(layer, handle, layout=parts.layout)
