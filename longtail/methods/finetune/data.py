"""The data of a fine-tuning run: its splits, the LT-Soups balanced subset, step-indexed batches.

Batch b of epoch e depends only on (seed, sampler, e, b), so a run restarted at any optimizer step
sees exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from longtail.data.sampling import EpochSampler, RandomSampler
from longtail.errors import DataError


class EpochBatches(Sampler[list[int]]):
    """Index batches of epoch `epoch` from batch `start` on, cut from the epoch's index list: a
    shuffle (no `sampler`) or `sampler.draw(epoch, ...)` (`longtail.data.sampling`), a function of
    (seed, epoch) only and identical on every process (accelerate splits each batch across them).

    n: draws per epoch (the sampler's `epoch_length`). drop_last=False keeps the incomplete last
    batch (LIFT); drop_last=True drops it (LT-Soups), and an epoch shorter than one batch then
    gives one batch per epoch drawn with replacement.
    There is deliberately no `set_epoch`: accelerate would call it with its own counter.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start: int = 0,
                 drop_last: bool = False, sampler: EpochSampler | None = None) -> None:
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.start, self.drop_last = start, drop_last
        self.sampler = sampler if sampler is not None else RandomSampler(np.zeros(n, dtype=np.int64), seed)

    @staticmethod
    def per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
        """Batches in one epoch."""
        if drop_last:
            return max(n // batch_size, 1)
        return math.ceil(n / batch_size)

    def __len__(self) -> int:
        return self.per_epoch(self.n, self.batch_size, self.drop_last) - self.start

    def __iter__(self) -> Iterator[list[int]]:
        bs = self.batch_size
        short = self.drop_last and self.n < bs
        if short and self.start:
            return
        order = self.sampler.draw(self.epoch, bs if short else self.n).tolist()
        for b in range(self.start, self.per_epoch(self.n, bs, self.drop_last)):
            yield order[b * bs:(b + 1) * bs]


def subset_counts(counts: np.ndarray, exponent: int | None) -> np.ndarray:
    """n'_c = min(n_c, n_min 2^i) (docs/methods.md §2.4); None or i < 0: the whole training set."""
    counts = np.asarray(counts, dtype=np.int64)
    if exponent is None or exponent < 0:
        return counts.copy()
    return np.minimum(counts, int(counts.min()) * 2**exponent)


def subset_indices(labels: np.ndarray, exponent: int | None, seed: int) -> np.ndarray:
    """Per class n'_c indices uniformly without replacement (`default_rng(seed)`), sorted."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    if (counts == 0).any():
        raise DataError(f"class {int(np.argmin(counts))} has no training images")
    rng = np.random.default_rng(seed)
    target = subset_counts(counts, exponent)
    picks = [rng.choice(np.flatnonzero(labels == c), size=int(n), replace=False) for c, n in enumerate(target)]
    return np.sort(np.concatenate(picks))


def open_split(cfg, split: str, train_names: list[str] | None = None):
    """One split through `open_images` (list files from train_list / test_list). An LT profile
    given as options of a folder / zip / list source (`--option ir=100`) shapes the training
    split only: test and validation splits stay as they are (presets handle their splits).
    With `train_names`, the split's labels are indexed by those classes (matched by name)."""
    from longtail.data.open_images import LT_OPTIONS, open_images
    from longtail.data.presets import DATASETS

    options = dict(cfg.data_options)
    if split != "train" and cfg.dataset not in DATASETS:
        options = {k: v for k, v in options.items() if k not in LT_OPTIONS}
    list_file = cfg.train_list if split == "train" else cfg.test_list
    if list_file:
        options["list_file"] = list_file
    dataset = open_images(cfg.dataset, split=split, root=cfg.root, **options)
    if train_names is None:
        return dataset
    return dataset.with_classes(train_names, where=f"{cfg.test_list or cfg.dataset} ({split} split)")


@dataclass
class Splits:
    """train: what is trained on (the subset); full_train: its source (counts for the groups);
    val: selection images (or None); test: evaluation images (the test split minus val);
    validation: the record of a per-class draw (rule, source, seed, counts), or None."""

    train: Any
    full_train: Any
    val: Any | None
    test: Any | None
    validation: dict[str, Any] | None = None


def open_splits(cfg, test: bool = True) -> Splits:
    """The run's splits; the test split is opened only with `test` (or to carve val out of it).

    Validation (docs/finetune.md): a split name (val_split=val), or drawn per class
    (val_split=FRACTION or val_per_class=N, val_rule=stratified | first: `longtail.data.splits`)
    from val_from: 'test' holds out test images that are then not tested on, 'train' removes
    them from the training images.
    """
    from longtail.data.splits import ValRule

    if not test:
        check_test_split(cfg)  # a source without a test split fails now, not after training
    full = open_split(cfg, "train")
    val = test_set = record = None
    fraction = cfg.val_fraction
    rule = ValRule(fraction, cfg.val_per_class, cfg.seed, cfg.val_rule)
    if cfg.val_from == "train" and cfg.val_drawn:
        rest, val_idx, record = rule.draw(full.labels, full.num_classes)
        if val_idx.size == 0:
            raise DataError(f"{cfg.dataset}: val_from=train leaves no validation image (every class has one)")
        val, full = full.subset(val_idx), full.subset(rest)
    train = full
    if cfg.balance_exponent is not None:
        train = full.subset(subset_indices(full.labels, cfg.balance_exponent, cfg.subset_seed))
    carve = cfg.val_from == "test" and cfg.val_drawn
    if test or carve:
        test_set = open_split(cfg, cfg.test_split, full.class_names)
    if cfg.val_split is not None and fraction is None:
        val = open_split(cfg, cfg.val_split, full.class_names)
    elif carve:
        rest, val_idx, record = rule.draw(test_set.labels, test_set.num_classes)
        val, test_set = test_set.subset(val_idx), test_set.subset(rest)
    if record is not None:
        record = {**record, "from": cfg.val_from, "num_val": len(val)}
    return Splits(train, full, val, test_set, record)


def check_test_split(cfg) -> None:
    """DataError when the data is a folder, zip, list or CSV without the test split."""
    from longtail.data.presets import DATASETS
    from longtail.data.sources import missing_split_error, no_splits_error, source_splits

    if cfg.test_list or cfg.dataset in DATASETS:
        return
    splits = source_splits(cfg.dataset)
    if splits is None or cfg.test_split in splits or (not splits and cfg.test_split == "train"):
        return
    err = missing_split_error(cfg.dataset, cfg.test_split, set(splits)) if splits else \
        no_splits_error(cfg.dataset, cfg.test_split)
    raise DataError(f"fit evaluates on the '{cfg.test_split}' split: {err}")


