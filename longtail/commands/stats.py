"""`longtail stats`: class-count statistics of a dataset or feature file, and a sorted-count plot."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "class statistics of a dataset or feature file (imbalance, head-tail ratio, groups)"
DESCRIPTION = """\
Print how long-tailed a training set is: number of classes and samples, imbalance ratio
(largest / smallest class), head-tail ratio (classes with more than --many images over the
rest) and the many / medium / few-shot group sizes (> --many, --few..--many, < --few images;
an empty group is reported as empty). Also saves a plot of the class counts sorted from
largest to smallest (log scale, group thresholds marked).

DATA is a preset (synthetic_images, cifar10_lt, cifar100_lt, imagenet_lt, places_lt,
inat2018), an image folder (DATA/<class>/*.jpg), a list file (.txt: 'path label' lines),
a .csv (path,label), a zip of class folders, hf:<hub id> or a datasets.save_to_disk folder,
or a feature file (.npz / .safetensors).

--split picks a split of a preset or of a folder with train/ and test/ subfolders (a plain
folder of classes is one split, train). val_split=0.1 or val_per_class=N (seed=, val_rule=) describe the
part of the training split that `features` / `probe` would hold out with the same keys
(--split val) or the rest (--split train).

examples:
  longtail stats synthetic_images
  longtail stats photos/ --split val val_per_class=5
  longtail stats cifar100_lt --root hf:cifar100 data_options.ir=50 --json
  longtail stats synthetic_features           # the offline demo benchmark (feature space)
  longtail stats cifar10_ir100 --root cifar10-jpeg.zip --plot c10.png
  longtail stats train.txt --root /data/imagenet --option class_names=names.txt
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from longtail.config import add_option_argument, add_override_arguments

    parser.add_argument("data", metavar="DATA", help="dataset spec or feature file (see above)")
    add_override_arguments(parser, "data_options.ir=50 many=50")
    parser.add_argument("--root", help="dataset root (presets) or image root (list/CSV files)")
    parser.add_argument("--split", help="split to describe (default: train)")
    add_option_argument(parser, help="dataset option (= data_options.KEY=VALUE), e.g. ir=50 seed=0 "
                                     "class_names=names.txt on_corrupt=skip")
    parser.add_argument("--many", type=int, help="many-shot: more than this many images (default 100)")
    parser.add_argument("--few", type=int, help="few-shot: fewer than this many images (default 20)")
    parser.add_argument("--plot", type=Path, help="where to save the class-count plot (default: <data>_class_counts.png)")
    parser.add_argument("--no-plot", action="store_true", help="do not save the plot")
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON")


def build_config(args: argparse.Namespace):
    """`data.stats.StatsConfig` from DATA, the flags (sugar) and the KEY=VALUE overrides."""
    from longtail.config import apply_overrides, command_overrides
    from longtail.data.stats import StatsConfig

    overrides = command_overrides(args.overrides, {"root": args.root, "split": args.split, "many": args.many,
                                                   "few": args.few}, {"data_options": args.option})
    return apply_overrides(StatsConfig(args.data), overrides)


def free_path(path: Path) -> Path:
    """`path`, or `path` with _1, _2, ... before the suffix when it exists (never overwrite)."""
    candidate, k = path, 0
    while candidate.exists():
        k += 1
        candidate = path.with_name(f"{path.stem}_{k}{path.suffix}")
    return candidate


def run(args: argparse.Namespace) -> int:
    from longtail.data.stats import dataset_stats
    from longtail.eval.plots import save_count_plot
    from longtail.io import check_writable, to_jsonable

    cfg = build_config(args)
    if args.plot and not args.no_plot:
        check_writable(args.plot, "--plot", folder=False)
    name, stats = dataset_stats(cfg)
    plot = None
    if not args.no_plot:
        plot = free_path(args.plot or Path(f"{name}_class_counts.png"))
        save_count_plot(stats, plot, name, cfg.split)
    if args.json:
        print(json.dumps(to_jsonable({"data": name, **stats.to_dict()}), indent=2))
        if plot:
            print(f"plot saved to {plot}", file=sys.stderr)
        return 0
    from longtail.data.features import SUFFIXES

    shown = name if cfg.split in name or Path(cfg.data).suffix in SUFFIXES else f"{name} ({cfg.split})"
    print(f"data              {shown}")
    for line in stats.summary_lines(cfg.split):
        print(line)
    if stats.group_counts is not None:
        print("groups follow the reference counts given with the data (e.g. LIFT's CIFAR-100 IR-100 rule)")
    if plot:
        print(f"plot saved to {plot}")
    return 0
