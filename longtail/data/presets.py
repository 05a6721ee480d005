"""Named datasets (`DATASETS` registry): builder(split="train", root=None, **options) -> ImageDataset.

- synthetic_images: generated offline set (default for demos/tests).
- cifar10_lt / cifar100_lt: CIFAR-LT (exponential profile, natural class order), drawn as
  LDAM/LIFT (`selection="ldam"`, default) or as LT-Soups (`selection="lt_soups"`); test = the
  full balanced test set. cifar{10,100}_ir{100,50,10}: the same with the ratio fixed.
- cifar100_controlled: LT-Soups' CIFAR-100 with a chosen head-tail ratio (num_head, rho).
- imagenet_lt / places_lt / inat2018: the official split lists over the user's images.

Every builder checks its option names first (one-line error listing the valid ones), so a typo
fails before any image is read. `describe_datasets()` lists the names with one line each.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from longtail.data.controlled_cifar import build_controlled, controlled_counts
from longtail.data.images import ImageDataset, check_on_corrupt, check_options, finish
from longtail.data.profiles import (
    check_selection,
    exponential_profile,
    make_profile,
    resolve_sampling_strategy,
    subsample_per_class,
)
from longtail.data.sources import detect_source, open_folder, open_list, open_source, source_options
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
    head_fraction: float = 0.5, n_max: int | None = None, selection: str = "ldam",
) -> ImageDataset:
    """A long-tailed subset of any dataset: a count profile (ir, profile) or a sampling_strategy.

    n_max defaults to the smallest class count (the per-class size of a balanced source), so
    every class can supply its target. Selection: the seeded subsampler (`subsample_per_class`).
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
    keep = subsample_per_class(dataset.labels, targets, seed, selection)
    return dataset.subset(keep, name=dataset.name + suffix)


def describe_datasets() -> list[tuple[str, str]]:
    """(name, one-line description) of every dataset preset, sorted by name."""
    return [(name, (DATASETS.get(name).__doc__ or "").strip().splitlines()[0]) for name in DATASETS]


def _options(what: str, given: dict[str, Any], defaults: dict[str, Any], extra=()) -> dict[str, Any]:
    """`defaults` updated by `given`, after checking every given name is a default or in extra."""
    check_options(what, given, [*defaults, *extra])
    return {**defaults, **{k: v for k, v in given.items() if k in defaults}}


def _root_source_options(root) -> list[str]:
    """Options of the source `root` is (every source's when root cannot be classified yet)."""
    try:
        return source_options(detect_source(str(root))) if root is not None else source_options()
    except DataError:
        return source_options()


# ---------------------------------------------------------------- synthetic
@DATASETS.register("synthetic_images")
def synthetic_images(
    split: str = "train", root: str | os.PathLike | None = None, **options: Any
) -> ImageDataset:
    """Generated 10-class long-tailed images (IR 20: 200 -> 10, 676 train / 300 test), offline.

    Cached PNGs. Options: SyntheticImagesConfig fields (num_classes, n_max, imbalance_ratio,
    test_per_class, size, noise, seed) and on_corrupt."""
    fields = SyntheticImagesConfig.__dataclass_fields__
    opts = _options("synthetic_images", options, {"on_corrupt": "error"}, extra=fields)
    on_corrupt = check_on_corrupt(opts["on_corrupt"])
    cfg = SyntheticImagesConfig(**{k: v for k, v in options.items() if k in fields})
    ds = open_folder(
        ensure_synthetic_images(root, cfg), split, class_names=synthetic_class_names(cfg.num_classes)
    )
    ds.name = f"synthetic_images_{split}"
    return finish(ds, on_corrupt)


# ---------------------------------------------------------------- CIFAR
CIFAR_LT_DEFAULTS = {"ir": 100, "seed": 0, "profile": "exp", "selection": "ldam", "on_corrupt": "error"}


