"""Adapter configs, the adapter registry and the handle that `inject_adapter` returns.

Adapters are injected in place, with submodules and forward hooks, so the backbone's own
forward (and its state-dict keys) stay untouched. Two families: ViT-only adapters (AdaptFormer,
SG-Adapter, VPT, LoRA, SSF) reach into a Hugging Face ViT-like vision tower (`VisionParts`: CLIP,
SigLIP / SigLIP 2, DINOv2, ViT), whose block names one `BlockLayout` of `LAYOUTS` describes;
generic tuning modes (`generic = True`: none, bitfit, norm-tuning, partial, full) only choose
which weights train and work on any backbone through the fine-tuning interface of
`longtail.models.backbone.Backbone` (`TuningParts`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from longtail.errors import ConfigError, DataError
from longtail.models.adapters.layouts import (  # noqa: F401  (re-exported)
    LAYOUTS,
    BlockLayout,
    VisionParts,
    block_layout,
    locate_vision,
)
from longtail.models.backbone import UPDATE_STATS
from longtail.registry import Registry

ADAPTERS: Registry = Registry("adapter")


def register_adapter(name: str) -> Callable[[type], type]:
    """Class decorator: register an AdapterConfig subclass under `name` and record the name on it."""

    def deco(cls: type) -> type:
        cls.name = name
        ADAPTERS.register(name, cls)
        return cls

    return deco


def lift_bottleneck(num_classes: int, num_layers: int) -> int:
    """LIFT's bottleneck rule r = 2^max(0, floor(log2(C / (2L)))), in exact integer arithmetic."""
    if num_classes < 1 or num_layers < 1:
        raise ConfigError(f"lift_bottleneck needs num_classes >= 1 and num_layers >= 1, got {num_classes}, {num_layers}")
    # For x = C/(2L) >= 1, floor(log2 x) == floor(log2 floor(x)) because powers of two are integers.
    ratio = num_classes // (2 * num_layers)
    return 1 << (ratio.bit_length() - 1) if ratio >= 1 else 1


@dataclass(frozen=True)
class TuningParts:
    """What generic tuning modes see of a backbone: its ordered parts, norms and biases."""

    root: nn.Module  # the handle's module: trainable names are relative to it
    stem: tuple[nn.Module, ...]
    blocks: nn.ModuleList
    top: tuple[nn.Module, ...]
    norms: tuple[nn.Module, ...]
    biases: tuple[nn.Parameter, ...]
    arch: str = "vit"

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @classmethod
    def of_backbone(cls, backbone: Any) -> TuningParts:
        """From the interface of a `longtail.models.backbone.Backbone`."""
        return cls(backbone.tuning_root(), tuple(backbone.stem()), backbone.blocks(), tuple(backbone.top()),
                   tuple(backbone.norm_layers()), tuple(backbone.bias_parameters()), backbone.arch)

    @classmethod
    def of_vision(cls, parts: VisionParts) -> TuningParts:
        """From an HF CLIP vision tower (the same parts CLIPBackbone's interface names)."""
        tower = parts.tower
        if not hasattr(tower, "pre_layrnorm"):
            raise ConfigError(f"generic tuning modes on a bare {type(tower).__name__} need its longtail "
                              "backbone (load_backbone), which names its stem and top")
        stem, top = (tower.embeddings, tower.pre_layrnorm), (tower.post_layernorm,)
        modules = [*stem, *parts.layers, *top]
        norms = tuple(m for part in modules for m in part.modules() if isinstance(m, nn.LayerNorm))
        biases = tuple(p for part in modules for n, p in part.named_parameters() if n.rsplit(".", 1)[-1] == "bias")
        return cls(tower, stem, parts.layers, top, norms, biases, "vit")


def adapters_for(arch: str) -> list[str]:
    """Names of the adapters that work on a backbone of this architecture ("vit" | "cnn" | ...)."""
    return [n for n in ADAPTERS.names() if arch == "vit" or getattr(ADAPTERS.get(n), "generic", False)]


