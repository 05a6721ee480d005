"""The fine-tuning configuration: one flat dataclass, so every field is a `key=value` override.

Dict-valued fields (`data_options`, `adapter_options`, `loss_options`) take sub-keys with a dot:
`loss_options.gamma=0.06`. Presets (presets.py) fill the fields; users override them last.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from longtail.config import update_dataclass
from longtail.errors import ConfigError


@dataclass
class FitConfig:
    """Everything a fine-tuning run depends on (written to the run's config.yaml)."""

    # --- data -----------------------------------------------------------------------------
    dataset: str = "synthetic_images"  # data preset name (presets.DATA_PRESETS)
    data_spec: str = "synthetic_images"  # what `open_images` gets (preset, folder, list file, ...)
    data_options: dict[str, Any] = field(default_factory=dict)  # extra open_images options
    root: str | None = None  # dataset root folder (real datasets)
    train_list: str | None = None  # list file of the training split (ImageNet-LT, Places-LT, ...)
    test_list: str | None = None  # list file of the test split
    test_split: str = "test"
    decode_size: int | None = None  # CPU decode side for training images; None: image_size*256/224
    num_workers: int = 4  # DataLoader workers that decode JPEGs into uint8 tensors
    # --- backbone -------------------------------------------------------------------------
    backbone: str = "tiny_clip"  # longtail.models.load_backbone name, hub id or folder
    backbone_options: dict[str, Any] = field(default_factory=dict)
    # --- method ---------------------------------------------------------------------------
    method: str = "lift"  # method preset name (presets.METHOD_PRESETS), recorded for reports
    adapter: str = "adaptformer"  # longtail.models.adapters name: adaptformer, sg-adapter, lora, none, full, ...
    adapter_options: dict[str, Any] = field(default_factory=dict)  # e.g. adapter_options.r=8
    head_init: str = "text"  # text | class_mean | random (HEAD_INITS)
    templates: str = "lift"  # template set for text init: lift (1) | sage60 (60)
    scale: float = 25.0  # cosine-classifier scale s (LIFT: 25)
    loss: str = "la"  # loss registry name: ce, la, balanced-softmax, cf, ccar, ccar-la, ccar-bs
    loss_options: dict[str, Any] = field(default_factory=lambda: {"tau": 1.0})
    fit: bool = False  # Sage FIT: zero-shot cross logits with learnable s1, s2
    lambda1: float = 0.0  # weight of l(z_v)
    lambda2: float = 0.0  # weight of l(z_t)
    lambda3: float = 0.0  # weight of l(z_hat)
    # --- optimisation ---------------------------------------------------------------------
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 10
    batch_size: int = 128  # global batch per optimizer step (all processes, all micro-batches)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr_schedule: str = "cosine"  # cosine | constant
    schedule_unit: str = "epoch"  # epoch (LIFT: the LR changes once per epoch) | step
    warmup_epochs: float = 0.0  # linear warmup length, in epochs
    # --- augmentation and test ------------------------------------------------------------
    augment: str = "rrc_flip"  # rrc_flip | none (AUGMENTATIONS)
    crop_scale_min: float = 0.08
    crop_scale_max: float = 1.0
    crop_schedule: str = "none"  # LIFT+ minimalist crops: none | linear | convex | concave | min | max
    test_resize_ratio: float = 256 / 224  # test: shorter side -> ratio*size, centre crop size
    tte: bool = False  # five-crop test-time ensembling (shorter side -> size+24)
    eval_batch_size: int = 256
    # --- system ---------------------------------------------------------------------------
    precision: str = "auto"  # auto (bf16 on CUDA if supported, else fp16; fp32 on CPU) | bf16 | fp16 | no
    device: str = "auto"
    seed: int = 0
    save_every: int = 0  # also checkpoint every N optimizer steps (0: at epoch ends only)
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 0, f"epochs must be >= 0, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}"),
            (self.batch_size % self.grad_accum == 0,
             f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}"),
            (self.lr >= 0, f"lr must be >= 0, got {self.lr}"),
            (0 < self.crop_scale_min <= self.crop_scale_max <= 1,
             f"need 0 < crop_scale_min <= crop_scale_max <= 1, got {self.crop_scale_min}, {self.crop_scale_max}"),
            (self.scale > 0, f"scale must be > 0, got {self.scale}"),
            (min(self.lambda1, self.lambda2, self.lambda3) >= 0, "lambda1..3 must be >= 0"),
            (self.schedule_unit in ("epoch", "step"), f"schedule_unit must be epoch or step, got {self.schedule_unit}"),
            (self.precision in ("auto", "bf16", "fp16", "no"), f"precision must be auto, bf16, fp16 or no, got {self.precision}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def micro_batch(self) -> int:
        return self.batch_size // self.grad_accum

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DICT_FIELDS = ("data_options", "backbone_options", "adapter_options", "loss_options")


def valid_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(FitConfig)]


def apply_overrides(cfg: FitConfig, overrides: dict[str, Any]) -> FitConfig:
    """`cfg` with `overrides`; 'name.sub' keys update dict fields; unknown keys list the valid ones."""
    plain: dict[str, Any] = {}
    nested = {name: dict(getattr(cfg, name)) for name in DICT_FIELDS}
    for key, value in overrides.items():
        head, dot, sub = key.partition(".")
        if dot:
            if head not in nested:
                raise ConfigError(
                    f"'{key}': only {', '.join(DICT_FIELDS)} take dotted sub-keys; "
                    f"valid keys: {', '.join(valid_keys())}"
                )
            nested[head][sub] = value
        else:
            plain[key] = value
    plain = {k: _coerce(k, v) for k, v in plain.items()}
    for name, value in nested.items():
        plain.setdefault(name, value)
    return update_dataclass(cfg, plain)


_FLOAT_FIELDS = {f.name for f in dataclasses.fields(FitConfig) if f.type == "float"}
_OPTIONAL_FIELDS = {f.name for f in dataclasses.fields(FitConfig) if "None" in str(f.type)}


def _coerce(key: str, value: Any) -> Any:
    """YAML gives ints for '1': float fields get floats; optional fields take 'none' as None."""
    if key in _OPTIONAL_FIELDS and isinstance(value, str) and value.lower() in ("none", "null"):
        return None
    if key in _FLOAT_FIELDS and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
