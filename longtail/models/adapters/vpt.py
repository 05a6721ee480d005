"""Visual prompt tuning (VPT, Jia et al. 2022), shallow and deep, on a ViT-like vision tower.

Prompts are appended after the CLS and patch tokens. Position embeddings are added before
the encoder and attention has no mask, so the position in the sequence is immaterial and
this equals VPT's insertion between CLS and patches (as in LIFT's code); CLS stays at index
0, so `pooler_output` is unchanged in meaning (CLIP, DINOv2, ViT; SigLIP's attention-pooling
head also attends to the prompts). `last_hidden_state` has num_prompts extra tokens.
Unlike the zero-initialised adapters, VPT changes the output already at step 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from longtail.models.adapters.base import (
    AdapterConfig,
    AdapterHandle,
    AdapterState,
    VisionParts,
    register_adapter,
)


class VisualPrompts(nn.Module):
    """Learnable prompt tokens, one (num_prompts, d) set per prompted layer; VPT's uniform init."""

    def __init__(self, num_sets: int, num_prompts: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.prompts = nn.Parameter(torch.empty(num_sets, num_prompts, dim))
        bound = math.sqrt(6.0 / float(3 * patch_size * patch_size + dim))
        nn.init.uniform_(self.prompts, -bound, bound)

    def hook(self, index: int, state: AdapterState, replace: bool):
        """Forward pre-hook for a block: append prompt set `index` (after dropping the old ones if `replace`)."""
        num_prompts = self.prompts.shape[1]

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
            if not state.enabled:
                return None
            in_kwargs = not args
            x = kwargs["hidden_states"] if in_kwargs else args[0]
            if replace:
                x = x[:, :-num_prompts]
            prompt = self.prompts[index].to(x.dtype).expand(x.shape[0], -1, -1)
            x = torch.cat([x, prompt], dim=1)
            if in_kwargs:
                return args, {**kwargs, "hidden_states": x}
            return (x, *args[1:]), kwargs

        return pre_hook


@dataclass
class _VPTConfig(AdapterConfig):
    num_prompts: int = 10

    deep: ClassVar[bool] = False

    def validate(self) -> None:
        self._check(isinstance(self.num_prompts, int) and self.num_prompts >= 1,
                    f"num_prompts must be a positive integer, got {self.num_prompts!r}")

    def inject(self, parts: VisionParts, num_classes: int, handle: AdapterHandle) -> None:
        num_sets = parts.num_layers if self.deep else 1
        prompts = VisualPrompts(num_sets, self.num_prompts, parts.hidden_size, parts.patch_size)
        handle.add_module(parts.layers_parent or parts.tower.encoder, "vpt", prompts)
        for i in range(num_sets):
            hook = prompts.hook(i, handle.state, replace=i > 0)
            handle.add_hook(parts.layers[i].register_forward_pre_hook(hook, with_kwargs=True))


@register_adapter("vpt-shallow")
@dataclass
class VPTShallowConfig(_VPTConfig):
    """VPT-shallow: num_prompts tokens added once, before the first block."""

    deep: ClassVar[bool] = False


@register_adapter("vpt-deep")
@dataclass
class VPTDeepConfig(_VPTConfig):
    """VPT-deep: a fresh set of num_prompts tokens replaces the previous one at every block's input."""

    deep: ClassVar[bool] = True
