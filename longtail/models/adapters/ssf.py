"""SSF (Lian et al. 2022): a learnable per-channel scale and shift after chosen block layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from longtail.models.adapters.base import (
    AdapterConfig,
    AdapterHandle,
    AdapterState,
    VisionParts,
    register_adapter,
)

# SSF target names (CLIP's); each family's block path is in its BlockLayout (adapters/layouts.py).
SSF_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "layer_norm1", "layer_norm2")


class ScaleShift(nn.Module):
    """y = x * gamma + beta over the last dimension; identity at init (gamma = 1, beta = 0)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return (x * self.scale + self.shift).to(x.dtype)

    def output_hook(self, state: AdapterState):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
            return self(output) if state.enabled else None

        return hook


@register_adapter("ssf")
@dataclass
class SSFConfig(AdapterConfig):
    """SSF after each block's linear layers by default (18 d parameters per block).

    Add "layer_norm1"/"layer_norm2" to `targets` to also scale-shift the block's LayerNorms.
    """

    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")

    def validate(self) -> None:
        bad = sorted(set(self.targets) - set(SSF_TARGETS))
        self._check(bool(self.targets) and not bad,
                    f"targets {bad or '()'} invalid; choose from {', '.join(SSF_TARGETS)}")

    def inject(self, parts: VisionParts, num_classes: int, handle: AdapterHandle) -> None:
        missing = parts.layout.missing(parts.layers[0], self.targets)
        self._check(not missing, f"targets {missing} do not exist in a {type(parts.layers[0]).__name__} "
                                 f"({parts.layout.family} layout); drop them from targets")
        for layer in parts.layers:
            for target in self.targets:
                module = layer.get_submodule(parts.layout.path(target))
                dim = module.out_features if isinstance(module, nn.Linear) else module.normalized_shape[-1]
                ssf = ScaleShift(dim)
                handle.add_module(module, "ssf", ssf)
                handle.add_hook(module.register_forward_hook(ssf.output_hook(handle.state)))
