"""Parameter-efficient adapters and tuning modes, injected into a backbone in place.

    cfg = make_adapter_config("adaptformer", r="auto")
    handle = inject_adapter(clip, cfg, num_classes=100)   # a Backbone, or clip.model.vision_model
    optimizer = torch.optim.SGD(handle.trainable_parameters() + list(head.parameters()), lr=0.01)

ViT-only (HF CLIP, SigLIP, DINOv2, ViT: layouts.py): adaptformer, sg-adapter, lora (peft), vpt-shallow, vpt-deep, ssf.
Any backbone (selective.py): none, bitfit, norm-tuning (= ln-tuning = bn-tuning), partial, full.
"""

from longtail.models.adapters import adaptformer, lora, selective, sg_adapter, ssf, vpt  # noqa: F401  (registration)
from longtail.models.adapters.base import (
    ADAPTERS,
    AdapterConfig,
    AdapterHandle,
    TuningParts,
    adapters_for,
    check_adapter_fits,
    inject_adapter,
    lift_bottleneck,
    locate_vision,
    make_adapter_config,
    register_adapter,
)

__all__ = [
    "ADAPTERS",
    "AdapterConfig",
    "AdapterHandle",
    "TuningParts",
    "adapters_for",
    "check_adapter_fits",
    "inject_adapter",
    "lift_bottleneck",
    "locate_vision",
    "make_adapter_config",
    "register_adapter",
]
