"""benchmarks/real_finetune.py: the fit runs' data options select exactly the probe benchmarks'
images (Tiny: lt_split's LT set and validation; CIFAR: the LDAM IR draw), on tiny generated zips.
The end-to-end check of the benchmark is its `--smoke` mode (about a minute, too slow for here)."""

from __future__ import annotations

import importlib.util
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longtail.data.open_images import open_images

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "real_finetune.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("real_finetune", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_finetune"] = module  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("real_finetune", None)


def write_zip(path: Path, classes: list[str], splits: dict[str, int], tsv: bool) -> str:
    """A zip of split/class/image.jpg files (uniform colours), with classes.tsv when `tsv`."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buf, format="JPEG")
    with zipfile.ZipFile(path, "w") as z:
        if tsv:
            z.writestr("classes.tsv", "".join(f"{c}\tname {c}\n" for c in classes))
        for split, n in splits.items():
            for c in classes:
                for i in range(n):
                    z.writestr(f"{split}/{c}/{c}_{i:03d}.JPEG", buf.getvalue())
    return str(path)


def test_tiny_protocol_fit_options_select_lt_split(bench, tmp_path):
    classes = ["n03", "n01", "n02", "n04"]  # classes.tsv order, not sorted: class_order must be used
    root = write_zip(tmp_path / "tiny.zip", classes, {"train": 20, "val": 3}, tsv=True)
    proto = bench.tiny_protocol(root, ir=4.0, seed=0, val_per_class=2)
    assert proto.class_names == classes and proto.test_split == "val" and proto.val_per_class == 0
    assert sorted(proto.counts.tolist()) == [5, 7, 12, 20]  # floor(20 * 4^(-i/3)), permuted
    bench.check_selection(proto)  # raises SystemExit when the data options pick other images
    lt = open_images(root, split="train", **proto.lt_options)
    assert lt.class_counts().tolist() == proto.counts.tolist()
    val = proto.val_images()  # spare training images: never in the LT set, 2 per class that can spare them
    assert not set(val.items) & set(lt.items)
    assert sorted(np.bincount(val.labels, minlength=4).tolist()) == [0, 2, 2, 2]
    assert proto.val_test_idx[1].size == 12  # test = every val image


def test_cifar_protocol_carves_validation_from_test(bench, tmp_path):
    root = write_zip(tmp_path / "cifar.zip", ["cat", "dog", "frog"], {"train": 12, "test": 5}, tsv=False)
    proto = bench.cifar10_protocol(root, ir=4.0, val_per_class=2)
    assert proto.counts.tolist() == [12, 6, 3]
    bench.check_selection(proto)
    val_idx, test_idx = proto.val_test_idx
    assert val_idx.size == 6 and test_idx.size == 9 and not set(val_idx) & set(test_idx)
    assert proto.lt_options == {"ir": 4.0, "seed": 0, "selection": "ldam"}


def test_selection_mismatch_is_reported(bench, tmp_path):
    root = write_zip(tmp_path / "cifar.zip", ["cat", "dog"], {"train": 8, "test": 2}, tsv=False)
    proto = bench.cifar10_protocol(root, ir=2.0, val_per_class=1)
    proto.lt_options = {**proto.lt_options, "seed": 1}  # another draw
    with pytest.raises(SystemExit, match="LT set"):
        bench.check_selection(proto)
