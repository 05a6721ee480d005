"""`longtail features`: extract frozen backbone features of an image dataset into a feature file."""

from __future__ import annotations

import argparse
from pathlib import Path

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
a .csv, a .zip or hf:<hub id>; --backbone is a preset (tiny_clip, clip_vit_b16, clip_vit_b32,
clip_vit_l14, clip_vit_l14_laion2b, efficientnet_lite0, efficientnet_lite2), a Hugging Face
hub id or a folder saved with save_pretrained.

examples:
  longtail features --data cifar100_lt --root data/ --split train --backbone clip_vit_b16 --out train.npz
  longtail features --data cifar100_lt --root data/ --split test --backbone clip_vit_b16 --out test.npz
  longtail features --data photos/ --backbone clip_vit_l14 --templates sage60 --out feats.safetensors
  longtail features --data photos/ --backbone efficientnet_lite0 --prototypes imagenet \\
      --imagenet-map map.txt --out feats.npz
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset: preset name, folder, list file, .csv, .zip or hf:ID")
    p.add_argument("--root", help="dataset root (presets) or image root (list/CSV files)")
    p.add_argument("--split", default="train", help="split to extract (default: train)")
    p.add_argument("--option", nargs="*", default=[], metavar="KEY=VALUE",
                   help="dataset options, e.g. ir=100 on_corrupt=skip class_names=names.txt")
    p.add_argument("--backbone", required=True, help="preset name, Hugging Face hub id or model folder")
    p.add_argument("--revision", help="hub revision (branch, tag or commit) of the backbone")
    p.add_argument("--backbone-option", nargs="*", default=[], metavar="KEY=VALUE",
                   help="backbone options, e.g. image_size=128 crop_padding=0 (EfficientNet-Lite)")
    p.add_argument("--out", required=True, help="feature file to write (.npz or .safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward (default 64)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    p.add_argument("--cache-dir", help="feature cache folder (default $LONGTAIL_CACHE/features)")
    p.add_argument("--prototypes", default="auto", metavar="auto|text|imagenet|none|FILE.npy",
                   help="class prototypes to store (default auto; see above)")
    p.add_argument("--templates", default="lift", choices=("lift", "sage60"),
                   help="prompt templates for text prototypes (default lift: 'a photo of a {}.')")
    p.add_argument("--imagenet-map", metavar="FILE",
                   help="class -> ImageNet class map for --prototypes imagenet")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def prototype_request(args: argparse.Namespace) -> tuple[str | None, dict]:
    """(source name or None for a file, options for Backbone.prototypes) from the flags."""
    value = args.prototypes
    if value.endswith(".npy") or "/" in value or "\\" in value:
        return None, {}
    options: dict = {"templates": args.templates}
    if args.imagenet_map is not None:
        options["imagenet_map"] = args.imagenet_map
        if value == "auto":
            value = "imagenet"
    return value, options


def run(args: argparse.Namespace) -> int:
    from longtail.config import parse_overrides
    from longtail.data.features import SUFFIXES, save_features
    from longtail.data.images import open_images
    from longtail.errors import ConfigError, DataError
    from longtail.models.backbone import load_backbone
    from longtail.models.features import extract_features, load_prototype_file

    out = Path(args.out)
    if out.suffix not in SUFFIXES:
        raise ConfigError(f"--out must end in {' or '.join(SUFFIXES)}, got '{out.name}'")
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out} already exists (use --overwrite to replace it)")
    if args.batch_size < 1 or args.workers < 0:
        raise ConfigError("--batch-size must be >= 1 and --workers >= 0")
    source, options = prototype_request(args)
    if source is None and not Path(args.prototypes).is_file():
        raise DataError(f"prototype file not found: {args.prototypes}")

    dataset = open_images(args.data, split=args.split, root=args.root, **parse_overrides(args.option))
    backbone = load_backbone(args.backbone, revision=args.revision, **parse_overrides(args.backbone_option))
    prototypes = source
    if source is None:
        prototypes = load_prototype_file(args.prototypes, dataset.num_classes, backbone.feature_dim)
    fs = extract_features(
        backbone,
        dataset,
        batch_size=args.batch_size,
        device=args.device,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
        num_workers=args.workers,
        prototypes=prototypes,
        prototype_options=options,
        cache=not args.no_cache,
        meta={
            "data": args.data,
            "root": args.root,
            "split": args.split,
            "options": args.option,
            "prototype_source": str(args.prototypes if source is None else source),
            "templates": args.templates if _uses_text(source, backbone) else None,
        },
    )
    save_features(fs, out)
    protos = "none" if fs.prototypes is None else f"{fs.prototypes.shape[0]} prototypes"
    print(f"wrote {out}: {fs.num_samples} x {fs.dim} features, {fs.num_classes} classes, {protos}")
    return 0


def _uses_text(source: str | None, backbone) -> bool:
    """Whether the prototypes came from the text tower (so the templates matter)."""
    resolved = backbone.default_prototype_source if source == "auto" else source
    return resolved == "text"