def check_adapter_fits(backbone: Any, name: str) -> None:
    """One-line ConfigError when adapter `name` cannot work on `backbone` (a ViT-only adapter on
    a CNN), naming the adapters that fit; raised before any head init or training."""
    arch = getattr(backbone, "arch", "generic")
    if arch == "vit" or getattr(ADAPTERS.get(name), "generic", False):
        return
    raise ConfigError(f"adapter '{name}' needs a ViT backbone (CLIP, SigLIP, DINOv2, ViT); for '{getattr(backbone, 'name', arch)}' "
                      f"({arch}) choose one of: {', '.join(adapters_for(arch))}")


def _coerce(name: str, key: str, value: Any, default: Any) -> Any:
    """Turn CLI strings into the type of the field's default ("8" -> 8, "q_proj,v_proj" -> tuple)."""
    if not isinstance(value, str) or isinstance(default, str) and default != "auto":
        return tuple(value) if isinstance(default, tuple) and isinstance(value, list) else value
    text = value.strip()
    try:
        if isinstance(default, bool):
            if text.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError(text)
            return text.lower() in {"true", "1", "yes"}
        if isinstance(default, tuple):
            return tuple(part.strip() for part in text.split(",") if part.strip())
        if isinstance(default, int) or default == "auto":
            return text if text == "auto" else int(text)
        if isinstance(default, float) or default is None:  # None defaults are optional numbers
            return None if text.lower() == "none" else float(text)
    except ValueError:
        raise ConfigError(f"adapter '{name}': option {key}={value!r} is not a valid {type(default).__name__}") from None
    return value