def _balanced_cifar(
    what: str, classes: tuple[str, ...], n_max: int, split: str, root, source: dict[str, Any]
) -> ImageDataset:
    """The full CIFAR split from root (folder / zip with train/ and test/, or hf:), checked."""
    if root is None:
        raise ConfigError(
            f"{what} needs root: a folder or zip with train/<class>/*.jpg and test/<class>/*.jpg, "
            f"or hf:<hub id>"
        )
    spec = str(root)
    if not spec.startswith("hf:"):
        source.setdefault("class_names", list(classes))
    base = open_source(spec, split=split, **source)
    if tuple(base.class_names) != classes:
        raise DataError(f"{spec}: classes {base.class_names[:3]}... are not the {len(classes)} {what} classes")
    counts = base.class_counts()
    if split == "train" and not np.all(counts == n_max):
        c = int(np.flatnonzero(counts != n_max)[0])
        raise DataError(f"{spec}: class '{classes[c]}' has {counts[c]} training images, expected {n_max}")
    return base


def _cifar_lt(
    what: str, preset: str, classes: tuple[str, ...], n_max: int, lift_group_counts: np.ndarray | None,
    split: str, root, options: dict[str, Any], also: tuple[str, ...] = (),
) -> ImageDataset:
    opts = _options(what, options, CIFAR_LT_DEFAULTS, extra=[*also, *_root_source_options(root)])
    source = {k: v for k, v in options.items() if k not in CIFAR_LT_DEFAULTS and k not in also}
    check_selection(opts["selection"])
    check_on_corrupt(opts["on_corrupt"])
    ir = _number(opts["ir"], what, "ir", float)
    targets = make_profile(opts["profile"], n_max, len(classes), ir)
    base = _balanced_cifar(what, classes, n_max, split, root, source)
    groups = lift_group_counts if lift_group_counts is not None else targets
    if split == "train":
        base = base.subset(subsample_per_class(base.labels, targets, opts["seed"], opts["selection"]))
        base.group_counts = None if lift_group_counts is None else groups
    else:  # balanced test set; groups follow the training counts of the same IR
        base.group_counts = groups
    base.name = f"{preset}_ir{ir:g}_{split}"
    return finish(base, opts["on_corrupt"])


def _cifar10(what: str, split: str, root, options: dict[str, Any]) -> ImageDataset:
    return _cifar_lt(what, "cifar10_lt", CIFAR10_CLASSES, 5000, None, split, root, options)


def _cifar100(what: str, split: str, root, options: dict[str, Any]) -> ImageDataset:
    groups = exponential_profile(500, 100, 100) if options.get("lift_groups", True) else None
    return _cifar_lt(what, "cifar100_lt", CIFAR100_CLASSES, 500, groups, split, root, options,
                     also=("lift_groups",))


@DATASETS.register("cifar10_lt")
def cifar10_lt(split: str = "train", root=None, **options: Any) -> ImageDataset:
    """CIFAR-10-LT: n_c = floor(5000 * IR^(-c/9)) (options ir=100, seed, profile, selection).

    root: the CIFAR-10 JPEG zip, a folder with train/<class>/ and test/<class>/, or hf:cifar10.
    selection="ldam" (default) draws as LDAM-DRW / LIFT, "lt_soups" as the LT-Soups code."""
    return _cifar10("cifar10_lt", split, root, dict(options))


@DATASETS.register("cifar100_lt")
def cifar100_lt(split: str = "train", root=None, **options: Any) -> ImageDataset:
    """CIFAR-100-LT (docs/methods.md §7.1): IR 100/50/10 -> 10,847/12,608/19,573 train images.

    Options ir=100, seed, profile, selection ("ldam": LDAM-DRW / LIFT / Sage, default;
    "lt_soups": the LT-Soups code) and lift_groups: with it (default), many/medium/few follow LIFT and
    always use the IR-100 counts (`group_counts`), so IR 50/10 keep the IR-100 class groups.
    root: folder/zip or hf:cifar100."""
    return _cifar100("cifar100_lt", split, root, dict(options))


def _register_ir_alias(base: str, ir: int) -> None:
    name = base.replace("_lt", f"_ir{ir}")
    build = _cifar100 if base == "cifar100_lt" else _cifar10

    def alias(split: str = "train", root=None, **options: Any) -> ImageDataset:
        if "ir" in options and _number(options["ir"], name, "ir", float) != ir:
            raise ConfigError(f"{name} fixes ir={ir}, got ir={options['ir']} (use {base} with ir=...)")
        return build(name, split, root, {**options, "ir": ir})

    alias.__name__ = name
    title = "CIFAR-100-LT" if base == "cifar100_lt" else "CIFAR-10-LT"
    alias.__doc__ = f"{title} with imbalance ratio {ir} (= {base} ir={ir}; other options as {base})."
    DATASETS.register(name, alias)


