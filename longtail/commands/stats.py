"""`longtail stats`: class-count statistics of a dataset or feature file, and a sorted-count plot."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
folder of classes is one split, train). val_split=0.1 or val_per_class=N (seed=) describe the
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


@dataclass
class StatsConfig:
    """What `longtail stats` describes: a dataset (with options) or a feature file, and the group thresholds."""

    data: str
    root: str | None = None
    split: str = "train"
    data_options: dict[str, Any] = field(default_factory=dict)
    val_split: float | None = None  # describe a validation part drawn from the training split...
    val_per_class: int = 0  # ... or N per class (longtail.data.splits), with --split train | val
    seed: int = 0  # seed of that draw
    many: int = 100  # many-shot: more than this many training images
    few: int = 20  # few-shot: fewer than this many training images

    def __post_init__(self) -> None:
        from longtail.data.splits import check_part
        from longtail.data.stats import check_thresholds

        check_thresholds(self.many, self.few)

        check_part(self.split, self.val_rule())

    def val_rule(self):
        """The validation rule of val_split / val_per_class / seed (inactive when neither is set)."""
        from longtail.data.splits import ValRule

        return ValRule(self.val_split, self.val_per_class, self.seed)


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


def build_config(args: argparse.Namespace) -> StatsConfig:
    """StatsConfig from DATA, the flags (sugar) and the KEY=VALUE overrides."""
    from longtail.config import apply_overrides, command_overrides

    overrides = command_overrides(args.overrides, {"root": args.root, "split": args.split, "many": args.many,
                                                   "few": args.few}, {"data_options": args.option})
    return apply_overrides(StatsConfig(args.data), overrides)


def _load_counts(cfg: StatsConfig) -> tuple[str, list[str], object, object]:
    """(name, class names, counts, group_counts) of the data."""
    from longtail.data.open_features import is_feature_spec, open_features

    if is_feature_spec(cfg.data):
        if cfg.data_options:
            from longtail.errors import ConfigError

            raise ConfigError(f"{cfg.data} is a feature file: it takes no dataset options")
        if cfg.split != "train" and not cfg.val_rule().active:
            from longtail.errors import ConfigError

            raise ConfigError(f"{cfg.data} is one feature file, it has no '{cfg.split}' split "
                              f"(val_split=0.1 --split val describes a part drawn from it)")
        fs = open_features(cfg.data)
        if cfg.val_rule().active:
            from longtail.data.splits import split_features

            fs = split_features(fs, cfg.val_rule())[0 if cfg.split == "train" else 1]
        group_counts = fs.meta.get("group_counts")
        return Path(cfg.data).stem, fs.names(), fs.class_counts(), group_counts
    from longtail.data.splits import open_part

    ds, _ = open_part(cfg.data, cfg.split, cfg.root, cfg.val_rule(), **cfg.data_options)
    return ds.name, ds.class_names, ds.class_counts(), ds.group_counts


def free_path(path: Path) -> Path:
    """`path`, or `path` with _1, _2, ... before the suffix when it exists (never overwrite)."""
    candidate, k = path, 0
    while candidate.exists():
        k += 1
        candidate = path.with_name(f"{path.stem}_{k}{path.suffix}")
    return candidate


def save_count_plot(stats, path: Path, title: str, split: str = "train") -> Path:
    """Bar chart of counts sorted large -> small, log y, many/few thresholds as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from longtail.io import atomic_write

    order = np.argsort(-stats.counts, kind="stable")
    colours = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    ranks = np.arange(stats.num_classes)
    sorted_groups, sorted_counts = stats.groups[order], np.maximum(stats.counts[order], 0.8)
    # one filled staircase per run of same-group ranks: as fast at 8,142 classes as at 10
    # (one bar per class took ~15 s to draw there); runs, since group_counts may interleave groups
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    labelled = set()
    for start, stop in zip(starts, np.r_[starts[1:], stats.num_classes]):
        group = str(sorted_groups[start])
        label = None if group in labelled else f"{group} ({int((stats.groups == group).sum())})"
        labelled.add(group)
        ax.stairs(sorted_counts[start:stop], ranks[start:stop + 1] if stop < stats.num_classes
                  else np.r_[ranks[start:], stats.num_classes], baseline=0.8, fill=True,
                  color=colours.get(group, "tab:gray"), label=label)
    ax.axhline(stats.many_threshold + 0.5, color="k", ls="--", lw=0.8,
               label=f"many: > {stats.many_threshold}")
    ax.axhline(stats.few_threshold - 0.5, color="k", ls=":", lw=0.8,
               label=f"few: < {stats.few_threshold}")
    ax.set_yscale("log")
    ax.set_xlabel("class rank (largest first)")
    ax.set_ylabel("training images" if split == "train" else f"{split} images")
    ax.set_title(f"{title}: IR {stats.imbalance_ratio:.1f}, head-tail ratio {stats.head_tail_ratio:.2f}")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def run(args) -> int:
    from longtail.data.stats import class_stats
    from longtail.io import to_jsonable

    cfg = build_config(args)
    if args.plot and not args.no_plot:
        from longtail.io import check_writable

        check_writable(args.plot, "--plot", folder=False)
    name, names, counts, group_counts = _load_counts(cfg)
    stats = class_stats(
        counts, names, group_counts=group_counts, many_threshold=cfg.many, few_threshold=cfg.few
    )
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
    if group_counts is not None:
        print("groups follow the reference counts given with the data (e.g. LIFT's CIFAR-100 IR-100 rule)")
    if plot:
        print(f"plot saved to {plot}")
    return 0
