"""`longtail features`: extract frozen backbone features of an image dataset into a feature file."""

from __future__ import annotations

import argparse

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
val_per_class=N, stratified and seeded (seed=0), or the first N in file order with
val_rule=first; each class keeps at least one training
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


def build_config(args: argparse.Namespace):
    """`models.extract.FeaturesConfig` from the flags (sugar) and the KEY=VALUE overrides (which win)."""
    from longtail.config import apply_overrides, command_overrides
    from longtail.models.extract import FeaturesConfig

    sugar = {"root": args.root, "split": args.split, "revision": args.revision, "batch_size": args.batch_size,
             "device": args.device, "workers": args.workers, "cache_dir": args.cache_dir,
             "prototypes": args.prototypes, "templates": args.templates, "imagenet_map": args.imagenet_map,
             "cache": False if args.no_cache else None, "progress": False if args.no_progress else None,
             "overwrite": True if args.overwrite else None}
    overrides = command_overrides(args.overrides, sugar, {"data_options": args.option,
                                                          "backbone_options": args.backbone_option})
    return apply_overrides(FeaturesConfig(args.data, args.backbone, args.out), overrides)


def run(args: argparse.Namespace) -> int:
    from longtail.errors import ConfigError
    from longtail.models.extract import extract_to_file
    from longtail.models.imagenet import MissingImageNetMap

    cfg = build_config(args)
    try:
        fs = extract_to_file(cfg)
    except MissingImageNetMap as err:  # the hint in this command's spelling (issue 22 item 5)
        raise ConfigError(f"{err}: pass --imagenet-map FILE") from None
    if fs is None:  # a process of a launched group other than the main one
        return 0
    drawn = fs.meta.get("val_split")
    protos = "no prototypes" if fs.prototypes is None else f"{fs.prototypes.shape[0]} prototypes"
    part = "" if drawn is None else f" ({cfg.split} part of the training split, {drawn['rule']}, seed {cfg.seed})"
    counts = fs.class_counts()
    each = f"{int(counts.min())}" if counts.min() == counts.max() else f"{int(counts.min())} to {int(counts.max())}"
    print(f"wrote {cfg.out}: {fs.num_samples} x {fs.dim} features, {fs.num_classes} classes ({each} images each), "
          f"{protos}{part}")
    return 0
