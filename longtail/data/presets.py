"""Named datasets (`DATASETS` registry): builder(split, root=None, **options) -> ImageDataset.

- synthetic_images: generated offline set (default for demos/tests).
- cifar10_lt / cifar100_lt: LDAM/LIFT CIFAR-LT (exponential profile, NumPy seed 0, natural
  class order); test = the full balanced test set.
- imagenet_lt / places_lt / inat2018: the official split lists over the user's images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from longtail.data.images import ImageDataset, finish, open_images
from longtail.data.profiles import (
    exponential_profile,
    make_profile,
    resolve_sampling_strategy,
    subsample_per_class,
)
from longtail.data.sources import open_folder, open_list
from longtail.data.synthetic_images import (
    SyntheticImagesConfig,
    ensure_synthetic_images,
)
from longtail.data.synthetic_images import (
    class_names as synthetic_class_names,
)
from longtail.errors import ConfigError, DataError
from longtail.registry import Registry

DATASETS: Registry = Registry("dataset")

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)


def long_tailed(
    dataset: ImageDataset, ir: float | None = None, *, imbalance_ratio: float | None = None,
    profile: str = "exp", sampling_strategy: Any = None, seed: int = 0,
    head_fraction: float = 0.5, n_max: int | None = None,
) -> ImageDataset:
    """A long-tailed subset of any dataset: a count profile (ir, profile) or a sampling_strategy.

    n_max defaults to the smallest class count (the per-class size of a balanced source), so
    every class can supply its target. Selection is the seeded LDAM/LIFT subsampler.
    """
    counts = dataset.class_counts()
    ir = ir if ir is not None else imbalance_ratio
    if sampling_strategy is not None:
        if isinstance(sampling_strategy, str):  # JSON from the CLI, e.g. '{"cat": 10}'
            try:
                sampling_strategy = json.loads(sampling_strategy)
            except json.JSONDecodeError as err:
                raise ConfigError(f"sampling_strategy is not valid JSON: {err}") from err
        targets = resolve_sampling_strategy(sampling_strategy, counts, dataset.class_names)
    elif ir is not None:
        kwargs = {"head_fraction": head_fraction} if profile == "step" else {}
        targets = make_profile(profile, int(n_max or counts.min()), counts.size, float(ir), **kwargs)
    else:
        raise ConfigError("long_tailed needs ir (with profile) or sampling_strategy")
    suffix = f"_ir{float(ir):g}" if sampling_strategy is None else "_lt"
    return dataset.subset(subsample_per_class(dataset.labels, targets, seed), name=dataset.name + suffix)


# ---------------------------------------------------------------- synthetic
@DATASETS.register("synthetic_images")
def synthetic_images(
    split: str = "train", root: str | os.PathLike | None = None, **options: Any
) -> ImageDataset:
    """Generated 10-class long-tailed set (IR 20: 200 -> 10, 676 train / 300 test PNGs), cached.

    Options: SyntheticImagesConfig fields (num_classes, n_max, imbalance_ratio, ...)."""
    on_corrupt = options.pop("on_corrupt", "error")
    try:
        cfg = SyntheticImagesConfig(**options)
    except TypeError as err:
        raise ConfigError(f"synthetic_images: {err}") from err
    ds = open_folder(
        ensure_synthetic_images(root, cfg), split, class_names=synthetic_class_names(cfg.num_classes)
    )
    ds.name = f"synthetic_images_{split}"
    return finish(ds, on_corrupt)


# ---------------------------------------------------------------- CIFAR-LT
def _cifar_lt(
    preset: str, classes: tuple[str, ...], n_max: int, lift_group_counts: np.ndarray | None,
    split: str, root, ir: float = 100, seed: int = 0, profile: str = "exp",
    on_corrupt: str = "error", **source_options: Any,
) -> ImageDataset:
    if root is None:
        raise ConfigError(
            f"{preset} needs root: a folder or zip with train/<class>/*.jpg and test/<class>/*.jpg, "
            f"or hf:<hub id>"
        )
    spec = str(root)
    if not spec.startswith("hf:"):
        source_options.setdefault("class_names", list(classes))
    base = open_images(spec, split=split, **source_options)
    if tuple(base.class_names) != classes:
        raise DataError(f"{spec}: classes {base.class_names[:3]}... are not the {len(classes)} {preset} classes")
    targets = make_profile(profile, n_max, len(classes), float(ir))
    groups = lift_group_counts if lift_group_counts is not None else targets
    if split == "train":
        counts = base.class_counts()
        if not np.all(counts == n_max):
            c = int(np.flatnonzero(counts != n_max)[0])
            raise DataError(f"{spec}: class '{classes[c]}' has {counts[c]} training images, expected {n_max}")
        base = base.subset(subsample_per_class(base.labels, targets, seed))
        base.group_counts = None if lift_group_counts is None else groups
    else:  # balanced test set; groups follow the training counts of the same IR
        base.group_counts = groups
    base.name = f"{preset}_ir{float(ir):g}_{split}"
    return finish(base, on_corrupt)


@DATASETS.register("cifar10_lt")
def cifar10_lt(split: str = "train", root=None, **options: Any) -> ImageDataset:
    """CIFAR-10-LT: n_c = floor(5000 * IR^(-c/9)), LDAM selection (seed 0); options ir, seed.

    root: the CIFAR-10 JPEG zip or a folder with train/<class>/, test/<class>/; or hf:cifar10."""
    return _cifar_lt("cifar10_lt", CIFAR10_CLASSES, 5000, None, split, root, **options)


@DATASETS.register("cifar100_lt")
def cifar100_lt(split: str = "train", root=None, lift_groups: bool = True, **options: Any) -> ImageDataset:
    """CIFAR-100-LT (METHODS 7.1): IR 100/50/10 -> 10,847/12,608/19,573 train images.

    With lift_groups (default), many/medium/few follow LIFT: always the IR-100 counts
    (`group_counts`), so IR 50/10 keep the IR-100 class groups. root: folder/zip or hf:cifar100."""
    groups = exponential_profile(500, 100, 100) if lift_groups else None
    return _cifar_lt("cifar100_lt", CIFAR100_CLASSES, 500, groups, split, root, **options)


# ---------------------------------------------------------------- list-file benchmarks
def _list_preset(
    preset: str, lists: dict[str, str], num_classes: int, split: str, root,
    list_file=None, class_names=None, on_corrupt: str = "error",
) -> ImageDataset:
    if root is None:
        raise ConfigError(f"{preset} needs root: the folder the list files' image paths start from")
    if list_file is None:
        if split not in lists:
            raise ConfigError(f"{preset}: unknown split '{split}' (choose from {', '.join(lists)})")
        list_file = Path(root) / lists[split]
    if class_names is None and (Path(root) / "classnames.txt").is_file():
        class_names = Path(root) / "classnames.txt"
    ds = open_list(list_file, split, root=root, class_names=class_names)
    if ds.num_classes != num_classes:
        raise DataError(f"{list_file}: {ds.num_classes} classes, {preset} has {num_classes}")
    ds.name = f"{preset}_{split}"
    return finish(ds, on_corrupt)


@DATASETS.register("imagenet_lt")
def imagenet_lt(
    split: str = "train", root=None, list_file=None, class_names=None, on_corrupt: str = "error"
) -> ImageDataset:
    """ImageNet-LT (1,000 classes, 115,846 train): root = ImageNet-2012 folder holding the OLTR
    lists ImageNet_LT_{train,val,test}.txt (Liu et al. 2019 release); or pass list_file.
    Optional classnames.txt (one name per line, label order) in root or class_names=."""
    lists = {s: f"ImageNet_LT_{s}.txt" for s in ("train", "val", "test")}
    return _list_preset("imagenet_lt", lists, 1000, split, root, list_file, class_names, on_corrupt)


@DATASETS.register("places_lt")
def places_lt(
    split: str = "train", root=None, list_file=None, class_names=None, on_corrupt: str = "error"
) -> ImageDataset:
    """Places-LT (365 classes, 62,500 train): root = Places-365 folder with the OLTR lists
    Places_LT_{train,val,test}.txt; class names from classnames.txt (as shipped by LIFT)."""
    lists = {s: f"Places_LT_{s}.txt" for s in ("train", "val", "test")}
    return _list_preset("places_lt", lists, 365, split, root, list_file, class_names, on_corrupt)


@DATASETS.register("inat2018")
def inat2018(
    split: str = "train", root=None, list_file=None, class_names=None, on_corrupt: str = "error"
) -> ImageDataset:
    """iNaturalist 2018 (8,142 classes, 437,513 train): lists iNaturalist18_{train,val}.txt,
    converted from the official train2018.json/val2018.json ('file_name category_id' lines,
    as in the OLTR/LIFT releases). The official val set is the test set (split test -> val)."""
    lists = {"train": "iNaturalist18_train.txt", "val": "iNaturalist18_val.txt",
             "test": "iNaturalist18_val.txt"}
    return _list_preset("inat2018", lists, 8142, split, root, list_file, class_names, on_corrupt)
