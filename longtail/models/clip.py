"""CLIP backbones on Hugging Face `transformers.CLIPModel`: presets, hub/folder loading, tiny_clip.

The feature (backbone option `feature`) is "cls", the post-LayerNorm CLS token before the
visual projection (`pooler_output`, LIFT's choice, docs/methods.md §1.1; the default), or
"projected", that token through `visual_projection` (what CLIP and OpenCLIP call the image
embedding). The choice is the backbone's `feature_kind` ("pooler_output" | "image_embeds"),
so it is in the cache key and the feature file's meta; text prototypes follow it (mapped into
the pre-projection space for "cls", the text embeddings themselves for "projected").
`.model` is the HF `CLIPModel`, so adapters go into `.model.vision_model`.
Fine-tuning interface (models/backbone.py): stem = patch/position embeddings + pre-LayerNorm,
blocks = the encoder layers, top = the post-LayerNorm (on the CLS token; the visual projection
of "projected" is applied after it and never trained); hidden states are (B, tokens, width).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from longtail.errors import ConfigError
from longtail.models.backbone import BACKBONES, HF_MODEL_TYPES, PRESET_ARCH, Backbone
from longtail.models.hf_vision import (
    TEXT_BATCH,  # noqa: F401  (re-exported: the text batch size lives in hf_vision)
    image_transform,
    load_model,
    load_tokenizer,
    save_hf_folder,
    template_mean_embeddings,
    weights_source,
)
from longtail.models.preprocess import EvalTransform

PRESETS = {
    "clip_vit_b16": "openai/clip-vit-base-patch16",
    "clip_vit_b32": "openai/clip-vit-base-patch32",
    "clip_vit_l14": "openai/clip-vit-large-patch14",
    "clip_vit_l14_laion2b": "laion/CLIP-ViT-L-14-laion2B-s32B-b82K",
}
"""Preset name -> Hugging Face hub id (loaded with `from_pretrained`, never in tests)."""

FEATURES = {"cls": "pooler_output", "projected": "image_embeds"}  # option -> feature_kind


class CLIPBackbone(Backbone):
    """A CLIP model whose image features are the vision tower's `pooler_output` ("cls") or
    the projected image embedding ("projected")."""

    has_text = True
    arch = "vit"

    def __init__(
        self,
        model: Any,
        tokenizer: Any | None,
        transform: EvalTransform,
        name: str,
        model_id: str,
        revision: str | None = None,
        feature: str = "cls",
    ) -> None:
        super().__init__()
        if feature not in FEATURES:
            raise ConfigError(f"unknown CLIP feature '{feature}'; choose from: {', '.join(FEATURES)}")
        self.feature = feature
        self.feature_kind = FEATURES[feature]
        self.model = model
        self.tokenizer = tokenizer
        self.transform = transform
        self.name = name
        self.model_id = model_id
        self.revision = revision
        projected = feature == "projected"
        self.feature_dim = int(model.config.projection_dim if projected else model.config.vision_config.hidden_size)
        self.requires_grad_(False)  # frozen by default; fine-tuning code unfreezes what it trains
        self.eval()

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return self.model.visual_projection(pooled) if self.feature == "projected" else pooled

    # --- fine-tuning interface ------------------------------------------------------------
    def tuning_root(self) -> torch.nn.Module:
        return self.model.vision_model

    def stem(self) -> list[torch.nn.Module]:
        tower = self.model.vision_model
        return [tower.embeddings, tower.pre_layrnorm]

    def blocks(self) -> torch.nn.ModuleList:
        return self.model.vision_model.encoder.layers

    def top(self) -> list[torch.nn.Module]:
        return [self.model.vision_model.post_layernorm]

    def forward_prefix(self, pixels: torch.Tensor, depth: int) -> torch.Tensor:
        tower = self.model.vision_model
        return self.forward_between(tower.pre_layrnorm(tower.embeddings(pixels)), 0, depth)

    def forward_between(self, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for layer in self.blocks()[start:stop]:
            hidden = layer(hidden, None)
        return hidden

    def forward_from(self, hidden: torch.Tensor, depth: int) -> torch.Tensor:
        tower = self.model.vision_model
        hidden = self.forward_between(hidden, depth, self.num_blocks)
        pooled = tower.post_layernorm(hidden[:, 0, :])
        return self.model.visual_projection(pooled) if self.feature == "projected" else pooled

    @torch.no_grad()
    def text_embeddings(self, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """docs/methods.md §1.1: mean of unit text embeddings over templates, normalised; for
        "cls" features first mapped @ visual_projection.weight into the pre-projection space
        -> (C, feature_dim) float32 on the model's device."""
        per_class = template_mean_embeddings(lambda batch: self.model.get_text_features(**batch), self.tokenizer,
                                             class_names, templates, self.device, self.name)
        if self.feature == "projected":
            return F.normalize(per_class, dim=-1)
        return F.normalize(per_class @ self.model.visual_projection.weight.float(), dim=-1)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write model, tokenizer and image-processor config; `load_backbone(folder)` reads it."""
        return save_hf_folder(self.model, self.tokenizer, self.transform, folder)


def from_pretrained(
    name_or_path: str, revision: str | None = None, name: str | None = None, feature: str = "cls",
    **model_kw: Any,
) -> CLIPBackbone:
    """Load a CLIP checkpoint (hub id or local folder) with its tokenizer and preprocessing."""
    from transformers import CLIPModel

    model = load_model(CLIPModel, name_or_path, revision, "CLIP", **model_kw)
    tokenizer = load_tokenizer(name_or_path, revision)  # None for a vision-only save
    size = int(model.config.vision_config.image_size)  # no preprocessor config: CLIP's standard eval transform
    transform = image_transform(name_or_path, revision, EvalTransform(size=size, crop_size=(size, size)))
    model_id, resolved = weights_source(name_or_path, model, revision)
    return CLIPBackbone(model, tokenizer, transform, name or model_id, model_id, resolved, feature)


HF_MODEL_TYPES.register("clip", from_pretrained)
for _preset, _hub_id in PRESETS.items():
    BACKBONES.register(_preset, partial(from_pretrained, _hub_id, name=_preset))
    PRESET_ARCH[_preset] = "vit"


# --- tiny_clip: a small random CLIP for tests and offline demos ------------------------------


def tiny_tokenizer(max_length: int = 77) -> Any:
    """An offline CLIP tokenizer: byte-level BPE over the 256 byte symbols, no merges."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_clip(
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    projection_dim: int = 16,
    num_layers: int = 2,
    revision: str | None = None,
    feature: str = "cls",
) -> CLIPBackbone:
    """A randomly initialised (seeded, deterministic) CLIP with a working offline tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    if revision is not None:
        raise ConfigError("tiny_clip is built in code and has no revisions")
    if not 1 <= patch_size <= image_size:
        raise ConfigError(f"tiny_clip needs 1 <= patch_size <= image_size, got patch_size {patch_size}, "
                          f"image_size {image_size}")
    tokenizer = tiny_tokenizer()
    common = dict(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        projection_dim=projection_dim,
    )
    text = dict(
        common,
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(common, image_size=image_size, patch_size=patch_size)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    transform = EvalTransform(size=image_size, crop_size=(image_size, image_size))
    recipe = f"tiny_clip(seed={seed},image={image_size},patch={patch_size},hidden={hidden_size},proj={projection_dim},layers={num_layers})"
    return CLIPBackbone(model, tokenizer, transform, "tiny_clip", recipe, feature=feature)


BACKBONES.register("tiny_clip", tiny_clip)
PRESET_ARCH["tiny_clip"] = "vit"
