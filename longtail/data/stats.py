"""Class-count statistics of a long-tailed training set: imbalance, head-tail ratio, shot groups.

`class_stats(counts, ...)` works on counts; `dataset_stats(StatsConfig(...))` opens a dataset
spec or a feature file first (what `longtail stats` prints).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from longtail.errors import ConfigError, DataError

MANY_THRESHOLD = 100  # many-shot: n_c > 100 training images
FEW_THRESHOLD = 20  # few-shot: n_c < 20; medium: 20 <= n_c <= 100
GROUPS = ("many", "medium", "few")


def check_thresholds(many: int, few: int) -> None:
    """The shot-group thresholds must be ordered, 0 <= few <= many (one-line ConfigError)."""
    if not 0 <= few <= many:
        raise ConfigError(f"few ({few}) must not exceed many ({many}) and be >= 0")


def assign_groups(
    counts: np.ndarray, many_threshold: int = MANY_THRESHOLD, few_threshold: int = FEW_THRESHOLD
) -> np.ndarray:
    """Shot group of each class: 'many' (> many), 'few' (< few), else 'medium'."""
    counts = np.asarray(counts)
    groups = np.full(counts.shape, "medium", dtype=object)
    groups[counts > many_threshold] = "many"
    groups[counts < few_threshold] = "few"
    return groups.astype(str)


@dataclass(frozen=True)
class ClassStats:
    """Statistics of per-class training counts (see docs/methods.md §0, §2.2 and §7)."""

    counts: np.ndarray
    class_names: tuple[str, ...]
    groups: np.ndarray
    many_threshold: int = MANY_THRESHOLD
    few_threshold: int = FEW_THRESHOLD
    group_counts: np.ndarray | None = None  # counts the groups were assigned from, if overridden

    @property
    def num_classes(self) -> int:
        return int(self.counts.size)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def n_max(self) -> int:
        return int(self.counts.max())

    @property
    def n_min(self) -> int:
        return int(self.counts.min())

    @property
    def imbalance_ratio(self) -> float:
        """rho = n_max / n_min (inf when a class is empty)."""
        return float(self.n_max / self.n_min) if self.n_min > 0 else float("inf")

    @property
    def head_tail_ratio(self) -> float:
        """eta = H / T with H = #classes with > many_threshold images, T = C - H (inf if T = 0)."""
        head = int((self.counts > self.many_threshold).sum())
        tail = self.num_classes - head
        return head / tail if tail > 0 else float("inf")

    @property
    def empty_classes(self) -> list[str]:
        return [self.class_names[i] for i in np.flatnonzero(self.counts == 0)]

    def group_sizes(self) -> dict[str, int]:
        return {g: int((self.groups == g).sum()) for g in GROUPS}

    def to_dict(self) -> dict:
        """JSON-ready summary (written to data_stats.json)."""
        return {
            "num_classes": self.num_classes,
            "total": self.total,
            "n_max": self.n_max,
            "n_min": self.n_min,
            "imbalance_ratio": self.imbalance_ratio,
            "head_tail_ratio": self.head_tail_ratio,
            "many_threshold": self.many_threshold,
            "few_threshold": self.few_threshold,
            "group_sizes": self.group_sizes(),
            "empty_classes": self.empty_classes,
            "class_names": list(self.class_names),
            "counts": self.counts.tolist(),
            "groups": self.groups.tolist(),
            "group_counts": None if self.group_counts is None else self.group_counts.tolist(),
        }

    def summary_lines(self, split: str = "train") -> list[str]:
        """Human-readable lines for `longtail stats` (`split`: which samples are counted)."""
        sizes = self.group_sizes()
        samples = "training samples" if split == "train" else f"{split} samples"
        lines = [
            f"classes           {self.num_classes}",
            f"{samples:<17} {self.total}",
            f"largest / smallest class  {self.n_max} / {self.n_min}",
            f"imbalance ratio   {self.imbalance_ratio:.2f}",
            f"head-tail ratio   {self.head_tail_ratio:.3f}"
            f"  (head = classes with > {self.many_threshold} images)",
        ]
        for g in GROUPS:
            note = "" if sizes[g] else "  (empty)"
            lines.append(f"{g:<7} classes   {sizes[g]}{note}")
        if self.empty_classes:
            lines.append(f"EMPTY classes: {', '.join(self.empty_classes[:10])}")
        return lines


