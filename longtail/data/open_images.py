"""`open_images(spec)`: one entry point for image data, from a preset name or any source.

A spec is a dataset preset (`longtail.data.presets.DATASETS`, e.g. `cifar100_ir100`), an image
folder, a zip, a list file, a CSV or `hf:<hub id>` (`longtail.data.sources`). Every source can
be made long-tailed on the fly with `ir` / `profile` / `sampling_strategy` options.
"""

from __future__ import annotations

import os
from typing import Any

from longtail.data.images import ImageDataset, check_on_corrupt, check_options, finish
from longtail.data.presets import DATASETS, long_tailed
from longtail.data.profiles import check_selection
from longtail.data.sources import SOURCES, check_split, detect_source, source_options

# Options that make any source long-tailed (see `longtail.data.presets.long_tailed`).
LT_OPTIONS = ("ir", "imbalance_ratio", "profile", "sampling_strategy", "seed", "head_fraction", "selection")


def open_images(
    spec: str | os.PathLike, split: str = "train", root: str | os.PathLike | None = None,
    **options: Any,
) -> ImageDataset:
    """Open a dataset from a preset name, folder, list file, CSV, zip or `hf:` spec.

    `root` is the dataset root for presets and the image root for list/CSV files (default:
    the list file's folder). Options: `on_corrupt` ('error' or 'skip'), `progress`, the
    source's own options (e.g. `class_names`, `label_column`, `empty_classes`) and LT_OPTIONS.
    An unknown option is a one-line ConfigError listing every valid one, raised before any
    image is read.

    Splits: a folder (or zip) with `train/` and `test/` subfolders holds two splits and
    `split` picks one (`open_images("data/", split="test")` reads `data/test`); a plain
    folder of classes, a list file or a CSV is one set of images, the training split, and
    asking it for another split is a DataError (validation: `longtail.data.splits`).
    """
    spec = str(spec)
    if spec in DATASETS:
        return DATASETS.get(spec)(split, root, **options)
    kind = detect_source(spec, DATASETS.names())
    check_options(f"{kind} source", options, [*source_options(kind), *LT_OPTIONS, "on_corrupt", "progress"])
    lt = {k: options.pop(k) for k in LT_OPTIONS if k in options}
    check_selection(lt.get("selection", "ldam"))
    check_split(kind, spec, split)
    on_corrupt = check_on_corrupt(options.pop("on_corrupt", "error"))
    progress = options.pop("progress", True)
    dataset = SOURCES.get(kind)(spec, split, root, **options)
    if lt:
        dataset = long_tailed(dataset, **lt)
    return finish(dataset, on_corrupt, progress)


def open_matched(
    spec: str | os.PathLike, split: str, train_names: list[str] | None = None,
    root: str | os.PathLike | None = None, **options: Any,
) -> ImageDataset:
    """Split `split` of `spec` with its labels indexed by the training classes, matched by name
    (a test folder without a tail class must not shift every label after it). `train_names`
    default: the class names of the spec's own training split (read from its listing; presets
    keep their splits' classes consistent themselves). A training class without images in the
    split is warned about once; a class unknown to training is a one-line DataError."""
    spec = str(spec)
    dataset = open_images(spec, split=split, root=root, **options)
    if train_names is None:
        if split == "train" or spec in DATASETS:
            return dataset
        listing = {k: v for k, v in options.items() if k not in (*LT_OPTIONS, "on_corrupt", "progress")}
        train_names = open_images(spec, split="train", root=root, progress=False, **listing).class_names
    return dataset.with_classes(train_names, where=f"{spec} ({split} split)")


def test_split_of(spec: str | os.PathLike) -> str:
    """The split to read when `spec` is given as a test set: 'test' for a preset or a source
    with split folders, 'train' (the whole source) for a plain folder, zip, list or CSV."""
    from longtail.data.sources import source_splits

    spec = str(spec)
    if spec in DATASETS:
        return "test"
    return "train" if source_splits(spec) == frozenset() else "test"