@dataclass
class AdapterConfig:
    """Base of every adapter config: plain fields with defaults; subclasses implement `inject`."""

    name: ClassVar[str] = ""
    can_disable: ClassVar[bool] = True  # False when the adapter edits backbone weights in place
    generic: ClassVar[bool] = False  # True: works on any backbone (gets TuningParts, not VisionParts)
    cacheable_depth: ClassVar[bool] = False  # True: frozen_depth() says how many blocks stay frozen

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError on an out-of-range field (override in subclasses)."""

    def inject(self, parts: VisionParts, num_classes: int, handle: AdapterHandle) -> None:
        """Add modules/hooks to `parts` (registering them on `handle`) and mark trainable params."""
        raise NotImplementedError

    def frozen_depth(self, num_blocks: int) -> int | None:
        """Blocks 0..depth-1 (and the stem) stay exactly frozen, BatchNorm in eval: their output
        can be cached (the frozen-prefix cache). None: no frozen prefix (the default)."""
        return None

    def handle_class(self) -> type[AdapterHandle]:
        return AdapterHandle

    def to_dict(self) -> dict[str, Any]:
        """The resolved config for run metadata (config.yaml)."""
        return {"name": self.name, **dataclasses.asdict(self)}

    def _check(self, ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(f"adapter '{self.name}': {message}")

    def _check_r(self, r: int | str) -> None:
        self._check(r == "auto" or (isinstance(r, int) and not isinstance(r, bool) and r >= 1),
                    f"r must be 'auto' or a positive integer, got {r!r}")


def resolve_r(r: int | str, num_classes: int, num_layers: int) -> int:
    """A bottleneck width: the LIFT rule for "auto", else the given integer."""
    return lift_bottleneck(num_classes, num_layers) if r == "auto" else int(r)


def make_adapter_config(name: str, **overrides: Any) -> AdapterConfig:
    """Build the named adapter's config; unknown options raise a ConfigError listing valid ones."""
    cls = ADAPTERS.get(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        valid = ", ".join(fields) or "(none)"
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for adapter '{name}'; valid: {valid}")
    values = {}
    for key, value in overrides.items():
        f = fields[key]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        values[key] = _coerce(name, key, value, default)
    return cls(**values)


@dataclass
class AdapterState:
    """Runtime state shared by an adapter's hooks: on/off switch and the SG text vector."""

    enabled: bool = True
    text: Tensor | None = None
    text_dim: int | None = None  # set by adapters that consume a text vector


class AdapterHandle:
    """What `inject_adapter` returns: the adapter's trainable tensors, checkpoint I/O and undo."""

    def __init__(self, model: nn.Module, config: AdapterConfig, requires_grad_before: dict[str, bool]) -> None:
        self.model = model
        self.config = config
        self.state = AdapterState()
        self._hooks: list[RemovableHandle] = []
        self._added: list[tuple[nn.Module, str]] = []
        self._requires_grad_before = requires_grad_before
        self._trainable_names: tuple[str, ...] = ()
        self._removed = False

    # ---- used by adapter families while injecting ----
    def add_module(self, parent: nn.Module, attr: str, module: nn.Module) -> nn.Module:
        """Attach `module` as `parent.<attr>` so .to()/.train()/state_dict see it; undone by remove()."""
        if hasattr(parent, attr):
            raise ConfigError(f"{type(parent).__name__} already has '{attr}': remove the previous adapter first")
        ref = next(iter(parent.parameters()), None)
        if ref is not None:  # trainable adapter weights stay float32 even on a half-precision backbone
            module.to(device=ref.device)
        parent.add_module(attr, module)
        self._added.append((parent, attr))
        return module

    def add_hook(self, removable: RemovableHandle) -> None:
        self._hooks.append(removable)

    def _finalize(self) -> None:
        self._trainable_names = tuple(n for n, p in self.model.named_parameters() if p.requires_grad)

    # ---- public API ----
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The adapter's trainable parameters (the classifier belongs to the trainer)."""
        params = dict(self.model.named_parameters())
        return [params[n] for n in self._trainable_names]

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        params = dict(self.model.named_parameters())
        return ((n, params[n]) for n in self._trainable_names)

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Only what must be checkpointed, keyed by parameter name inside the vision model."""
        return {n: p.detach() for n, p in self.named_trainable_parameters()}

    def load_trainable_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Strict load: the key set and every shape must match `trainable_state_dict()`."""
        expected = dict(self.named_trainable_parameters())
        missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
        if missing or unexpected:
            raise DataError(
                f"adapter '{self.config.name}' checkpoint does not match: {len(missing)} missing "
                f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
            )
        for key, param in expected.items():
            if tuple(state_dict[key].shape) != tuple(param.shape):
                raise DataError(
                    f"adapter '{self.config.name}' checkpoint: '{key}' has shape {tuple(state_dict[key].shape)}, expected {tuple(param.shape)}"
                )
        with torch.no_grad():
            for key, param in expected.items():
                param.copy_(state_dict[key])

    def set_text_vector(self, w_bar: Tensor | None) -> None:
        """SG-Adapter: the current mean classifier row (d,), set before every forward; no-op otherwise.

        Gradients flow from the adapter output into `w_bar` unless the config says detach_text.
        """
        if self.state.text_dim is None:
            return
        if w_bar is not None and tuple(w_bar.shape) != (self.state.text_dim,):
            raise DataError(f"text vector must have shape ({self.state.text_dim},), got {tuple(w_bar.shape)}")
        self.state.text = w_bar

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the vision model as the frozen backbone (e.g. Sage's zero-shot pass) inside this block."""
        if not self.config.can_disable:
            raise ConfigError(f"adapter '{self.config.name}' edits backbone weights in place and cannot be disabled")
        self._set_enabled(False)
        try:
            yield
        finally:
            self._set_enabled(True)

    def _set_enabled(self, flag: bool) -> None:
        self.state.enabled = flag

    def remove(self) -> None:
        """Undo the injection: drop hooks and added modules, restore requires_grad flags.

        In-place methods (BitFit, LN tuning, partial/full) keep their trained values.
        """
        if self._removed:
            return
        for hook in self._hooks:
            hook.remove()
        for parent, attr in reversed(self._added):
            delattr(parent, attr)
        self._restore_requires_grad()
        for module in self.model.modules():  # BatchNorm statistics frozen again
            if hasattr(module, UPDATE_STATS):
                delattr(module, UPDATE_STATS)
        self.state.text = None  # drop the reference to the classifier's graph
        self._removed = True

    def _restore_requires_grad(self) -> None:
        for name, param in self.model.named_parameters():
            param.requires_grad_(self._requires_grad_before.get(name, False))


def inject_adapter(target: nn.Module, cfg: AdapterConfig | str, num_classes: int) -> AdapterHandle:
    """Freeze the backbone's tuning root, inject the adapter in place, and return its handle.

    `target`: a `longtail.models.backbone.Backbone` (any architecture its adapters fit), or an
    HF CLIPVisionModel (or CLIPModel / CLIPModel.vision_model). `num_classes` feeds the LIFT
    bottleneck rule for adapters whose r is "auto".
    """
    if isinstance(cfg, str):
        cfg = make_adapter_config(cfg)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if hasattr(target, "tuning_root"):  # a Backbone: through its fine-tuning interface
        check_adapter_fits(target, cfg.name)
        vision_model = target.tuning_root()
        parts: Any = TuningParts.of_backbone(target) if cfg.generic else locate_vision(vision_model)
    else:
        vision_model = target
        parts = locate_vision(vision_model)
        parts = TuningParts.of_vision(parts) if cfg.generic else parts
    before = {n: p.requires_grad for n, p in vision_model.named_parameters()}
    vision_model.requires_grad_(False)
    handle = cfg.handle_class()(vision_model, cfg, before)
    try:
        cfg.inject(parts, num_classes, handle)
    except Exception:
        handle.remove()
        raise
    handle._finalize()
    return handle


class ParallelToMLP:
    """Adds `adapter(f_tilde)` to a block's MLP branch, with f_tilde the stream after attention.

    HF's CLIPEncoderLayer computes out = f_tilde + mlp(layer_norm2(f_tilde)) (DINOv2: the branch
    ends in layer_scale2, ViT: layernorm_after is the norm; `BlockLayout`). A pre-hook on
    layer_norm2 sees f_tilde and a forward hook on mlp adds the adapter branch, giving
    out = f_tilde + MLP(LN2(f_tilde)) + a without copying HF's block code. Gradient
    checkpointing re-runs both hooks in the same order, so the hand-over stays consistent.
    """

    def __init__(self, adapter: nn.Module, state: AdapterState) -> None:
        self.adapter = adapter
        self.state = state
        self._f_tilde: Tensor | None = None

    def attach(self, layer: nn.Module, handle: AdapterHandle, attr: str = "adapter",
               layout: BlockLayout = LAYOUTS[0]) -> None:
        """Hook the block's pre-MLP norm (input: f_tilde) and its MLP-branch module (`layout`)."""
        handle.add_module(layer, attr, self.adapter)
        handle.add_hook(layer.get_submodule(layout.norm2).register_forward_pre_hook(self._capture))
        handle.add_hook(layer.get_submodule(layout.mlp_out).register_forward_hook(self._add))

    def _capture(self, module: nn.Module, args: tuple) -> None:
        self._f_tilde = args[0]

    def _add(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        f_tilde, self._f_tilde = self._f_tilde, None  # release the activation straight away
        if not self.state.enabled:
            return None
        if f_tilde is None:
            raise RuntimeError("adapter hook: the MLP ran without its pre-norm before it (unknown block layout?)")
        return output + self.adapter(f_tilde).to(output.dtype)


def kaiming_down_(linear: nn.Linear) -> None:
    """LIFT's down-projection init: Kaiming-normal, a = sqrt(5), fan-in (std = 1/sqrt(3 d_in)); bias 0."""
    nn.init.kaiming_normal_(linear.weight, a=5**0.5)
    nn.init.zeros_(linear.bias)
