"""One feature extraction as a library call: `extract_to_file(FeaturesConfig(...))`.

What `longtail features` runs: open a dataset split (or the part a validation rule draws from
the training split), load a frozen backbone, extract its features through the feature cache
(`models.features.extract_features`, shared by the processes of a torchrun / accelerate launch
group), add class prototypes, and write a feature file (.npz or .safetensors) that records
where everything came from (`meta`), so a probe run on it can rebuild the backbone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longtail.data.features import SUFFIXES, FeatureSet
from longtail.data.splits import ValRule, check_part
from longtail.device import resolve_device
from longtail.errors import ConfigError, DataError
from longtail.models.templates import TEMPLATES


@dataclass
class FeaturesConfig:
    """One feature extraction: which images, which backbone, where to, and how."""

    data: str
    backbone: str
    out: str
    root: str | None = None
    split: str = "train"  # with val_split / val_per_class: train (the rest) or val (the drawn part)
    data_options: dict[str, Any] = field(default_factory=dict)
    val_split: float | None = None  # draw this fraction of each class of the training split as val
    val_per_class: int = 0  # or N images of each class (0: off); either way each class keeps one
    val_rule: str = "stratified"  # which: stratified (seeded by `seed`) | first (file order)
    seed: int = 0  # seed of that draw
    revision: str | None = None
    backbone_options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    device: str = "auto"
    workers: int = 0
    cache: bool = True
    cache_dir: str | None = None
    prototypes: str = "auto"  # auto | text | imagenet | none | FILE.npy
    templates: str = "lift"
    imagenet_map: str | None = None
    progress: bool = True
    overwrite: bool = False  # replace an existing `out` file (otherwise refused)

    def __post_init__(self) -> None:
        if Path(self.out).suffix not in SUFFIXES:
            raise ConfigError(f"out must end in {' or '.join(SUFFIXES)}, got '{Path(self.out).name}'")
        if self.batch_size < 1 or self.workers < 0:
            raise ConfigError("batch_size must be >= 1 and workers >= 0")
        resolve_device(self.device)  # a misspelt device, or cuda without a GPU, fails here
        TEMPLATES.get(self.templates)
        check_part(self.split, self.validation_rule())

    def validation_rule(self) -> ValRule:
        """The validation rule of val_split / val_per_class / val_rule / seed (inactive when neither size is set)."""
        return ValRule(self.val_split, self.val_per_class, self.seed, self.val_rule)


def prototype_request(cfg: FeaturesConfig) -> tuple[str | None, dict[str, Any]]:
    """(source name or None for a file, options for Backbone.prototypes) from the config."""
    value = cfg.prototypes
    if value.endswith(".npy") or "/" in value or "\\" in value:
        return None, {}
    options: dict[str, Any] = {"templates": cfg.templates}
    if cfg.imagenet_map is not None:
        options["imagenet_map"] = cfg.imagenet_map
        if value == "auto":
            value = "imagenet"
    return value, options


def extract_to_file(cfg: FeaturesConfig) -> FeatureSet | None:
    """Extract the features `cfg` describes and write them to `cfg.out`; returns the feature set
    written (None in the processes of a launched group other than the main one, which writes).

    Everything a user can get wrong is checked before the backbone loads: an existing `out`
    (unless `overwrite`), a missing prototype file, `cache=False` in a process group (the
    processes share the work through the cache). Started by torchrun / accelerate launch
    (WORLD_SIZE > 1), every process extracts a contiguous part of the images on its own device
    and the main one assembles and writes the file; a process group this call joined is left."""
    import torch.distributed

    from longtail.data.splits import open_part
    from longtail.io import check_writable
    from longtail.models.backbone import load_backbone

    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise ConfigError(f"{out} already exists (overwrite=true replaces it)")
    check_writable(out, folder=False)
    source, options = prototype_request(cfg)
    if source is None and not Path(cfg.prototypes).is_file():
        raise DataError(f"prototype file not found: {cfg.prototypes}")
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # by torchrun / accelerate launch
    if launched and not cfg.cache:
        raise ConfigError("cache=false: processes started by torchrun / accelerate launch share the work "
                          "through the feature cache; keep the cache or run one process")
    dataset, drawn = open_part(cfg.data, cfg.split, cfg.root, cfg.validation_rule(), **cfg.data_options)
    backbone = load_backbone(cfg.backbone, revision=cfg.revision, **cfg.backbone_options)
    device, owned = cfg.device, launched and not torch.distributed.is_initialized()
    if launched:
        from accelerate import PartialState  # joins the process group (gloo on CPU, nccl on GPUs)

        device = PartialState(cpu=cfg.device == "cpu").device  # this process's own GPU
    try:
        return _extract_and_write(cfg, dataset, drawn, backbone, source, options, device, out)
    finally:
        if owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _extract_and_write(cfg: FeaturesConfig, dataset: Any, drawn: dict[str, Any] | None, backbone: Any,
                       source: str | None, options: dict[str, Any], device: Any, out: Path) -> FeatureSet | None:
    """Extract (every process of a group takes part) and write `out` (the main process only)."""
    from longtail.data.features import save_features
    from longtail.models.cache_store import process_group
    from longtail.models.features import extract_features, load_prototype_file

    prototypes = source
    if source is None:
        prototypes = load_prototype_file(cfg.prototypes, dataset.num_classes, backbone.feature_dim)
    fs = extract_features(
        backbone,
        dataset,
        batch_size=cfg.batch_size,
        cache_dir=cfg.cache_dir,
        progress=cfg.progress,
        num_workers=cfg.workers,
        prototypes=prototypes,
        prototype_options=options,
        cache=cfg.cache,
        device=device,
        meta={
            "data": cfg.data,
            "root": cfg.root,
            "split": cfg.split,
            "options": cfg.data_options,
            "backbone_options": cfg.backbone_options,  # so `longtail predict` can rebuild the backbone
            "val_split": drawn,
            "prototype_source": str(cfg.prototypes if source is None else source),
            "templates": cfg.templates if _uses_text(source, backbone) else None,
        },
    )
    if not process_group().main:
        return None
    save_features(fs, out)
    return fs


def _uses_text(source: str | None, backbone: Any) -> bool:
    """Whether the prototypes came from the text tower (so the templates matter)."""
    resolved = backbone.default_prototype_source if source == "auto" else source
    return resolved == "text"
