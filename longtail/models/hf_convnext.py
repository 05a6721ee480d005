"""ConvNeXt (and ConvNeXt V2) on `transformers.ConvNextModel` as a CNN `Backbone`.

The feature (`feature_kind` "pooler_output", option `feature=cls`, the only one) is the model's
pooled output: the global average of the last stage, through the final LayerNorm.
Fine-tuning interface (models/backbone.py): stem = the patchify conv + LayerNorm, blocks = every
ConvNeXt layer in order, the first layer of each stage carrying that stage's downsampling
(LayerNorm + 2x2 stride-2 conv), so `partial num_blocks=k` trains the last k layers at layer
granularity (ConvNeXt-T: 18 blocks); top = the final LayerNorm; hidden states are (B, C, H, W).
arch "cnn": the generic tuning modes (none, bitfit, norm-tuning, partial, full) apply, the ViT
adapters are refused in one line. ConvNeXt has no BatchNorm, so no statistics to freeze.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from longtail.models.backbone import HF_MODEL_TYPES
from longtail.models.hf_vision import (
    POOLED,
    HFEncoderBackbone,
    image_transform,
    load_model,
    register_presets,
    weights_source,
)
from longtail.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, EvalTransform


class ConvNextStep(nn.Module):
    """One block of the interface: a stage's downsampling (first layer only) + one ConvNeXt layer.

    Built over the model's own modules and never registered on the backbone, so parameter and
    state-dict names stay the `ConvNextModel`'s."""

    def __init__(self, down: nn.ModuleList | None, layer: nn.Module) -> None:
        super().__init__()
        self.down = down if down is not None else nn.ModuleList()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.down:
            x = module(x)
        return self.layer(x)


class ConvNextBackbone(HFEncoderBackbone):
    """ConvNeXt (`ConvNextModel` / `ConvNextV2Model`): LayerNorm of the globally averaged last stage."""

    arch = "cnn"
    has_text = False
    feature_kind = "pooler_output"

    def __init__(self, model: Any, transform: EvalTransform, name: str, model_id: str,
                 revision: str | None = None, feature: str = POOLED) -> None:
        super().__init__(model, transform, name, model_id, revision, feature=feature)
        self.feature_dim = int(model.config.hidden_sizes[-1])
        steps = [ConvNextStep(stage.downsampling_layer if j == 0 else None, layer)
                 for stage in model.encoder.stages for j, layer in enumerate(stage.layers)]
        object.__setattr__(self, "_steps", nn.ModuleList(steps))  # not a submodule: names stay the model's
        self._frozen()

    def stem(self) -> list[nn.Module]:
        return [self.model.embeddings]

    def blocks(self) -> nn.ModuleList:
        return self._steps

    def top(self) -> list[nn.Module]:
        return [self.model.layernorm]

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(pixels.to(self.model.embeddings.patch_embeddings.weight.dtype))

    def forward_between(self, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for step in self._steps[start:stop]:
            hidden = step(hidden)
        return hidden

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.layernorm(hidden.mean(dim=(-2, -1)))


def load_convnext(name_or_path: str, revision: str | None = None, name: str | None = None,
                  feature: str = POOLED, **model_kw: Any) -> ConvNextBackbone:
    """Load a ConvNeXt or ConvNeXt V2 checkpoint (hub id or folder; a classifier loses its head)."""
    from transformers import AutoConfig, ConvNextModel, ConvNextV2Model

    try:
        model_type = AutoConfig.from_pretrained(name_or_path, revision=revision).model_type
    except (OSError, ValueError):
        model_type = "convnext"  # load_model below reports the real problem
    cls = ConvNextV2Model if model_type == "convnextv2" else ConvNextModel
    model = load_model(cls, name_or_path, revision, "ConvNeXt", **model_kw)
    size = int(getattr(model.config, "image_size", 224))  # no processor: resize size/0.875, crop, ImageNet stats
    fallback = EvalTransform(size=int(size / 0.875), crop_size=(size, size), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    transform = image_transform(name_or_path, revision, fallback)
    model_id, resolved = weights_source(name_or_path, model, revision)
    return ConvNextBackbone(model, transform, name or model_id, model_id, resolved, feature)


HF_MODEL_TYPES.register("convnext", load_convnext)
HF_MODEL_TYPES.register("convnextv2", load_convnext)
register_presets({
    "convnext_t": ("facebook/convnext-tiny-224", "ConvNeXt-T supervised on ImageNet-1k: 768-d pooled features"),
    "convnext_b_in22k": ("facebook/convnext-base-224-22k", "ConvNeXt-B supervised on ImageNet-22k: 1024-d pooled features"),
    "convnextv2_t": ("facebook/convnextv2-tiny-22k-224", "ConvNeXt V2-T (FCMAE, ImageNet-22k then 1k): 768-d pooled features"),
}, load_convnext, "cnn")
