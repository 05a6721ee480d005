"""The fine-tuning configuration: one flat dataclass, so every field is a `KEY=VALUE` override.

Dict-valued fields (`data_options`, `backbone_options`, `adapter_options`, `loss_options`,
`origin`) take sub-keys with a dot (`loss_options.gamma=0.06`, via `longtail.config.apply_overrides`).
Presets (presets.py) fill the fields; users override them last. Construction validates every
range and every registry name, so a typo fails before any data or model is loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from longtail.data.splits import VAL_RULES
from longtail.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp16", "no")
SCHEDULE_UNITS = ("epoch", "step")
INTERPOLATIONS = ("bilinear", "bicubic")
PREFIX_CACHE = ("off", "on", "auto")
PREFIX_VIEW_KINDS = ("flip", "rrc_flip")
VAL_FROM = ("test", "train")
# How and where a run executes, not what it learns: the keys that may change on `--resume`
# (runner.check_resumable) and between the jobs of one LT-Soups plan (soups/lt_soups.py).
# device and precision change the numerics of the steps still to run, not the recipe.
RUNTIME_KEYS = ("device", "precision", "num_workers", "progress", "eval_batch_size", "save_every",
                "keep_checkpoints", "prefix_cache_dir", "log_with", "origin")


@dataclass
class FitConfig:
    """Everything a fine-tuning run depends on (written to the run's config.yaml)."""

    # a changed loss / adapter drops the options of the one it replaces (config.apply_overrides)
    OPTIONS_OF = {"loss": "loss_options", "adapter": "adapter_options", "sampler": "sampler_options"}

    # --- data -----------------------------------------------------------------------------
    dataset: str = "synthetic_images"  # data-layer dataset name (or any open_images spec)
    data_options: dict[str, Any] = field(default_factory=dict)  # extra open_images options
    root: str | None = None  # dataset root folder (real datasets)
    train_list: str | None = None  # list file of the training split (ImageNet-LT, Places-LT, ...)
    test_list: str | None = None  # list file of the test split
    test_split: str = "test"
    val_split: str | None = None  # selection split name, or a fraction (0.1) drawn from val_from; None: val_per_class
    val_per_class: int = 0  # > 0: hold out that many images per class of val_from for selection
    val_rule: str = "stratified"  # which: stratified (seeded by `seed`) | first (file order; LT-Soups) (data.splits)
    val_from: str = "test"  # test: held-out test images, not tested on (LT-Soups) | train: removed from training
    balance_exponent: int | None = None  # train on n'_c = min(n_c, n_min 2^i) (LT-Soups); None: all
    subset_seed: int = 0  # seed of that per-class draw (LT-Soups: the exponent's position in F)
    decode_size: int | None = None  # CPU decode side of training images; None: image_size * test_resize_ratio
    num_workers: int = 4  # DataLoader workers that decode JPEGs into uint8 tensors
    sampler: str = "random"  # which images an epoch visits: random | balanced | sqrt | repeat_factor (SAMPLERS)
    sampler_options: dict[str, Any] = field(default_factory=dict)  # repeat_factor: threshold, rounding
    # --- backbone -------------------------------------------------------------------------
    backbone: str = "tiny_clip"  # longtail.models.load_backbone name, hub id or folder
    backbone_options: dict[str, Any] = field(default_factory=dict)
    # --- method ---------------------------------------------------------------------------
    method: str = "lift"  # method preset name (presets.METHOD_PRESETS), recorded for reports
    adapter: str = "adaptformer"  # longtail.models.adapters name; none = head only, full = every backbone weight
    adapter_options: dict[str, Any] = field(default_factory=dict)  # e.g. adapter_options.r=8
    head_init: str = "text"  # text | prototypes | class_mean | auto (prototypes, else class_mean) | random (HEAD_INITS)
    prototype_options: dict[str, Any] = field(default_factory=dict)  # e.g. prototype_options.imagenet_map=FILE
    templates: str = "lift"  # template set for text init: lift (1) | sage60 (60)
    scale: float = 25.0  # cosine-classifier scale s (LIFT: 25, LT-Soups: 30)
    init_from: str | None = None  # fit run folder whose weights start training (LT-Soups stage 2)
    loss: str = "la"  # loss registry name: ce, la, balanced-softmax, cf, ccar, ccar-la, ccar-bs
    loss_options: dict[str, Any] = field(default_factory=lambda: {"tau": 1.0})
    feature_interchange: bool = False  # Sage FIT: zero-shot cross logits with learnable s1, s2
    lambda1: float = 0.0  # weight of l(z_v)
    lambda2: float = 0.0  # weight of l(z_t)
    lambda3: float = 0.0  # weight of l(z_hat)
    # --- optimisation ---------------------------------------------------------------------
    optimizer: str = "sgd"  # OPTIMIZERS: sgd | adamw
    lr: float = 0.01
    momentum: float = 0.9  # sgd only
    weight_decay: float = 5e-4
    epochs: int = 10
    steps: int | None = None  # optimizer-step budget (LT-Soups); None: epochs over the data
    batch_size: int = 128  # global batch per optimizer step (all processes, all micro-batches)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr_schedule: str = "cosine"  # SCHEDULES: cosine | constant
    schedule_unit: str = "epoch"  # epoch (LIFT: the LR changes once per epoch) | step
    warmup_epochs: float = 0.0  # linear warmup length, in epochs
    warmup_steps: int | None = None  # linear warmup length in steps (overrides warmup_epochs)
    warmup_start_factor: float = 1e-6  # step unit: the warmup starts at this fraction of lr
    final_lr_fraction: float = 0.0  # the cosine ends at this fraction of lr (LT-Soups: 0.1)
    ema_decay: float | None = None  # EMA of the trained weights (LT-Soups: 0.99); None: off
    n_evals: int = 0  # best-of-N: validate N times, keep the best (EMA) weights; 0: the last weights
    # --- augmentation and test ------------------------------------------------------------
    augment: str = "rrc_flip"  # rrc_flip | none (AUGMENTATIONS)
    interpolation: str = "bilinear"  # image resizing: bilinear (LIFT, LT-Soups) | bicubic (LIFT+)
    crop_scale_min: float = 0.08
    crop_scale_max: float = 1.0
    crop_schedule: str = "none"  # LIFT+ minimalist crops: none | linear | convex | concave | min | max
    test_resize_ratio: float = 256 / 224  # test: shorter side -> ratio*size, centre crop size
    tte: bool = False  # five-crop test-time ensembling (shorter side -> size+24)
    eval_batch_size: int = 256
    # --- frozen-prefix cache (models/prefix_cache.py, methods/finetune/prefix.py) -----------
    prefix_cache: str = "off"  # on | auto (on when the adapter leaves a frozen prefix: partial, none) | off
    prefix_views: int = 1  # V views per image, drawn once (seeded) and cached; one sampled per epoch
    prefix_view_kind: str = "flip"  # flip: identity (+ mirror when V = 2) | rrc_flip: V random-resized crops + flips
    prefix_cache_dir: str | None = None  # default $LONGTAIL_CACHE/prefix or ~/.cache/longtail/prefix
    prefix_dtype: str = "fp16"  # fp16 (half the disk) | fp32 (exactly the uncached states)
    # --- system ---------------------------------------------------------------------------
    precision: str = "auto"  # auto (bf16 on CUDA if supported, else fp16) | bf16 | fp16 | no; CPU: fp32
    device: str = "auto"
    seed: int = 0
    save_every: int = 0  # also checkpoint every N optimizer steps
    keep_checkpoints: bool = True  # keep the resume checkpoint once the run finished
    progress: bool = True
    log_with: str | None = None  # experiment tracker: tensorboard | mlflow | wandb (logs in RUN/tracking)
    origin: dict[str, Any] = field(default_factory=dict)  # provenance only (LT-Soups: exponent, branch)

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 0, f"epochs must be >= 0, got {self.epochs}"),
            (self.steps is None or self.steps >= 0, f"steps must be >= 0, got {self.steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}"),
            (self.batch_size % self.grad_accum == 0,
             f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}"),
            (self.lr >= 0, f"lr must be >= 0, got {self.lr}"),
            (0 < self.crop_scale_min <= self.crop_scale_max <= 1,
             f"need 0 < crop_scale_min <= crop_scale_max <= 1, got {self.crop_scale_min}, {self.crop_scale_max}"),
            (self.scale > 0, f"scale must be > 0, got {self.scale}"),
            (min(self.lambda1, self.lambda2, self.lambda3) >= 0, "lambda1..3 must be >= 0"),
            (self.schedule_unit in SCHEDULE_UNITS, f"schedule_unit must be epoch or step, got {self.schedule_unit}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision}"),
            (self.interpolation in INTERPOLATIONS,
             f"interpolation must be bilinear or bicubic, got {self.interpolation}"),
            (0 < self.warmup_start_factor <= 1, f"warmup_start_factor must be in (0, 1], got {self.warmup_start_factor}"),
            (0 <= self.final_lr_fraction <= 1, f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}"),
            (self.ema_decay is None or 0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay}"),
            (self.n_evals >= 0, f"n_evals must be >= 0, got {self.n_evals}"),
            (self.val_per_class >= 0, f"val_per_class must be >= 0, got {self.val_per_class}"),
            (self.val_from in VAL_FROM, f"val_from must be one of {', '.join(VAL_FROM)}, got {self.val_from!r}"),
            (self.val_rule in VAL_RULES, f"val_rule must be one of {', '.join(VAL_RULES)}, got {self.val_rule!r}"),
            (self.val_fraction is None or not self.val_per_class, "set val_split=FRACTION or val_per_class, not both"),
            (self.val_from == "test" or self.val_drawn,
             "val_from=train draws validation from the training images: set val_split=FRACTION or val_per_class=N"),
            (self.n_evals == 0 or self.val_per_class > 0 or self.val_split is not None,
             "n_evals > 0 selects on validation images: set val_per_class=N or val_split=NAME"),
            (self.save_every >= 0, f"save_every must be >= 0, got {self.save_every}"),
            (self.test_resize_ratio >= 1, f"test_resize_ratio must be >= 1, got {self.test_resize_ratio}"),
            (self.prefix_cache in PREFIX_CACHE,
             f"prefix_cache must be one of {', '.join(PREFIX_CACHE)}, got {self.prefix_cache!r}"),
            (self.prefix_view_kind in PREFIX_VIEW_KINDS,
             f"prefix_view_kind must be one of {', '.join(PREFIX_VIEW_KINDS)}, got {self.prefix_view_kind!r}"),
            (self.prefix_views >= 1 and (self.prefix_view_kind != "flip" or self.prefix_views <= 2),
             f"prefix_views must be >= 1 (flip: 1 or 2), got {self.prefix_views}"),
            (self.prefix_dtype in ("fp16", "fp32"), f"prefix_dtype must be fp16 or fp32, got {self.prefix_dtype!r}"),
            (not (self.prefix_cache == "on" and self.feature_interchange),
             "prefix_cache=on cannot serve feature_interchange (FIT needs the pixels): set prefix_cache=off"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self._check_names()

    def _check_names(self) -> None:
        """Every registry name (UnknownNameError lists the valid ones); imports, no data."""
        from longtail.data.sampling import check_sampler
        from longtail.methods.finetune.augment import AUGMENTATIONS, CROP_SCHEDULES
        from longtail.methods.finetune.model import HEAD_INITS
        from longtail.methods.finetune.optim import OPTIMIZERS, SCHEDULES
        from longtail.methods.losses import loss_parameters
        from longtail.methods.tracking import check_tracker
        from longtail.models.adapters import make_adapter_config
        from longtail.models.templates import get_templates

        OPTIMIZERS.get(self.optimizer)
        SCHEDULES.get(self.lr_schedule)
        AUGMENTATIONS.get(self.augment)
        if self.crop_schedule != "none":
            CROP_SCHEDULES.get(self.crop_schedule)
        HEAD_INITS.get(self.head_init)
        check_sampler(self.sampler, self.sampler_options)
        check_tracker(self.log_with)
        get_templates(self.templates)
        accepted = loss_parameters(self.loss)
        unknown = sorted(set(self.loss_options) - set(accepted))
        if unknown:
            raise ConfigError(f"loss '{self.loss}' has no parameter {unknown[0]!r}; "
                              f"it accepts: {', '.join(accepted) or 'none'}")
        adapter = make_adapter_config(self.adapter, **self.adapter_options)
        if self.prefix_cache == "on" and not adapter.cacheable_depth:
            raise ConfigError(f"prefix_cache=on needs a frozen prefix: adapter 'partial' or 'none', "
                              f"not '{self.adapter}' (or set prefix_cache=auto / off)")
        _check_dataset(self.dataset)

    @property
    def val_fraction(self) -> float | None:
        """val_split as a fraction (0 < f < 1) when it is a number, else None (a split name)."""
        try:
            value = float(self.val_split) if self.val_split is not None else None
        except ValueError:
            return None
        if value is not None and not 0 < value < 1:
            raise ConfigError(f"val_split must be a split name or a fraction between 0 and 1, got {self.val_split}")
        return value

    @property
    def val_drawn(self) -> bool:
        """Whether validation is drawn per class from val_from (val_per_class or a fraction)."""
        return self.val_per_class > 0 or self.val_fraction is not None

    @property
    def micro_batch(self) -> int:
        return self.batch_size // self.grad_accum

    def check_backbone_fits(self) -> None:
        """A ViT-only adapter on a preset CNN backbone fails here, before any data or weights
        load (called on finished configs: presets pass through intermediate combinations)."""
        from longtail.models.adapters import check_adapter_fits
        from longtail.models.backbone import preset_arch

        arch = preset_arch(self.backbone)
        if arch is not None:
            check_adapter_fits(_Named(self.backbone, arch), self.adapter)

    @property
    def uses_prefix_cache(self) -> bool:
        """Whether training runs from the frozen-prefix cache (on, or auto with a frozen prefix)."""
        if self.prefix_cache == "off" or self.feature_interchange:
            return False
        from longtail.models.adapters import make_adapter_config

        return make_adapter_config(self.adapter, **self.adapter_options).cacheable_depth

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Named:
    """A backbone's name and arch, for adapter checks before the backbone is loaded."""

    def __init__(self, name: str, arch: str) -> None:
        self.name, self.arch = name, arch


def _check_dataset(name: str) -> None:
    """A bare name must be a data-layer dataset or an existing folder or file (the rule of
    `open_images`: a preset first, then a path); other paths and `hf:` specs are checked when opened."""
    from pathlib import Path

    if any(c in name for c in "/\\:.") or Path(name).exists():
        return
    from longtail.data.presets import DATASETS

    DATASETS.get(name)


def valid_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(FitConfig)]


def migrate_saved(values: dict[str, Any]) -> dict[str, Any]:
    """A saved fit config (or LT-Soups plan) of an older longtail in today's vocabulary (a
    migration on read): before `val_rule`, val_per_class with val_from=test meant the first N
    test images of each class in file order, now `val_rule=first`."""
    values = dict(values)
    if "val_rule" not in values and values.get("val_from", "test") == "test" and values.get("val_per_class"):
        values["val_rule"] = "first"
    return values


def config_from_dict(values: dict[str, Any], where: str = "config") -> FitConfig:
    """A FitConfig from a saved dict (a fit run's config.yaml, or model_config.json of a soup / export); unknown keys are
    errors, older vocabularies are migrated (`migrate_saved`)."""
    values = {k: v for k, v in migrate_saved(values).items() if k not in ("kind", "format_version")}
    unknown = sorted(set(values) - set(valid_keys()))
    if unknown:
        raise ConfigError(f"{where}: unknown fit config key '{unknown[0]}' (written by another longtail version?)")
    return FitConfig(**values)