def class_stats(
    counts: np.ndarray,
    class_names: list[str] | None = None,
    *,
    group_counts: np.ndarray | None = None,
    many_threshold: int = MANY_THRESHOLD,
    few_threshold: int = FEW_THRESHOLD,
) -> ClassStats:
    """Build ClassStats; `group_counts` assigns groups from other counts (LIFT's CIFAR IR-100 rule)."""
    check_thresholds(many_threshold, few_threshold)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or counts.size == 0:
        raise DataError(f"class counts must be a non-empty 1-D array, got shape {counts.shape}")
    if class_names is None:
        class_names = [f"class_{i}" for i in range(counts.size)]
    if len(class_names) != counts.size:
        raise DataError(
            f"{len(class_names)} class names given for {counts.size} classes"
        )
    reference = counts if group_counts is None else np.asarray(group_counts)
    if reference.shape != counts.shape:
        raise DataError(
            f"group_counts has {reference.size} classes, the data has {counts.size}"
        )
    return ClassStats(
        counts=counts,
        class_names=tuple(class_names),
        groups=assign_groups(reference, many_threshold, few_threshold),
        many_threshold=many_threshold,
        few_threshold=few_threshold,
        group_counts=None if group_counts is None else reference.astype(np.int64),
    )


def require_nonempty(counts: np.ndarray, class_names: list[str] | None = None) -> None:
    """Raise DataError naming the first class with no training samples."""
    counts = np.asarray(counts)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        unnamed = not class_names or list(class_names) == [f"class_{i}" for i in range(counts.size)]
        if unnamed and counts[-1] > 0:
            # issue 22 item 9: without class names the classes are 0..largest label, so a label
            # out of range shows up as a gap of empty classes below it: say that, not 'empty class'
            top, n = counts.size - 1, int(counts[-1])
            gap = str(empty[0]) if empty.size == 1 else f"{empty.size} labels, {empty[0]} to {empty[-1]}"
            raise DataError(
                f"label {top} ({n} sample{'s' if n != 1 else ''}) lies above labels with no samples ({gap}): "
                f"without class names the classes are 0..{top}, so label {top} looks out of range; "
                "fix the labels, or add class_names to the file"
            )
        name = class_names[empty[0]] if class_names else f"class_{empty[0]}"
        raise DataError(
            f"class '{name}' has no training samples ({empty.size} empty classes in total)"
        )


@dataclass
class StatsConfig:
    """What `dataset_stats` describes: a dataset (with options) or a feature file, which split or
    validation part of it, and the group thresholds."""

    data: str  # a dataset spec (preset, folder, list file, CSV, zip, hf:ID) or a feature file
    root: str | None = None
    split: str = "train"
    data_options: dict[str, Any] = field(default_factory=dict)
    val_split: float | None = None  # describe a validation part drawn from the training split...
    val_per_class: int = 0  # ... or N per class (longtail.data.splits), with split train | val
    val_rule: str = "stratified"  # which: stratified (seeded by `seed`) | first (file order)
    seed: int = 0  # seed of that draw
    many: int = MANY_THRESHOLD  # many-shot: more than this many training images
    few: int = FEW_THRESHOLD  # few-shot: fewer than this many training images

    def __post_init__(self) -> None:
        from longtail.data.splits import check_part

        check_thresholds(self.many, self.few)
        check_part(self.split, self.validation_rule())

    def validation_rule(self):
        """The validation rule of val_split / val_per_class / val_rule / seed (inactive when neither size is set)."""
        from longtail.data.splits import ValRule

        return ValRule(self.val_split, self.val_per_class, self.seed, self.val_rule)


def dataset_stats(cfg: StatsConfig) -> tuple[str, ClassStats]:
    """(name, class statistics) of the data `cfg` names: a feature file's labels (or the part of
    it a validation rule draws), or a dataset split's counts read without decoding an image; the
    groups follow reference counts when the data carries them (LIFT's CIFAR-100 rule)."""
    from longtail.data.open_features import is_feature_spec, open_features
    from longtail.data.splits import open_part, split_features

    rule = cfg.validation_rule()
    if is_feature_spec(cfg.data):
        if cfg.data_options:
            raise ConfigError(f"{cfg.data} is a feature file: it takes no dataset options")
        if cfg.split != "train" and not rule.active:
            raise ConfigError(f"{cfg.data} is one feature file, it has no '{cfg.split}' split "
                              f"(val_split=0.1 with split=val describes a part drawn from it)")
        fs = open_features(cfg.data)
        if rule.active:
            fs = split_features(fs, rule)[0 if cfg.split == "train" else 1]
        name, names, counts, group_counts = Path(cfg.data).stem, fs.names(), fs.class_counts(), fs.meta.get("group_counts")
    else:
        ds, _ = open_part(cfg.data, cfg.split, cfg.root, rule, **cfg.data_options)
        name, names, counts, group_counts = ds.name, ds.class_names, ds.class_counts(), ds.group_counts
    return name, class_stats(counts, names, group_counts=group_counts, many_threshold=cfg.many, few_threshold=cfg.few)
