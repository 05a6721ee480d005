"""Backbone base class and registry: a frozen image encoder that turns images into features.

Fine-tuning talks to every backbone through one small interface (docs/methods.md, "Fine-tuning
any backbone"): `arch` ("vit" | "cnn"), `tuning_root()` (the module whose parameter names the
adapter handle records), `stem()` / `blocks()` / `top()` (the ordered parts: modules before the
first block, the blocks, modules after the last block up to the pooled feature),
`forward_prefix(pixels, depth)` (stem + the first `depth` blocks), `forward_from(hidden, depth)`
(the remaining blocks and the top, pooled), `norm_layers()`, `bias_parameters()`, and the
preprocessing `transform`. `forward_from(forward_prefix(x, d), d) == forward_features(x)` for
every depth d, which the frozen-prefix cache relies on.

A backbone is found by name with `load_backbone`: a preset from `BACKBONES` (tiny_clip,
clip_vit_b16, efficientnet_lite0, dinov2_b14, siglip_b16, convnext_t, vit_b16_in21k, ...), a Hugging Face hub id, or a local folder saved with
`save_pretrained`; hub ids and folders are dispatched on their config's `model_type`
through `HF_MODEL_TYPES`. The families (clip, efficientnet, hf_vit, hf_convnext) register into
these when `longtail.models` is imported (its `__init__`), which any import of this module does.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
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

PRESET_ARCH: dict[str, str] = {}
"""Preset name -> arch ("vit" | "cnn"), so configs can check adapters before loading weights."""

PrototypeResult = tuple[torch.Tensor, "torch.Tensor | None"]
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
UPDATE_STATS = "longtail_update_stats"  # attribute set on a BatchNorm whose statistics may train


def keep_norm_stats_frozen(module: nn.Module) -> None:
    """Put every BatchNorm under `module` in eval mode unless an adapter allowed its statistics
    to update (`setattr(bn, UPDATE_STATS, True)`, the `update_bn_stats` option). Frozen
    statistics are the default for fine-tuning: small, class-imbalanced batches give noisy,
    head-dominated estimates, and eval-mode BatchNorm trains exactly what is evaluated."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not getattr(m, UPDATE_STATS, False):
            m.eval()


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

    # --- the fine-tuning interface (module docstring) -------------------------------------

    arch: str = "generic"  # "vit" | "cnn": which adapters fit (ViT-only ones need "vit")

    def tuning_root(self) -> nn.Module:
        """The module adapters attach to; trainable parameter names are relative to it."""
        raise ConfigError(f"backbone '{self.name}' does not expose blocks for fine-tuning")

    def stem(self) -> list[nn.Module]:
        """Modules before the first block (patch/conv stem, pre-norm)."""
        raise ConfigError(f"backbone '{self.name}' does not expose blocks for fine-tuning")

    def blocks(self) -> nn.ModuleList:
        """The ordered blocks (ViT: encoder layers; CNN: residual blocks)."""
        raise ConfigError(f"backbone '{self.name}' does not expose blocks for fine-tuning")

    def top(self) -> list[nn.Module]:
        """Modules after the last block up to the pooled feature (post-norm, head conv + BN)."""
        raise ConfigError(f"backbone '{self.name}' does not expose blocks for fine-tuning")

    @property
    def num_blocks(self) -> int:
        return len(self.blocks())

    def forward_prefix(self, pixels: torch.Tensor, depth: int) -> torch.Tensor:
        """Stem + the first `depth` blocks: (B, 3, H, W) -> the hidden state after block depth."""
        raise ConfigError(f"backbone '{self.name}' does not expose blocks for fine-tuning")

    def forward_from(self, hidden: torch.Tensor, depth: int) -> torch.Tensor:
        """Blocks depth.. and the top on a hidden state from `forward_prefix(., depth)` -> (B, d)."""
        raise ConfigError(f"backbone '{self.name}' does not expose blocks for fine-tuning")

    def forward_between(self, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Blocks start..stop-1 on the hidden state after block `start` -> the state after `stop`
        (a deeper prefix-cache entry from a shallower one)."""
        raise ConfigError(f"backbone '{self.name}' does not expose blocks for fine-tuning")

    def feature_modules(self) -> list[nn.Module]:
        """stem + blocks + top: every module the feature depends on (what `full` trains)."""
        return [*self.stem(), *self.blocks(), *self.top()]

    def norm_layers(self) -> list[nn.Module]:
        """LayerNorm / BatchNorm / GroupNorm modules of the feature path, in order."""
        return [m for part in self.feature_modules() for m in part.modules() if isinstance(m, NORM_TYPES)]

    def bias_parameters(self) -> list[nn.Parameter]:
        """Every bias of the feature path (BitFit); a CNN without conv biases: its BN shifts."""
        return [p for part in self.feature_modules() for n, p in part.named_parameters()
                if n.rsplit(".", 1)[-1] == "bias"]

    @torch.no_grad()
    def prefix_fingerprint(self, depth: int) -> str:
        """`weights_fingerprint` of the stem and the first `depth` blocks only: a cached prefix
        stays valid whatever the later blocks and the head hold."""
        return _fingerprint(self._prefix_state(depth))

    def _prefix_state(self, depth: int) -> dict[str, torch.Tensor]:
        return nn.ModuleList([*self.stem(), *list(self.blocks())[:depth]]).state_dict()

    # --- classifier initialisation -------------------------------------------------------

    def text_embeddings(self, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """(C, feature_dim) unit rows embedding the class names; needs a text tower."""
        raise ConfigError(
            f"backbone '{self.name}' has no text tower; it cannot embed class names "
            "(no text prototypes: give class prototypes of your own, or none)"
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
        """A hash of every parameter/buffer's name, dtype, shape and bytes (`_fingerprint`), so
        adapted or fine-tuned weights never hit a cache written by the original ones, and the
        same weights give the same key in any process, at any thread count, on CPU or GPU."""
        return _fingerprint(self.state_dict())

    @torch.no_grad()
    def legacy_fingerprints(self, depths: Sequence[int | None] = (None,)) -> Iterator[dict[int | None, str]]:
        """The fingerprints of the old scheme (`_legacy_fingerprint`: float64 sums, which depend
        on torch's thread count), at this process's thread count first, then at the other
        counts a run may have used (`_legacy_thread_counts`): one {depth: fingerprint} per
        distinct result, for each of `depths` (None: `weights_fingerprint`, d:
        `prefix_fingerprint(d)`). For finding cache entries written before the byte
        fingerprints: an entry whose key matches one of these was written from weights whose
        sums, computed the same way, are these weights' sums (the old scheme's own guarantee)."""
        states = {d: self.state_dict() if d is None else self._prefix_state(d) for d in depths}
        yield from _legacy_fingerprints(states)


FINGERPRINT = "sha256-bytes"
"""What `weights_fingerprint` / `prefix_fingerprint` hash (recorded in cache metas, so a later
change of scheme can tell which entries it can read)."""

LEGACY_GRAIN = 32768  # torch's GRAIN_SIZE: a CPU sum of fewer elements runs on one thread, in one order


def _fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over each tensor's name, dtype, shape and raw bytes, in name order, cut to 16 hex.

    The bytes are the tensor's elements in row-major order, read from a contiguous CPU copy
    (a CUDA tensor is copied to the host, a strided view made contiguous, a conjugate or
    negative view resolved; bf16, fp8 and bool as their bytes): no float arithmetic, so the
    digest is the same at any thread count, in any process, on CPU or GPU. The element bytes are
    the machine's own order; every platform torch supports is little-endian (assumed).
    About 0.13 s per 100 MB of weights on one core.
    """
    digest = hashlib.sha256(FINGERPRINT.encode())
    for key in sorted(state):
        t = state[key].detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        digest.update(json.dumps([key, str(t.dtype), list(t.shape)]).encode())
        t = t.to("cpu").resolve_conj().resolve_neg().contiguous()
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def _legacy_stats(t: torch.Tensor) -> list[float]:
    d = t.double()
    return [d.sum().item(), d.square().sum().item()] if t.numel() else []


def _legacy_fingerprint(state: dict[str, torch.Tensor], stats: Callable[[torch.Tensor], list[float]] = _legacy_stats) -> str:
    """The fingerprint before byte hashing: names, shapes, dtypes, float64 sums and sums of
    squares, hashed. The sums' last bits depend on how torch splits the reduction across
    threads (and on the device), so the same weights gave other keys at other thread counts;
    kept only to find cache entries written that way (`Backbone.legacy_fingerprints`)."""
    digest = hashlib.sha256()
    for key, tensor in state.items():
        t = tensor.detach()
        digest.update(json.dumps([key, list(t.shape), str(t.dtype), stats(t)]).encode())
    return digest.hexdigest()[:16]


def _legacy_thread_counts() -> list[int]:
    """This process's thread count, then the counts other runs plausibly used: 1 (torchrun's
    default per process), 2..8, the cores (all, half: torch's default is the physical ones),
    and powers of two up to the core count."""
    cpus = os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    env = os.environ.get("OMP_NUM_THREADS", "")
    counts = [torch.get_num_threads(), *([int(env)] if env.isdigit() else []), *range(1, 9), cpus, cpus // 2,
              allowed, allowed // 2, *(2 ** k for k in range(4, 9) if 2 ** k <= cpus)]
    return [c for c in dict.fromkeys(counts) if 1 <= c <= 256]


def _legacy_fingerprints(states: dict[Any, dict[str, torch.Tensor]]) -> Iterator[dict[Any, str]]:
    """{label: `_legacy_fingerprint(state)`} at each of `_legacy_thread_counts`, each distinct
    result once; the thread count is set only while computing and restored before each yield.
    Sums of tensors below LEGACY_GRAIN elements or off the CPU do not depend on it and are
    computed once."""
    fixed: dict[tuple, list[float]] = {}

    def ident(t: torch.Tensor) -> tuple:
        return (str(t.device), t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)

    def stats(t: torch.Tensor) -> list[float]:
        if t.device.type != "cpu" or t.numel() < LEGACY_GRAIN:
            key = ident(t)
            if key not in fixed:
                fixed[key] = _legacy_stats(t)
            return fixed[key]
        return _legacy_stats(t)

    threads_matter = any(t.device.type == "cpu" and t.numel() >= LEGACY_GRAIN
                         for state in states.values() for t in state.values())
    before, seen = torch.get_num_threads(), set()
    for count in _legacy_thread_counts() if threads_matter else [before]:
        try:
            torch.set_num_threads(count)
            found = {label: _legacy_fingerprint(state, stats) for label, state in states.items()}
        finally:
            torch.set_num_threads(before)
        signature = tuple(sorted(found.items(), key=str))
        if signature not in seen:
            seen.add(signature)
            yield found


def preset_arch(name: str) -> str | None:
    """The architecture of a preset backbone without loading it (None: not a known preset)."""
    return PRESET_ARCH.get(name)


def backbone_names() -> list[str]:
    """Every preset name (the families register them when `longtail.models` is imported)."""
    return BACKBONES.names()


def load_backbone(name: str, revision: str | None = None, **kw: Any) -> Backbone:
    """A preset name, a Hugging Face hub id ("owner/model"), or a local save_pretrained folder."""
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
