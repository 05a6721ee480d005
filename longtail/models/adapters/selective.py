"""Tuning modes that add nothing and only choose which backbone weights train; any backbone.

They work through the backbone's fine-tuning interface (`TuningParts`: stem, ordered blocks,
top, norm layers, biases), so the same names serve a CLIP ViT and a CNN:

- none: everything frozen (head-only training; the whole backbone is a cacheable prefix);
- bitfit: every bias of the feature path (ViT: linear and LayerNorm biases; a CNN whose convs
  have no bias, e.g. EfficientNet: the BatchNorm shifts);
- norm-tuning (aliases ln-tuning, the old ViT name, and bn-tuning): the affine weights of every
  norm layer (LayerNorm in a ViT, BatchNorm in a CNN);
- partial: the last `num_blocks` blocks and the top (ViT: post-LayerNorm; EfficientNet: the
  1x1 head conv + BN); the first L - num_blocks blocks are a frozen prefix;
- full: stem, blocks and top.

BatchNorm statistics of a CNN stay frozen (eval mode) everywhere by default; with
`update_bn_stats=true` the BatchNorms of the tuned blocks (partial, full, norm-tuning) update
their running statistics in training (backbone.keep_norm_stats_frozen says why not by default).
These modes edit backbone weights in place, so they cannot be switched off
(`can_disable = False`); keep a frozen copy for a zero-shot pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from longtail.models.adapters.base import (
    AdapterConfig,
    AdapterHandle,
    TuningParts,
    register_adapter,
)
from longtail.models.backbone import UPDATE_STATS


def _allow_stats(modules: Iterable[nn.Module]) -> None:
    """Let the BatchNorms under `modules` update their statistics in train mode."""
    for part in modules:
        for m in part.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                setattr(m, UPDATE_STATS, True)


@register_adapter("none")
@dataclass
class FrozenConfig(AdapterConfig):
    """No adapter: the whole backbone stays frozen (classifier-only training)."""

    generic = True
    cacheable_depth = True

    def frozen_depth(self, num_blocks: int) -> int:
        return num_blocks

    def inject(self, parts: TuningParts, num_classes: int, handle: AdapterHandle) -> None:
        """Nothing to add: inject_adapter has already frozen the backbone."""


@register_adapter("bitfit")
@dataclass
class BitFitConfig(AdapterConfig):
    """BitFit: train every bias of the feature path (see the module docstring for CNNs)."""

    can_disable = False
    generic = True

    def inject(self, parts: TuningParts, num_classes: int, handle: AdapterHandle) -> None:
        for param in parts.biases:
            param.requires_grad_(True)


@register_adapter("norm-tuning")
@dataclass
class NormTuningConfig(AdapterConfig):
    """Train the affine weights of every norm layer (LayerNorm / BatchNorm) of the feature path."""

    update_bn_stats: bool = False

    can_disable = False
    generic = True

    def inject(self, parts: TuningParts, num_classes: int, handle: AdapterHandle) -> None:
        for module in parts.norms:
            module.requires_grad_(True)
        if self.update_bn_stats:
            _allow_stats(parts.norms)


@register_adapter("ln-tuning")
@dataclass
class LayerNormTuningConfig(NormTuningConfig):
    """The ViT name of norm-tuning (kept for existing runs and scripts)."""


@register_adapter("bn-tuning")
@dataclass
class BatchNormTuningConfig(NormTuningConfig):
    """The CNN name of norm-tuning."""


@register_adapter("partial")
@dataclass
class PartialConfig(AdapterConfig):
    """Partial fine-tuning: the last `num_blocks` blocks and the top (include_top; the old
    name include_post_layernorm is kept: the top trains only when both are true)."""

    num_blocks: int = 1
    include_top: bool = True
    include_post_layernorm: bool = True
    update_bn_stats: bool = False

    can_disable = False
    generic = True
    cacheable_depth = True

    def validate(self) -> None:
        self._check(isinstance(self.num_blocks, int) and self.num_blocks >= 1,
                    f"num_blocks must be a positive integer, got {self.num_blocks!r}")

    def frozen_depth(self, num_blocks: int) -> int:
        return max(num_blocks - self.num_blocks, 0)

    def inject(self, parts: TuningParts, num_classes: int, handle: AdapterHandle) -> None:
        self._check(self.num_blocks <= parts.num_layers,
                    f"num_blocks={self.num_blocks} exceeds the model's {parts.num_layers} blocks")
        tuned = list(parts.blocks[-self.num_blocks:])
        if self.include_top and self.include_post_layernorm:
            tuned += list(parts.top)
        for module in tuned:
            module.requires_grad_(True)
        if self.update_bn_stats:
            _allow_stats(tuned)


@register_adapter("full")
@dataclass
class FullConfig(AdapterConfig):
    """Full fine-tuning of the feature path (stem, all blocks, top)."""

    update_bn_stats: bool = False

    can_disable = False
    generic = True

    def inject(self, parts: TuningParts, num_classes: int, handle: AdapterHandle) -> None:
        modules = [*parts.stem, *parts.blocks, *parts.top]
        for module in modules:
            module.requires_grad_(True)
        if self.update_bn_stats:
            _allow_stats(modules)
