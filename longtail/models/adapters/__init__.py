"""Parameter-efficient adapters injected into Hugging Face CLIP vision towers.

    cfg = make_adapter_config("adaptformer", r="auto")
    handle = inject_adapter(clip.model.vision_model, cfg, num_classes=100)
    optimizer = torch.optim.SGD(handle.trainable_parameters() + list(head.parameters()), lr=0.01)

Names: adaptformer, sg-adapter, lora (peft), vpt-shallow, vpt-deep, ssf, bitfit, ln-tuning,
partial, full, none.
"""

from longtail.models.adapters import adaptformer, lora, selective, sg_adapter, ssf, vpt  # noqa: F401  (registration)
from longtail.models.adapters.base import (
    ADAPTERS,
    AdapterConfig,
    AdapterHandle,
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
    "inject_adapter",
    "lift_bottleneck",
    "locate_vision",
    "make_adapter_config",
    "register_adapter",
]
