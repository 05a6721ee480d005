"""`longtail features`: extract frozen backbone features of an image dataset into a feature file."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HELP = "extract frozen backbone features (and zero-shot prototypes) of an image dataset"
DESCRIPTION = """\
Run a frozen backbone over an image dataset and write a feature file (.npz or .safetensors)
with `features` (N x d, float32), `labels`, `class_names`, optional `prototypes` (C x d)
and `meta` (backbone, model id/revision, preprocessing, dataset fingerprint, split).
The feature of a CLIP model is the post-LayerNorm CLS token before the visual projection.
Results are cached by (weights, preprocessing, dataset fingerprint) under
$LONGTAIL_CACHE/features (default ~/.cache/longtail/features), so repeating a run is instant.

--prototypes (written for `longtail probe --init prototypes` / the zero-shot method):
  auto      the backbone's default: text embeddings of the class names for CLIP, none otherwise
  text      CLIP text embeddings of the class names (--templates lift | sage60), mapped into
            the image-feature space with the visual projection
  imagenet  rows of a pretrained ImageNet classifier (EfficientNet), needs --imagenet-map
  none      no prototypes
  FILE.npy  your own C x d array (checked for shape, class count and NaN)

--data is a preset (e.g. cifar100_lt), an image folder (root/class_x/*.jpg), a list file,
a .csv, a .zip or hf:<hub id>. A folder (or zip) with train/ and test/ subfolders holds two
splits (--split test reads test/); a plain folder of classes, a list file or a CSV is one
split, train, and --split test or val on it is an error. A class folder with no images is an
error too (--option empty_classes=drop leaves it out, =keep keeps it as an empty class).

Validation drawn from the training split: val_split=0.1 (about 10 % of each class) or
val_per_class=N, stratified and seeded (seed=0); each class keeps at least one training
image (a class of one image gets no validation image). Then --split val writes the drawn
part and --split train the rest (same rule and seed, so the two never overlap); the rule,
seed and per-class counts are stored in the file's meta (val_split).

--backbone is a preset (tiny_clip, clip_vit_b16, clip_vit_b32,
clip_vit_l14, clip_vit_l14_laion2b, efficientnet_lite0, efficientnet_lite2), a Hugging Face
hub id or a folder saved with save_pretrained.

Several processes (GPUs) share one extraction when started by torchrun or accelerate launch:
each extracts a contiguous part of the images into shards of the cache entry, the first
assembles the same cache entry one process would and writes --out (the cache folder must be
shared by the processes; an interrupted run continues from the shards with any number of them):
  torchrun --nproc_per_node 8 -m longtail features --data imagenet_lt --root data/ --backbone clip_vit_b16 --out train.npz
  accelerate launch --multi_gpu --num_processes 8 -m longtail features ...   (same flags)

examples:
  longtail features --data cifar100_lt --root data/ --split train --backbone clip_vit_b16 --out train.npz
  longtail features --data cifar100_lt --root data/ --split test --backbone clip_vit_b16 --out test.npz
  longtail features --data photos/ --backbone clip_vit_l14 --templates sage60 --out feats.safetensors
  longtail features --data photos/ --split val val_split=0.1 --backbone efficientnet_lite0 --out val.npz
  longtail features --data photos/ --split train val_split=0.1 --backbone efficientnet_lite0 --out train.npz
  longtail features --data photos/ --backbone efficientnet_lite0 --prototypes imagenet \\
      --imagenet-map map.txt --out feats.npz
"""


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

    def __post_init__(self) -> None:
        from longtail.data.features import SUFFIXES
        from longtail.data.splits import check_part
        from longtail.device import resolve_device
        from longtail.errors import ConfigError
        from longtail.models.templates import TEMPLATES

        if Path(self.out).suffix not in SUFFIXES:
            raise ConfigError(f"out must end in {' or '.join(SUFFIXES)}, got '{Path(self.out).name}'")
        if self.batch_size < 1 or self.workers < 0:
            raise ConfigError("batch_size must be >= 1 and workers >= 0")
        resolve_device(self.device)  # a misspelt device, or cuda without a GPU, fails here
        TEMPLATES.get(self.templates)
        check_part(self.split, self.val_rule())

    def val_rule(self):
        """The validation rule of val_split / val_per_class / seed (inactive when neither is set)."""
        from longtail.data.splits import ValRule

        return ValRule(self.val_split, self.val_per_class, self.seed)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from longtail.config import add_option_argument, add_override_arguments

    add_override_arguments(p, "batch_size=128 backbone_options.image_size=128")
    p.add_argument("--data", required=True, help="dataset: preset name, folder, list file, .csv, .zip or hf:ID")
    p.add_argument("--root", help="dataset root (presets) or image root (list/CSV files)")
    p.add_argument("--split", help="split to extract (default: train)")
    add_option_argument(p)
    p.add_argument("--backbone", required=True, help="preset name, Hugging Face hub id or model folder")
    p.add_argument("--revision", help="hub revision (branch, tag or commit) of the backbone")
    p.add_argument("--backbone-option", action="append", default=[], metavar="KEY=VALUE",
                   help="backbone option (= backbone_options.KEY=VALUE; repeatable), e.g. image_size=128")
    p.add_argument("--out", required=True, help="feature file to write (.npz or .safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--batch-size", type=int, help="images per forward (default 64)")
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default 0)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    p.add_argument("--cache-dir", help="feature cache folder (default $LONGTAIL_CACHE/features)")
    p.add_argument("--prototypes", metavar="auto|text|imagenet|none|FILE.npy",
                   help="class prototypes to store (default auto; see above)")
    p.add_argument("--templates", help="prompt templates for text prototypes: lift (default) | sage60")
    p.add_argument("--imagenet-map", metavar="FILE",
                   help="class -> ImageNet class map for --prototypes imagenet")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_config(args: argparse.Namespace) -> FeaturesConfig:
    """FeaturesConfig from the flags (sugar) and the KEY=VALUE overrides (which win)."""
    from longtail.config import apply_overrides, command_overrides

    sugar = {"root": args.root, "split": args.split, "revision": args.revision, "batch_size": args.batch_size,
             "device": args.device, "workers": args.workers, "cache_dir": args.cache_dir,
             "prototypes": args.prototypes, "templates": args.templates, "imagenet_map": args.imagenet_map,
             "cache": False if args.no_cache else None, "progress": False if args.no_progress else None}
    overrides = command_overrides(args.overrides, sugar, {"data_options": args.option,
                                                          "backbone_options": args.backbone_option})
    return apply_overrides(FeaturesConfig(args.data, args.backbone, args.out), overrides)


def prototype_request(cfg: FeaturesConfig) -> tuple[str | None, dict]:
    """(source name or None for a file, options for Backbone.prototypes) from the config."""
    value = cfg.prototypes
    if value.endswith(".npy") or "/" in value or "\\" in value:
        return None, {}
    options: dict = {"templates": cfg.templates}
    if cfg.imagenet_map is not None:
        options["imagenet_map"] = cfg.imagenet_map
        if value == "auto":
            value = "imagenet"
    return value, options


def run(args: argparse.Namespace) -> int:
    import torch.distributed

    from longtail.data.splits import open_part
    from longtail.errors import ConfigError, DataError
    from longtail.io import check_writable
    from longtail.models.backbone import load_backbone

    cfg = build_config(args)
    out = Path(cfg.out)
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out} already exists (use --overwrite to replace it)")
    check_writable(out, folder=False)
    source, options = prototype_request(cfg)
    if source is None and not Path(cfg.prototypes).is_file():
        raise DataError(f"prototype file not found: {cfg.prototypes}")

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # by torchrun / accelerate launch
    if launched and not cfg.cache:
        raise ConfigError("--no-cache: processes started by torchrun / accelerate launch share the work "
                          "through the feature cache; drop --no-cache or run one process")
    dataset, drawn = open_part(cfg.data, cfg.split, cfg.root, cfg.val_rule(), **cfg.data_options)
    backbone = load_backbone(cfg.backbone, revision=cfg.revision, **cfg.backbone_options)
    device, owned = cfg.device, launched and not torch.distributed.is_initialized()
    if launched:
        from accelerate import PartialState  # joins the process group (gloo on CPU, nccl on GPUs)

        device = PartialState(cpu=cfg.device == "cpu").device  # this process's own GPU
    from longtail.models.imagenet import MissingImageNetMap

    try:
        return _extract_and_write(cfg, dataset, drawn, backbone, source, options, device, out)
    except MissingImageNetMap as err:  # the hint in this command's spelling (issue 22 item 5)
        raise ConfigError(f"{err}: pass --imagenet-map FILE") from None
    finally:
        if owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _extract_and_write(cfg: FeaturesConfig, dataset, drawn, backbone, source, options, device, out: Path) -> int:
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
        return 0
    save_features(fs, out)
    protos = "no prototypes" if fs.prototypes is None else f"{fs.prototypes.shape[0]} prototypes"
    part = "" if drawn is None else f" ({cfg.split} part of the training split, {drawn['rule']}, seed {cfg.seed})"
    counts = fs.class_counts()
    each = f"{int(counts.min())}" if counts.min() == counts.max() else f"{int(counts.min())} to {int(counts.max())}"
    print(f"wrote {out}: {fs.num_samples} x {fs.dim} features, {fs.num_classes} classes ({each} images each), "
          f"{protos}{part}")
    return 0


def _uses_text(source: str | None, backbone) -> bool:
    """Whether the prototypes came from the text tower (so the templates matter)."""
    resolved = backbone.default_prototype_source if source == "auto" else source
    return resolved == "text"
