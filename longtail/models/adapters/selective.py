"""Adapters that add nothing and only choose which backbone parameters train.

BitFit, LayerNorm tuning, partial and full fine-tuning edit backbone weights in place, so
they cannot be switched off (`can_disable = False`); keep a frozen copy for a zero-shot pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from longtail.models.adapters.base import (
    AdapterConfig,
    AdapterHandle,
    VisionParts,
    register_adapter,
)


@register_adapter("none")
@dataclass
class FrozenConfig(AdapterConfig):
    """No adapter: the whole backbone stays frozen (classifier-only training)."""

    def inject(self, parts: VisionParts, num_classes: int, handle: AdapterHandle) -> None:
        """Nothing to add: inject_adapter has already frozen the backbone."""


@register_adapter("bitfit")
@dataclass
class BitFitConfig(AdapterConfig):
    """BitFit: train every bias of the vision tower (linear and LayerNorm biases)."""

    can_disable = False

    def inject(self, parts: VisionParts, num_classes: int, handle: AdapterHandle) -> None:
        for name, param in parts.tower.named_parameters():
            if name.rsplit(".", 1)[-1] == "bias":
                param.requires_grad_(True)


@register_adapter("ln-tuning")
@dataclass
class LayerNormTuningConfig(AdapterConfig):
    """Train the affine weights of every LayerNorm in the vision tower (blocks, pre- and post-LN)."""

    can_disable = False

    def inject(self, parts: VisionParts, num_classes: int, handle: AdapterHandle) -> None:
        for module in parts.tower.modules():
            if isinstance(module, nn.LayerNorm):
                module.requires_grad_(True)


@register_adapter("partial")
@dataclass
class PartialConfig(AdapterConfig):
    """Partial fine-tuning: train the last `num_blocks` blocks (and the post-LayerNorm by default)."""

    num_blocks: int = 1
    include_post_layernorm: bool = True

    can_disable = False

    def validate(self) -> None:
        self._check(isinstance(self.num_blocks, int) and self.num_blocks >= 1,
                    f"num_blocks must be a positive integer, got {self.num_blocks!r}")

    def inject(self, parts: VisionParts, num_classes: int, handle: AdapterHandle) -> None:
        self._check(self.num_blocks <= parts.num_layers,
                    f"num_blocks={self.num_blocks} exceeds the model's {parts.num_layers} blocks")
        for layer in parts.layers[-self.num_blocks:]:
            layer.requires_grad_(True)
        if self.include_post_layernorm:
            parts.tower.post_layernorm.requires_grad_(True)


@register_adapter("full")
@dataclass
class FullConfig(AdapterConfig):
    """Full fine-tuning of the vision tower (embeddings, all blocks, LayerNorms)."""

    can_disable = False

    def inject(self, parts: VisionParts, num_classes: int, handle: AdapterHandle) -> None:
        parts.tower.requires_grad_(True)
