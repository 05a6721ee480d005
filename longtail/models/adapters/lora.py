"""LoRA on a ViT-like vision tower's block linear layers, injected with peft (no hand-written LoRA).

Targets are CLIP's names (q_proj ... fc2), mapped to each family's block (`BlockLayout`); when a
name also matches a module outside the blocks (SigLIP's attention-pooling head has out_proj, fc1,
fc2), peft gets a regex over the block paths instead of bare names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from peft import LoraModel

from longtail.models.adapters.base import (
    AdapterConfig,
    AdapterHandle,
    VisionParts,
    register_adapter,
    resolve_r,
)

# Linear layers of a block that LoRA may target (CLIP's names; other layouts map them).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


class LoraHandle(AdapterHandle):
    """Keeps peft's LoraModel so that disabling and removal use peft's own switches."""

    lora_model: LoraModel | None = None

    def _set_enabled(self, flag: bool) -> None:
        if flag:
            self.lora_model.enable_adapter_layers()
        else:
            self.lora_model.disable_adapter_layers()

    def remove(self) -> None:
        if not self._removed and self.lora_model is not None:
            self.lora_model.unload()  # swaps peft's LoRA layers back to the original nn.Linear
            if hasattr(self.lora_model.model, "peft_config"):
                del self.lora_model.model.peft_config
        super().remove()


@register_adapter("lora")
@dataclass
class LoRAConfig(AdapterConfig):
    """LoRA via peft on every block's `target_modules`; r = "auto" uses the LIFT bottleneck rule.

    lora_alpha None means alpha = r (scaling 1). B starts at zero (peft default), so the model is
    unchanged at step 0.
    """

    r: int | str = "auto"
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")

    def validate(self) -> None:
        self._check_r(self.r)
        self._check(0.0 <= float(self.lora_dropout) < 1.0, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        self._check(self.lora_alpha is None or (isinstance(self.lora_alpha, (int, float)) and self.lora_alpha > 0),
                    f"lora_alpha must be a positive number or None, got {self.lora_alpha!r}")
        bad = sorted(set(self.target_modules) - set(LORA_TARGETS))
        self._check(bool(self.target_modules) and not bad,
                    f"target_modules {bad or '()'} invalid; choose from {', '.join(LORA_TARGETS)}")

    def handle_class(self) -> type[AdapterHandle]:
        return LoraHandle

    def peft_targets(self, parts: VisionParts) -> list[str] | str:
        """Bare module names (CLIP: as before) when they match block layers only, else a regex
        over the block paths; a target the block lacks is a one-line error."""
        layout, first = parts.layout, parts.layers[0]
        missing = layout.missing(first, self.target_modules)
        self._check(not missing, f"target_modules {missing} do not exist in a {type(first).__name__} "
                                 f"({layout.family} layout); drop them from target_modules")
        paths = [layout.path(t) for t in self.target_modules]
        names = list(dict.fromkeys(p.rsplit(".", 1)[-1] for p in paths))
        blocks = {id(m) for layer in parts.layers for m in layer.modules()}
        stray = [n for n, m in parts.tower.named_modules()
                 if n.rsplit(".", 1)[-1] in names and id(m) not in blocks]
        if not stray:
            return names
        prefix = next(n for n, m in parts.tower.named_modules() if m is parts.layers)
        alternatives = "|".join(re.escape(p) for p in sorted(paths))
        return rf"{re.escape(prefix)}\.\d+\.({alternatives})"

    def inject(self, parts: VisionParts, num_classes: int, handle: AdapterHandle) -> None:
        r = resolve_r(self.r, num_classes, parts.num_layers)
        from peft import LoraConfig as PeftLoraConfig  # imported here: peft is slow to import
        from peft import LoraModel

        peft_cfg = PeftLoraConfig(
            r=r,
            lora_alpha=r if self.lora_alpha is None else self.lora_alpha,
            lora_dropout=float(self.lora_dropout),
            target_modules=self.peft_targets(parts),
            bias="none",
        )
        # LoraModel injects in place into the tower and marks only LoRA weights trainable.
        handle.lora_model = LoraModel(parts.tower, peft_cfg, "default")
