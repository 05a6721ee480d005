"""What every Hugging Face `transformers` backbone shares: hub presets with their own one-line
descriptions, the eval transform read from an image processor, where the weights came from,
template-averaged text embeddings, the saved image processor, and the fine-tuning interface of
an encoder whose blocks are a `ModuleList` of layers taking (hidden, mask) (`HFEncoderBackbone`).

CLIP (clip.py), DINOv2 / ViT / SigLIP (hf_vit.py) and ConvNeXt (hf_convnext.py) build on it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from longtail.errors import ConfigError
from longtail.models.backbone import BACKBONES, PRESET_ARCH, Backbone
from longtail.models.preprocess import EvalTransform
from longtail.models.templates import fill_templates

TEXT_BATCH = 256  # prompts per text-encoder forward; bounds memory for 8142 classes x 60 templates
POOLED = "cls"  # the `feature` option of DINOv2 / ViT / SigLIP / ConvNeXt: the model's pooled output
# (the name recorded.backbone_options passes for feature_kind "pooler_output")


def check_feature(feature: str) -> None:
    """One-line error for a `feature` option other than the pooled output."""
    if feature != POOLED:
        raise ConfigError(f"unknown feature '{feature}' for this backbone; choose from: {POOLED} "
                          "(the model's pooled output)")


class HubPreset:
    """A preset name bound to one hub checkpoint; `longtail list` shows its own description."""

    def __init__(self, loader: Callable[..., Backbone], hub_id: str, name: str, description: str) -> None:
        self.loader, self.hub_id, self.name = loader, hub_id, name
        self.__doc__ = f"{description} ({hub_id})"
        params = [p for p in inspect.signature(loader).parameters.values()  # no **kw: a typo fails before a download
                  if p.name not in ("name_or_path", "name") and p.kind is not p.VAR_KEYWORD]
        self.__signature__ = inspect.Signature(params)  # so unknown options are named errors

    def __call__(self, **kw: Any) -> Backbone:
        return self.loader(self.hub_id, name=self.name, **kw)


def register_presets(presets: dict[str, tuple[str, str]], loader: Callable[..., Backbone], arch: str) -> None:
    """Register name -> (hub id, description) presets of one loader in BACKBONES / PRESET_ARCH."""
    for name, (hub_id, description) in presets.items():
        BACKBONES.register(name, HubPreset(loader, hub_id, name, description))
        PRESET_ARCH[name] = arch


def image_transform(name_or_path: str, revision: str | None, fallback: EvalTransform,
                    patch_size: int | None = None) -> EvalTransform:
    """The eval transform of the checkpoint's image processor; `fallback` when it has none.

    Also reads ConvNeXt's `crop_pct` (shorter side to size / crop_pct, centre crop size; from
    384 px a plain resize) and SigLIP 2 NaFlex's `max_num_patches` (a square of whole patches)."""
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        proc, _ = ImageProcessingMixin.get_image_processor_dict(name_or_path, revision=revision)
    except OSError:  # no preprocessor_config.json (e.g. a bare save_pretrained folder)
        return fallback
    size = proc.get("size")
    if proc.get("crop_pct") and isinstance(size, dict) and "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        size_out: int | tuple[int, int] = int(edge / float(proc["crop_pct"])) if edge < 384 else (edge, edge)
        proc = {**proc, "size": size_out if isinstance(size_out, int) else dict(zip(("height", "width"), size_out)),
                "do_center_crop": edge < 384, "crop_size": {"height": edge, "width": edge}}
    elif proc.get("max_num_patches") and size is None:
        patch = int(proc.get("patch_size") or patch_size or 16)
        side = patch * int(int(proc["max_num_patches"]) ** 0.5)
        proc = {**proc, "size": {"height": side, "width": side}, "do_center_crop": False}
    return EvalTransform.from_image_processor(proc)


def weights_source(name_or_path: str, model: Any, revision: str | None) -> tuple[str, str | None]:
    """(model_id, revision): a folder's resolved path, or the hub id and its resolved commit."""
    local = Path(name_or_path).is_dir()
    model_id = str(Path(name_or_path).resolve()) if local else name_or_path
    resolved = getattr(model.config, "_commit_hash", None) if not local else None
    return model_id, resolved or revision


