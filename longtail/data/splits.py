"""Validation splits drawn per class from a split (training, or a test split): one vocabulary.

How many: `val_split=FRACTION` (0 < f < 1: about f of each class) or `val_per_class=N` (N
images of each class). Either way a class always keeps at least one sample in the rest: a
class of n samples gives min(k, n - 1) to validation, so a class with a single sample has no
validation sample. With a fraction, every class of two or more samples gives at least one
(k = max(1, round(f n))), so the tail is represented in validation.

Which: `val_rule=stratified` (the default) is a seeded draw: one sort by (label, random key)
from `numpy.random.default_rng(seed)`, the first k_c samples of class c in that order are
validation. `val_rule=first` takes the first k_c samples of each class in file order, no seed:
the protocol of LT-Soups and of CIFAR benchmarks that hold out the first test images of each
class. The same labels and rule give the same split; the record (`ValRule.record`) is what a
run or feature file stores to say so.

`stratified_folds` makes k cross-validation folds by the same kind of draw, every class in
every training part (method=auto without a validation set).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from longtail.errors import ConfigError, DataError

TRAIN_PARTS = ("train", "val")  # the parts of a training split a rule divides it into
VAL_RULES = ("stratified", "first")  # val_rule: a seeded stratified draw | the first of each class in file order


@dataclass(frozen=True)
class ValRule:
    """How many validation samples per class (`fraction` = val_split or `per_class` =
    val_per_class) and which (`order` = val_rule: stratified with `seed`, or first in file order)."""

    fraction: float | None = None
    per_class: int = 0
    seed: int = 0
    order: str = "stratified"

    def __post_init__(self) -> None:
        check_val_options(self.fraction, self.per_class, order=self.order)

    @property
    def active(self) -> bool:
        """Whether the rule draws anything (val_split or val_per_class was set)."""
        return self.fraction is not None or self.per_class > 0

    def describe(self) -> str:
        """'val_split=0.1' or 'val_per_class=5' (or 'none'), plus ', val_rule=first' for that rule."""
        if not self.active:
            return "none"
        size = f"val_split={self.fraction:g}" if self.fraction is not None else f"val_per_class={self.per_class}"
        return size if self.order == "stratified" else f"{size}, val_rule={self.order}"

    def val_counts(self, counts: np.ndarray) -> np.ndarray:
        """Validation samples per class for class sizes `counts` (each class keeps >= 1)."""
        counts = np.asarray(counts, dtype=np.int64)
        if self.fraction is not None:
            wanted = np.maximum(np.floor(self.fraction * counts + 0.5).astype(np.int64), 1)
        else:
            wanted = np.full_like(counts, self.per_class)
        return np.clip(np.minimum(wanted, counts - 1), 0, None)

    def draw(self, labels: np.ndarray, num_classes: int | None = None
             ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """(train_idx, val_idx, record): sorted, disjoint indices covering every sample."""
        if not self.active:
            raise ConfigError("no validation rule: set val_split=FRACTION or val_per_class=N")
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels.size == 0:
            raise DataError("cannot draw a validation split from an empty training set")
        counts = np.bincount(labels, minlength=num_classes or 0)
        k = self.val_counts(counts)
        if self.order == "first":
            order = np.argsort(labels, kind="stable")  # by label, then file order
        else:
            key = np.random.default_rng(self.seed).random(labels.size)
            order = np.lexsort((key, labels))  # by label, then by the random key
        starts = np.cumsum(counts) - counts
        rank = np.arange(labels.size) - starts[labels[order]]  # position within its class
        is_val = np.zeros(labels.size, dtype=bool)
        is_val[order] = rank < k[labels[order]]
        train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        return train_idx, val_idx, self.record(k, val_idx)

    def record(self, val_counts: np.ndarray, val_idx: np.ndarray) -> dict[str, Any]:
        """What a run stores: rule, seed, per-class validation counts and a hash of the indices."""
        digest = hashlib.sha256(np.asarray(val_idx, dtype=np.int64).tobytes()).hexdigest()[:16]
        return {"rule": self.describe(), "from": "train", "seed": self.seed if self.order == "stratified" else None,
                "num_val": int(val_counts.sum()), "val_counts": val_counts.tolist(),
                "val_index_sha256": digest}


def first_per_class(labels: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """(val, rest) indices: the first `per_class` samples of each class in file order (each class
    keeps one in the rest): `val_rule=first`, as the CIFAR benchmarks hold out test images."""
    rest, val, _ = ValRule(per_class=per_class, order="first").draw(labels)
    return val, rest


def stratified_folds(labels: np.ndarray, k: int, seed: int = 0, num_classes: int | None = None
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train_idx, held_idx) pairs for cross-validation: stratified, seeded, and every class
    with a sample is in every training part.

    Each class's samples are put in a seeded random order; the r-th goes to held-out fold
    (o_c + r) mod k, o_c a seeded random offset per class. A class of n >= k samples is thus
    dealt round-robin (floor(n/k) or ceil(n/k) held out per fold, so each training part keeps
    n - ceil(n/k) >= 1); a class of 2 <= n < k samples has one sample held out in n of the
    folds and none in the others (each training part keeps >= n - 1 >= 1); a class of a single
    sample is in every training part and in no held-out part (it is never scored).
    DataError when some fold would hold nothing out (e.g. every class has one sample).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ConfigError(f"cross-validation needs an integer number of folds >= 2, got {k!r}")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size == 0:
        raise DataError("cannot make cross-validation folds of an empty training set")
    counts = np.bincount(labels, minlength=num_classes or 0)
    rng = np.random.default_rng(seed)
    key = rng.random(labels.size)
    offsets = rng.integers(k, size=counts.size)
    order = np.lexsort((key, labels))  # by label, then by the random key
    starts = np.cumsum(counts) - counts
    rank = np.arange(labels.size) - starts[labels[order]]  # position within its class
    fold = np.empty(labels.size, dtype=np.int64)
    fold[order] = (offsets[labels[order]] + rank) % k
    fold[counts[labels] == 1] = -1  # a single sample stays in every training part
    out = [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(int(k))]
    if any(held.size == 0 for _, held in out):
        raise DataError(f"{k}-fold cross-validation leaves a fold with nothing held out "
                        f"({int((counts > 1).sum())} classes have two or more samples, "
                        f"{int(counts[counts > 1].sum())} samples in all): use fewer folds or a validation set")
    return out


def check_val_options(fraction: float | None, per_class: int, what: str = "", order: str = "stratified") -> None:
    """One-line ConfigError unless at most one of val_split (0 < f < 1) / val_per_class (>= 0) is
    set and val_rule is one of VAL_RULES."""
    prefix = f"{what}: " if what else ""
    if order not in VAL_RULES:
        raise ConfigError(f"{prefix}val_rule must be one of {', '.join(VAL_RULES)}, got {order!r}")
    if fraction is not None and not (isinstance(fraction, (int, float)) and math.isfinite(fraction)
                                     and 0 < fraction < 1):
        raise ConfigError(f"{prefix}val_split must be a fraction between 0 and 1 (e.g. 0.1), got {fraction!r}")
    if per_class < 0:
        raise ConfigError(f"{prefix}val_per_class must be >= 0 (0: off), got {per_class}")
    if fraction is not None and per_class:
        raise ConfigError(f"{prefix}set val_split or val_per_class, not both")


def check_part(split: str, rule: ValRule) -> None:
    """With an active rule only 'train' (the rest) and 'val' (the drawn part) exist."""
    if rule.active and split not in TRAIN_PARTS:
        raise ConfigError(f"{rule.describe()} divides the training split into train and val; "
                          f"split '{split}' is not one of them (drop {rule.describe().split('=')[0]} "
                          f"for split={split})")


def split_features(features, rule: ValRule):
    """(train part, val part, record) of a FeatureSet; class names, prototypes and meta kept.

    The val part's `source` is '<source>#val' (it is no file of its own); the train part keeps
    the file's source and gets `meta['val_split']` = the record.
    """
    from dataclasses import replace

    train_idx, val_idx, record = rule.draw(features.labels, features.num_classes)
    if val_idx.size == 0:
        raise DataError(f"{features.source}: {rule.describe()} leaves no validation sample "
                        f"(every class has a single sample)")
    record = {**record, "from": features.source}
    meta = {**features.meta, "val_split": record}
    train = replace(features, features=features.features[train_idx], labels=features.labels[train_idx],
                    meta=meta)
    val = replace(features, features=features.features[val_idx], labels=features.labels[val_idx],
                  meta=meta, source=f"{features.source}#val")
    return train, val, record


def open_part(spec: str, split: str, root: Any, rule: ValRule, **options: Any):
    """(ImageDataset, record or None): `open_images(spec, split)`, or with an active rule the
    train / val part of the training split (disjoint, per the rule)."""
    from longtail.data.open_images import open_images, open_matched

    if not rule.active:  # a test / val split: labels indexed by the training classes
        return open_matched(spec, split, root=root, **options), None
    check_part(split, rule)
    full = open_images(spec, split="train", root=root, **options)
    train_idx, val_idx, record = rule.draw(full.labels, full.num_classes)
    if val_idx.size == 0:
        raise DataError(f"{spec}: {rule.describe()} leaves no validation image (every class has one image)")
    part = full.subset(val_idx if split == "val" else train_idx, name=f"{full.name}_{split}")
    return part, {**record, "from": f"{spec} (train split)", "part": split}
