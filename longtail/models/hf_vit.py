"""ViT-like `transformers` backbones: DINOv2, ViT, SigLIP / SigLIP 2 (image and text towers).

One class per family on `hf_vision.HFEncoderBackbone`; the feature (`feature_kind`
"pooler_output", backbone option `feature=cls`, the only one) is the model's own pooled output:
DINOv2: the final-LayerNorm CLS token; ViT: the final-LayerNorm CLS token (not the tanh pooler,
which ImageNet-21k checkpoints leave untrained); SigLIP: the attention-pooling head's output, the
image embedding that SigLIP's logits compare with text embeddings (so text prototypes are the
text embeddings themselves, and `fit -m lift|sage` work as on CLIP).
Fine-tuning interface (models/backbone.py): stem = the embeddings, blocks = the encoder layers,
top = the final LayerNorm (SigLIP: post-LayerNorm + the pooling head); hidden states are
(B, tokens, width). Fixed-resolution SigLIP 2 checkpoints are `SiglipModel`s (model_type
"siglip"); the NaFlex ones (model_type "siglip2") take patch sequences, which `embed` cuts from
the square transform output (every patch valid, no padding).
Adapters: every tuning mode, and the ViT adapters through `adapters/layouts.py` (DINOv2 with a
SwiGLU MLP, e.g. dinov2-giant, has no fc1 / fc2 for LoRA / SSF: refused in one line).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from longtail.errors import ConfigError
from longtail.models.backbone import HF_MODEL_TYPES
from longtail.models.hf_vision import (
    POOLED,
    HFEncoderBackbone,
    image_transform,
    load_model,
    load_tokenizer,
    register_presets,
    template_mean_embeddings,
    weights_source,
)
from longtail.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, EvalTransform

HALF = (0.5, 0.5, 0.5)  # ViT (Google) and SigLIP normalise to [-1, 1]


def _blocks_of(tower: nn.Module) -> nn.ModuleList:
    """encoder.layers (SigLIP), encoder.layer (DINOv2, ViT in transformers 4.x) or layers (ViT >= 5)."""
    encoder = getattr(tower, "encoder", None)
    for parent, attr in ((encoder, "layers"), (encoder, "layer"), (tower, "layers")):
        blocks = getattr(parent, attr, None) if parent is not None else None
        if isinstance(blocks, nn.ModuleList):
            return blocks
    raise ConfigError(f"{type(tower).__name__} has no encoder layers this version of longtail knows")


class _ClsTokenBackbone(HFEncoderBackbone):
    """A CLS-token encoder (DINOv2, ViT): feature = final LayerNorm of token 0."""

    arch = "vit"
    has_text = False
    feature_kind = "pooler_output"

    def __init__(self, model: Any, transform: EvalTransform, name: str, model_id: str,
                 revision: str | None = None, feature: str = POOLED) -> None:
        super().__init__(model, transform, name, model_id, revision, feature=feature)
        self.feature_dim = int(model.config.hidden_size)
        self._frozen()

    def stem(self) -> list[nn.Module]:
        return [self.model.embeddings]

    def blocks(self) -> nn.ModuleList:
        return _blocks_of(self.model)

    def top(self) -> list[nn.Module]:
        return [self.model.layernorm]

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(pixels.to(self.model.embeddings.patch_embeddings.projection.weight.dtype))

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.layernorm(hidden[:, 0, :])  # LayerNorm is per token: LN(h)[:, 0] == LN(h[:, 0])


class DINOv2Backbone(_ClsTokenBackbone):
    """DINOv2 (`Dinov2Model`): the final-LayerNorm CLS token (its `pooler_output`)."""


class ViTBackbone(_ClsTokenBackbone):
    """ViT (`ViTModel`): the final-LayerNorm CLS token (the representation before the tanh pooler)."""


class SiglipBackbone(HFEncoderBackbone):
    """SigLIP / SigLIP 2 (`SiglipModel`, `Siglip2Model`): the vision tower's attention-pooled
    embedding, and text embeddings from the text tower (padded to max_length, as trained)."""

    arch = "vit"
    has_text = True
    feature_kind = "pooler_output"

    def __init__(self, model: Any, tokenizer: Any | None, transform: EvalTransform, name: str,
                 model_id: str, revision: str | None = None, feature: str = POOLED) -> None:
        super().__init__(model, transform, name, model_id, revision, tokenizer, feature=feature)
        if not getattr(model.config.vision_config, "vision_use_head", True):
            raise ConfigError(f"'{model_id}' has no attention-pooling head (vision_use_head=false): no image embedding")
        self.feature_dim = int(model.config.vision_config.hidden_size)
        self.naflex = type(model).__name__.startswith("Siglip2")
        self._frozen()

    def tower(self) -> nn.Module:
        return self.model.vision_model

    def stem(self) -> list[nn.Module]:
        return [self.tower().embeddings]

    def blocks(self) -> nn.ModuleList:
        return _blocks_of(self.tower())

    def top(self) -> list[nn.Module]:
        return [self.tower().post_layernorm, self.tower().head]

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        embeddings = self.tower().embeddings
        if not self.naflex:
            return embeddings(pixels.to(embeddings.patch_embedding.weight.dtype))
        patch = int(self.tower().config.patch_size)
        b, c, h, w = pixels.shape
        if h % patch or w % patch:
            raise ConfigError(f"SigLIP 2 NaFlex needs image sides divisible by the patch size {patch}, got {h}x{w}")
        # (B, C, H, W) -> (B, rows * cols, patch * patch * C), rows first, as Siglip2ImageProcessor
        patches = pixels.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 3, 5, 1)
        shapes = torch.tensor([[h // patch, w // patch]] * b, device=pixels.device)
        weight = embeddings.patch_embedding.weight
        return embeddings(patches.reshape(b, (h // patch) * (w // patch), -1).to(weight.dtype), shapes)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.tower().head(self.tower().post_layernorm(hidden))

    @torch.no_grad()
    def text_embeddings(self, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """docs/methods.md §1.1 on SigLIP: template-mean unit text embeddings, renormalised ->
        (C, feature_dim); prompts padded to the text tower's length and no attention mask, as
        SigLIP was trained (the text embedding is the last position's)."""
        text_cfg = self.model.config.text_config
        length = min(int(text_cfg.max_position_embeddings), int(getattr(self.tokenizer, "model_max_length", 64)))

        def embed(batch: dict[str, torch.Tensor]) -> Any:
            return self.model.get_text_features(input_ids=batch["input_ids"])

        per_class = template_mean_embeddings(embed, self.tokenizer, class_names, templates, self.device,
                                             self.name, padding="max_length", max_length=length)
        return F.normalize(per_class, dim=-1)


# --- loading -------------------------------------------------------------------------------------


def _square(size: int, mean: tuple, std: tuple, resample: str = "bicubic") -> EvalTransform:
    return EvalTransform(size=(size, size), crop_size=None, mean=mean, std=std, resample=resample)


def load_dinov2(name_or_path: str, revision: str | None = None, name: str | None = None,
                feature: str = POOLED, **model_kw: Any) -> DINOv2Backbone:
    """Load a DINOv2 checkpoint (hub id or folder) with its preprocessing."""
    from transformers import Dinov2Model

    model = load_model(Dinov2Model, name_or_path, revision, "DINOv2", **model_kw)
    size = int(model.config.image_size)  # no processor: DINOv2's eval (resize 256/224, crop, ImageNet stats)
    fallback = EvalTransform(size=size * 8 // 7, crop_size=(size, size), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    transform = image_transform(name_or_path, revision, fallback)
    model_id, resolved = weights_source(name_or_path, model, revision)
    return DINOv2Backbone(model, transform, name or model_id, model_id, resolved, feature)


def load_vit(name_or_path: str, revision: str | None = None, name: str | None = None,
             feature: str = POOLED, **model_kw: Any) -> ViTBackbone:
    """Load a ViT checkpoint (hub id or folder; a classification checkpoint loses its head)."""
    from transformers import ViTModel

    model = load_model(ViTModel, name_or_path, revision, "ViT", add_pooling_layer=False, **model_kw)
    fallback = _square(int(model.config.image_size), HALF, HALF, "bilinear")
    transform = image_transform(name_or_path, revision, fallback)
    model_id, resolved = weights_source(name_or_path, model, revision)
    return ViTBackbone(model, transform, name or model_id, model_id, resolved, feature)


def load_siglip(name_or_path: str, revision: str | None = None, name: str | None = None,
                feature: str = POOLED, **model_kw: Any) -> SiglipBackbone:
    """Load a SigLIP or fixed-resolution SigLIP 2 checkpoint with its tokenizer and preprocessing."""
    from transformers import SiglipModel

    model = load_model(SiglipModel, name_or_path, revision, "SigLIP", **model_kw)
    return _siglip(model, name_or_path, revision, name, feature, int(model.config.vision_config.image_size))


def load_siglip2(name_or_path: str, revision: str | None = None, name: str | None = None,
                 feature: str = POOLED, **model_kw: Any) -> SiglipBackbone:
    """Load a SigLIP 2 NaFlex checkpoint: square images of sqrt(num_patches) patches a side."""
    from transformers import Siglip2Model

    model = load_model(Siglip2Model, name_or_path, revision, "SigLIP 2", **model_kw)
    vision = model.config.vision_config
    side = int(vision.patch_size) * int(int(vision.num_patches) ** 0.5)
    return _siglip(model, name_or_path, revision, name, feature, side)


def _siglip(model: Any, name_or_path: str, revision: str | None, name: str | None, feature: str,
            side: int) -> SiglipBackbone:
    patch = int(model.config.vision_config.patch_size)
    transform = image_transform(name_or_path, revision, _square(side, HALF, HALF), patch_size=patch)
    tokenizer = load_tokenizer(name_or_path, revision)
    model_id, resolved = weights_source(name_or_path, model, revision)
    return SiglipBackbone(model, tokenizer, transform, name or model_id, model_id, resolved, feature)


HF_MODEL_TYPES.register("dinov2", load_dinov2)
HF_MODEL_TYPES.register("vit", load_vit)
HF_MODEL_TYPES.register("siglip", load_siglip)
HF_MODEL_TYPES.register("siglip2", load_siglip2)

register_presets({
    "dinov2_s14": ("facebook/dinov2-small", "DINOv2 ViT-S/14, self-supervised on LVD-142M: 384-d CLS features"),
    "dinov2_b14": ("facebook/dinov2-base", "DINOv2 ViT-B/14, self-supervised on LVD-142M: 768-d CLS features"),
    "dinov2_l14": ("facebook/dinov2-large", "DINOv2 ViT-L/14, self-supervised on LVD-142M: 1024-d CLS features"),
}, load_dinov2, "vit")
register_presets({
    "vit_b16_in21k": ("google/vit-base-patch16-224-in21k", "ViT-B/16 supervised on ImageNet-21k: 768-d CLS features"),
    "vit_l16_in21k": ("google/vit-large-patch16-224-in21k", "ViT-L/16 supervised on ImageNet-21k: 1024-d CLS features"),
    "vit_b16": ("google/vit-base-patch16-224", "ViT-B/16, ImageNet-21k then fine-tuned on ImageNet-1k: 768-d CLS features"),
}, load_vit, "vit")
register_presets({
    "siglip_b16": ("google/siglip-base-patch16-224", "SigLIP ViT-B/16 image-text model (WebLI), 224 px, with text prototypes"),
    "siglip_so400m14": ("google/siglip-so400m-patch14-384", "SigLIP So400m/14 image-text model (WebLI), 384 px, with text prototypes"),
    "siglip2_b16": ("google/siglip2-base-patch16-224", "SigLIP 2 ViT-B/16 image-text model, 224 px, with text prototypes"),
    "siglip2_so400m14": ("google/siglip2-so400m-patch14-384", "SigLIP 2 So400m/14 image-text model, 384 px, with text prototypes"),
}, load_siglip, "vit")
register_presets({
    "siglip2_b16_naflex": ("google/siglip2-base-patch16-naflex", "SigLIP 2 ViT-B/16 NaFlex, fed 256 px squares, with text prototypes"),
}, load_siglip2, "vit")