def _number(value: Any, what: str, key: str, kind: type = float) -> Any:
    """`kind(value)`, or a one-line ConfigError naming the option."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: {key} must be a number, got '{value}'") from None


for _base in ("cifar100_lt", "cifar10_lt"):
    for _ir in (100, 50, 10):
        _register_ir_alias(_base, _ir)


@DATASETS.register("cifar100_controlled")
def cifar100_controlled(split: str = "train", root=None, **options: Any) -> ImageDataset:
    """CIFAR-100 with a chosen head-tail ratio (LT-Soups, docs/methods.md §2.2): num_head=80, rho=100.

    The first num_head classes are head classes (counts 500 -> 103), the others decay from 100
    to 500/rho; eta = num_head / (100 - num_head). Images drawn as the LT-Soups code
    (selection="lt_soups", seed 0); test = the full balanced test set. root as cifar100_lt."""
    defaults = {"num_head": 80, "rho": 100, "seed": 0, "selection": "lt_soups", "on_corrupt": "error"}
    what = "cifar100_controlled"
    opts = _options(what, options, defaults, extra=_root_source_options(root))
    source = {k: v for k, v in options.items() if k not in defaults}
    check_selection(opts["selection"])
    check_on_corrupt(opts["on_corrupt"])
    num_head, rho = _number(opts["num_head"], what, "num_head", int), _number(opts["rho"], what, "rho")
    controlled_counts(num_head, rho)  # validate before reading images
    base = _balanced_cifar(what, CIFAR100_CLASSES, 500, split, root, source)
    if split == "train":
        base = build_controlled(base, num_head, rho, opts["seed"], opts["selection"])
    base.name = f"{what}_h{num_head}_rho{rho:g}_{split}"
    return finish(base, opts["on_corrupt"])


# ---------------------------------------------------------------- list-file benchmarks
LIST_DEFAULTS = {"list_file": None, "class_names": None, "on_corrupt": "error"}


def _list_preset(
    preset: str, lists: dict[str, str], num_classes: int, split: str, root, options: dict[str, Any]
) -> ImageDataset:
    opts = _options(preset, options, LIST_DEFAULTS)
    list_file, class_names = opts["list_file"], opts["class_names"]
    check_on_corrupt(opts["on_corrupt"])
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
    return finish(ds, opts["on_corrupt"])


@DATASETS.register("imagenet_lt")
def imagenet_lt(split: str = "train", root=None, **options: Any) -> ImageDataset:
    """ImageNet-LT (1,000 classes, 115,846 train images; OLTR split lists over ImageNet-2012).

    root = the ImageNet-2012 folder holding ImageNet_LT_{train,val,test}.txt (Liu et al. 2019
    release); or pass list_file. Optional classnames.txt (one name per line, label order) in
    root or class_names=. Options: list_file, class_names, on_corrupt."""
    lists = {s: f"ImageNet_LT_{s}.txt" for s in ("train", "val", "test")}
    return _list_preset("imagenet_lt", lists, 1000, split, root, options)


@DATASETS.register("places_lt")
def places_lt(split: str = "train", root=None, **options: Any) -> ImageDataset:
    """Places-LT (365 classes, 62,500 train images; OLTR split lists over Places-365).

    root = the Places-365 folder with Places_LT_{train,val,test}.txt; class names from
    classnames.txt (as shipped by LIFT). Options: list_file, class_names, on_corrupt."""
    lists = {s: f"Places_LT_{s}.txt" for s in ("train", "val", "test")}
    return _list_preset("places_lt", lists, 365, split, root, options)


@DATASETS.register("inat2018")
def inat2018(split: str = "train", root=None, **options: Any) -> ImageDataset:
    """iNaturalist 2018 (8,142 classes, 437,513 train images; the official val set is the test set).

    Lists iNaturalist18_{train,val}.txt, converted from the official train2018.json /
    val2018.json ('file_name category_id' lines, as in the OLTR/LIFT releases); split test ->
    val. Options: list_file, class_names, on_corrupt."""
    lists = {"train": "iNaturalist18_train.txt", "val": "iNaturalist18_val.txt",
             "test": "iNaturalist18_val.txt"}
    return _list_preset("inat2018", lists, 8142, split, root, options)