def load_tokenizer(name_or_path: str, revision: str | None) -> Any | None:
    """The checkpoint's tokenizer, or None for a vision-only save (text_embeddings then says so)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    except (OSError, ValueError, TypeError):
        return None


def load_model(cls: Any, name_or_path: str, revision: str | None, what: str, **model_kw: Any) -> Any:
    """`cls.from_pretrained`, with a load failure as one ConfigError line."""
    try:
        return cls.from_pretrained(name_or_path, revision=revision, **model_kw)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load {what} '{name_or_path}': {str(err).splitlines()[0]}") from err


def template_mean_embeddings(
    embed: Callable[[dict[str, torch.Tensor]], Any], tokenizer: Any, class_names: Sequence[str],
    templates: Sequence[str], device: torch.device, name: str, **tokenizer_kw: Any,
) -> torch.Tensor:
    """docs/methods.md §1.1: per class, the mean over templates of unit text embeddings
    (C, d) float32, not yet renormalised; `embed(batch)` runs the text tower (a tensor, or a
    model output whose pooler_output is the embedding, as transformers >= 5 returns)."""
    if tokenizer is None:
        raise ConfigError(f"backbone '{name}' has no tokenizer; cannot embed class names")
    if not class_names:
        raise ConfigError("no class names to embed")
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise ConfigError(f"every template needs a '{{}}' for the class name, got {bad or 'none'}")
    prompts = [p for c in class_names for p in fill_templates(c, templates)]
    tokens = tokenizer(prompts, truncation=True, return_tensors="pt", **{"padding": True, **tokenizer_kw})
    tokens = {k: v.to(device) for k, v in tokens.items()}
    chunks = []
    for start in range(0, len(prompts), TEXT_BATCH):
        out = embed({k: v[start : start + TEXT_BATCH] for k, v in tokens.items()})
        emb = out if isinstance(out, torch.Tensor) else out.pooler_output
        chunks.append(F.normalize(emb.float(), dim=-1))
    return torch.cat(chunks).view(len(class_names), len(templates), -1).mean(dim=1)


def write_image_processor(transform: EvalTransform, folder: Path) -> None:
    """A `CLIPImageProcessor` config doing `transform` (read back by `image_transform`)."""
    from transformers import CLIPImageProcessor

    t = transform
    size = {"shortest_edge": t.size} if isinstance(t.size, int) else dict(zip(("height", "width"), t.size))
    CLIPImageProcessor(
        size=size,
        do_center_crop=t.crop_size is not None,
        crop_size=dict(zip(("height", "width"), t.crop_size or (0, 0))),
        image_mean=list(t.mean),
        image_std=list(t.std),
        resample=Image.Resampling[t.resample.upper()],
    ).save_pretrained(folder)


def save_hf_folder(model: Any, tokenizer: Any | None, transform: EvalTransform, folder: str | Path) -> Path:
    """Write a transformers model (+ its tokenizer) and an image-processor config for `transform`:
    the folder `load_backbone(folder)` reads back (every HF-backed backbone's `save_pretrained`)."""
    folder = Path(folder)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    write_image_processor(transform, folder)
    return folder


def run_layer(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """One encoder layer without a mask (every token valid); transformers 4.x returns a tuple."""
    out = layer(hidden, None)
    return out[0] if isinstance(out, tuple) else out


class HFEncoderBackbone(Backbone):
    """A frozen `transformers` image encoder exposed through the fine-tuning interface.

    Subclasses name the parts: `tower()` (the vision model: adapters' tuning root), `stem()`,
    `blocks()`, `top()`, `embed(pixels)` (the stem's forward) and `pool(hidden)` (the top's forward,
    -> (B, feature_dim)). `forward_features` is the same path as `forward_from(forward_prefix(x, 0), 0)`,
    so the frozen-prefix cache equals the whole forward exactly."""

    def __init__(self, model: Any, transform: EvalTransform, name: str, model_id: str,
                 revision: str | None = None, tokenizer: Any | None = None, feature: str = POOLED) -> None:
        check_feature(feature)
        super().__init__()
        self.feature = feature
        self.model = model
        self.tokenizer = tokenizer
        self.transform = transform
        self.name = name
        self.model_id = model_id
        self.revision = revision

    def _frozen(self) -> None:
        """Frozen and in eval mode by default; fine-tuning code unfreezes what it trains."""
        self.requires_grad_(False)
        self.eval()

    def tower(self) -> nn.Module:
        return self.model

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def tuning_root(self) -> nn.Module:
        return self.tower()

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.forward_prefix(pixels, 0), 0)

    def forward_prefix(self, pixels: torch.Tensor, depth: int) -> torch.Tensor:
        return self.forward_between(self.embed(pixels), 0, depth)

    def forward_between(self, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for layer in self.blocks()[start:stop]:
            hidden = run_layer(layer, hidden)
        return hidden

    def forward_from(self, hidden: torch.Tensor, depth: int) -> torch.Tensor:
        return self.pool(self.forward_between(hidden, depth, self.num_blocks))

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the model (+ tokenizer) and an image-processor config; `load_backbone(folder)` reads it."""
        return save_hf_folder(self.model, self.tokenizer, self.transform, folder)
