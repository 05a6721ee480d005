"""Backbone base class and registry: a frozen image encoder that turns images into features.

A backbone is found by name with `load_backbone`: a preset from `BACKBONES` (tiny_clip,
clip_vit_b16, efficientnet_lite0, ...), a Hugging Face hub id, or a local folder saved with
`save_pretrained`; hub ids and folders are dispatched on their config's `model_type`
through `HF_MODEL_TYPES`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from longtail.config import call_with_options
from longtail.errors import ConfigError
from longtail.models.preprocess import EvalTransform
from longtail.registry import Registry

BACKBONES: Registry[Callable[..., Backbone]] = Registry("backbone")
"""Preset name -> factory(**kw) -> Backbone."""

HF_MODEL_TYPES: Registry[Callable[..., Backbone]] = Registry("Hugging Face model type")
"""`config.model_type` -> loader(name_or_path, revision=None, **kw) -> Backbone."""

# Modules whose import registers presets; imported lazily so `import longtail` stays light.
BUILTIN_MODULES = ("longtail.models.clip", "longtail.models.efficientnet")

PrototypeResult = tuple[torch.Tensor, "torch.Tensor | None"]


class Backbone(nn.Module):
    """A frozen image encoder; subclasses set the attributes and implement forward_features."""

    name: str = "backbone"
    feature_dim: int = 0
    has_text: bool = False
    model_id: str = ""  # where the weights come from (hub id, folder, or a code recipe)
    revision: str | None = None
    feature_kind: str = "features"  # what forward_features returns (e.g. "pooler_output")
    transform: EvalTransform  # the eval preprocessing

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed pixels -> (B, feature_dim) features."""
        raise NotImplementedError

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.forward_features(pixels)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The model's eval transform on a list of PIL images -> (B, 3, H, W) float tensor."""
        return self.transform(images)

    @property
    def device(self) -> torch.device:
        param = next(self.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    # --- classifier initialisation -------------------------------------------------------

    def text_embeddings(self, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """(C, feature_dim) unit rows embedding the class names; needs a text tower."""
        raise ConfigError(
            f"backbone '{self.name}' has no text tower; it cannot embed class names "
            "(use --prototypes none or a prototype file)"
        )

    @property
    def prototype_sources(self) -> tuple[str, ...]:
        """Names accepted by `prototypes(source=...)`; subclasses extend this tuple."""
        return ("text",) if self.has_text else ()

    @property
    def default_prototype_source(self) -> str | None:
        """What `longtail features` writes as prototypes when the user does not say."""
        return "text" if self.has_text else None

    def prototypes(
        self, class_names: Sequence[str], source: str = "text", **options: Any
    ) -> PrototypeResult:
        """Classifier initialisation (weights (C, d), bias (C,) or None) from `source`.

        The single hook `longtail features --prototypes` calls: "text" embeds the class names
        with `options["templates"]`; subclasses add sources (e.g. an ImageNet classifier map)
        by extending `prototype_sources` and handling them before calling super().
        """
        if source == "text" and self.has_text:
            from longtail.models.templates import get_templates

            templates = get_templates(options.get("templates", "lift"))
            return self.text_embeddings(class_names, templates), None
        choices = ", ".join(self.prototype_sources) or "none for this backbone"
        raise ConfigError(
            f"backbone '{self.name}' cannot make '{source}' prototypes; choose from: {choices}"
        )

    # --- caching -------------------------------------------------------------------------

    def cache_key(self) -> dict[str, Any]:
        """Everything the features depend on: weights origin and state, feature kind, preprocessing."""
        return {
            "backbone": self.name,
            "model_id": self.model_id,
            "revision": self.revision,
            "feature_kind": self.feature_kind,
            "preprocess": self.transform.to_dict(),
            "weights": self.weights_fingerprint(),
        }

    @torch.no_grad()
    def weights_fingerprint(self) -> str:
        """A cheap hash of every parameter/buffer (names, shapes, sums), so adapted or
        fine-tuned weights never hit a cache written by the original ones."""
        digest = hashlib.sha256()
        for key, tensor in self.state_dict().items():
            t = tensor.detach()
            d = t.double()
            stats = [d.sum().item(), d.square().sum().item()] if t.numel() else []
            digest.update(json.dumps([key, list(t.shape), str(t.dtype), stats]).encode())
        return digest.hexdigest()[:16]


def _import_builtins() -> None:
    """Import the modules that register presets."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def backbone_names() -> list[str]:
    _import_builtins()
    return BACKBONES.names()


def load_backbone(name: str, revision: str | None = None, **kw: Any) -> Backbone:
    """A preset name, a Hugging Face hub id ("owner/model"), or a local save_pretrained folder."""
    _import_builtins()
    if name in BACKBONES:
        if revision is not None:
            kw["revision"] = revision
        return call_with_options(BACKBONES.get(name), f"backbone '{name}'", **kw)
    path = Path(name).expanduser()
    if not path.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise ConfigError(f"backbone folder not found: {name}")
    if path.is_dir() or ("/" in name and not path.exists()):
        name = str(path) if path.is_dir() else name
        model_type = _hf_model_type(name, revision)
        return HF_MODEL_TYPES.get(model_type)(name, revision=revision, **kw)
    raise ConfigError(
        f"unknown backbone '{name}': not a preset ({', '.join(BACKBONES.names())}), "
        "a Hugging Face hub id or a model folder"
    )


def _hf_model_type(name: str, revision: str | None) -> str:
    """Read `model_type` from the config of a hub id or folder without loading weights."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, revision=revision)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load backbone '{name}': {str(err).splitlines()[0]}") from err
    return config.model_type
