"""The two real long tails of `real_finetune.py` as fit-run data options and probe indices:
CIFAR-10-LT IR 100 (`real_cifar10_lt.py`'s protocol) and Tiny-ImageNet-100-LT IR 100
(`real_tiny100_lt.py`'s), plus the small zips of the same layout its `--smoke` mode uses."""

from __future__ import annotations

import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_tiny100_lt import class_order, lt_split  # noqa: E402  (the Tiny protocol, one home)

from longtail.data.images import ImageDataset  # noqa: E402
from longtail.data.open_images import open_images  # noqa: E402
from longtail.data.profiles import exponential_profile, subsample_per_class  # noqa: E402
from longtail.data.splits import first_per_class  # noqa: E402

MAPPING = Path(__file__).resolve().parents[1] / "longtail" / "data" / "mappings" / "cifar10_imagenet.json"


@dataclass
class Protocol:
    """One dataset's images and splits, for the probe (indices) and the fit runs (data options)."""

    name: str
    root: str
    class_names: list[str]
    test_split: str  # the zip's evaluation split
    lt_options: dict[str, Any]  # FitConfig.data_options selecting the LT training set
    balanced_options: dict[str, Any]  # ... the balanced subset of the same size
    val_per_class: int  # FitConfig.val_per_class: CIFAR carves validation out of test; Tiny: 0
    prototype_options: dict[str, Any]  # CIFAR: the bundled ImageNet class map (also for class subsets)
    counts: np.ndarray
    lt_idx: np.ndarray  # into the full training split
    bal_idx: np.ndarray
    val_train_idx: np.ndarray | None  # Tiny: validation = spare training images
    base_train: ImageDataset = field(repr=False)
    base_test: ImageDataset = field(repr=False)

    @property
    def val_test_idx(self) -> tuple[np.ndarray, np.ndarray]:
        """(validation, test) indices into the test split (CIFAR: first val_per_class per class)."""
        if self.val_per_class:
            return first_per_class(self.base_test.labels, self.val_per_class)
        return np.zeros(0, np.int64), np.arange(len(self.base_test))

    def val_images(self) -> ImageDataset:
        if self.val_train_idx is not None:
            return self.base_train.subset(self.val_train_idx, name=f"{self.name}_val")
        return self.base_test.subset(self.val_test_idx[0], name=f"{self.name}_val")


def cifar10_protocol(root: str, ir: float, val_per_class: int = 10) -> Protocol:
    """real_cifar10_lt.py's protocol: exponential profile from the largest class, LDAM seed 0."""
    train = open_images(root, split="train")
    test = open_images(root, split="test", class_names=train.class_names)
    k = len(train.class_names)
    counts = exponential_profile(int(train.class_counts().min()), k, ir)
    lt_idx = subsample_per_class(train.labels, counts, 0)
    per_class = int(counts.sum()) // k
    bal_idx = subsample_per_class(train.labels, np.full(k, per_class), 0)
    return Protocol("cifar10", root, train.class_names, "test", {"ir": ir, "seed": 0, "selection": "ldam"},
                    _strategy(train.class_names, np.full(k, per_class)), val_per_class,
                    {"imagenet_map": str(MAPPING)}, counts, lt_idx, bal_idx, None, train, test)


def tiny_protocol(root: str, ir: float, seed: int = 0, val_per_class: int = 10) -> Protocol:
    """real_tiny100_lt.py's protocol (class_order, lt_split); the fit runs get the LT counts as a
    sampling_strategy: the seeded per-class shuffle depends only on a class's size, so its first
    n_c images are the LT set lt_split keeps."""
    wnids = class_order(root)
    train = open_images(root, split="train", class_names=wnids)
    test = open_images(root, split="val", class_names=wnids)
    lt_idx, val_idx, counts = lt_split(train.labels, ir, seed, val_per_class)
    per_class = int(counts.sum()) // len(wnids)
    bal_idx = subsample_per_class(train.labels, np.full(len(wnids), per_class), seed)
    opts = {"class_names": wnids, "seed": seed, "selection": "ldam"}
    return Protocol("tiny100", root, wnids, "val", {**opts, **_strategy(wnids, counts)},
                    {**opts, **_strategy(wnids, np.full(len(wnids), per_class))}, 0, {}, counts, lt_idx,
                    bal_idx, val_idx, train, test)


def _strategy(names: list[str], counts: np.ndarray) -> dict[str, Any]:
    return {"sampling_strategy": {n: int(c) for n, c in zip(names, counts)}}


def check_selection(proto: Protocol) -> None:
    """The fit runs' data options select exactly the probe benchmark's LT and balanced images."""
    for what, options, idx in (("LT", proto.lt_options, proto.lt_idx), ("balanced", proto.balanced_options, proto.bal_idx)):
        fit_set = open_images(proto.root, split="train", **options)
        if sorted(fit_set.items) != sorted(proto.base_train.subset(idx).items):
            raise SystemExit(f"{proto.name}: the {what} set of the fit runs differs from the probe protocol's")


def smoke_zip(src: str, dst: Path, test_split: str, classes: int = 3, train: int = 16, test: int = 4) -> str:
    """A small zip of the same layout: the first `classes` classes, `train` / `test` images each."""
    if dst.is_file():
        return str(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(src) as z:
        names = z.namelist()
        has_tsv = "classes.tsv" in names
        keep = (class_order(src)[:classes] if has_tsv
                else sorted({n.split("/")[1] for n in names if n.startswith("train/") and n.count("/") == 2})[:classes])
        with zipfile.ZipFile(str(dst) + ".tmp", "w") as out:
            if has_tsv:
                lines = [line for line in z.read("classes.tsv").decode().splitlines() if line.split("\t")[0] in keep]
                out.writestr("classes.tsv", "\n".join(lines) + "\n")
            for split, n in (("train", train), (test_split, test)):
                for c in keep:
                    files = sorted(f for f in names if f.startswith(f"{split}/{c}/") and not f.endswith("/"))[:n]
                    for f in files:
                        out.writestr(f, z.read(f))
    os.replace(str(dst) + ".tmp", dst)
    return str(dst)
