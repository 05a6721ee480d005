"""Issue 24: cache keys hash the weights' bytes, so they do not depend on torch's thread count.

Two processes at 1 and 2 threads (the test's own, at one torch thread as tests/conftest.py sets
it, and a child with OMP_NUM_THREADS and torch.set_num_threads at 2) compute the
weights / prefix fingerprints and the feature- and prefix-cache keys of one backbone: the old
sum fingerprints differ between them (checked, so this test fails on the old code), the new
ones are equal, and the caches the first process writes are read by the second without a
forward pass. Entries saved under the old fingerprint are renamed to their new key and read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # conftest, when run as a script

from longtail.models.backbone import FINGERPRINT, Backbone  # noqa: E402
from longtail.models.preprocess import EvalTransform  # noqa: E402

DEPTH = 2
SPEC = {"test": "fingerprint_threads", "views": 2}
# Odd-sized random tensors (3.9M floats): float64 sums of each split differently across 1, 2, 3,
# ... threads, so the old fingerprint changed with the thread count.
TABLES = [(257, 1031), (511, 1021), (769, 1019), (1023, 1009), (1279, 997)]


class Stem(nn.Module):
    def __init__(self, tables: list[tuple[int, int]]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.tables = nn.ParameterList(nn.Parameter(torch.randn(*shape)) for shape in tables)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Block(Stem):
    def __init__(self, tables: list[tuple[int, int]]) -> None:
        super().__init__(tables)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class BigConvNet(Backbone):
    """A conv stem and three conv blocks carrying large unused random tables (the part of the
    weights whose sums depend on the thread count); counts the rows it runs."""

    name = "big_convnet"
    model_id = "tests/test_fingerprint_threads.py"
    feature_dim = 8
    arch = "cnn"
    rows: dict[str, int] = {}

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.transform = EvalTransform(size=16, crop_size=(16, 16), mean=(0.5,) * 3, std=(0.25,) * 3)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.stem_part = Stem(TABLES[:2])
            self.layers = nn.ModuleList([Block(TABLES[2:3]), Block(TABLES[3:4]), Block(TABLES[4:])])

    def stem(self) -> list[nn.Module]:
        return [self.stem_part]

    def blocks(self) -> nn.ModuleList:
        return self.layers

    def top(self) -> list[nn.Module]:
        return []

    def forward_prefix(self, pixels: torch.Tensor, depth: int) -> torch.Tensor:
        BigConvNet.rows[f"prefix{depth}"] = BigConvNet.rows.get(f"prefix{depth}", 0) + len(pixels)
        x = self.stem_part(pixels)
        for block in self.layers[:depth]:
            x = block(x)
        return x

    def forward_from(self, hidden: torch.Tensor, depth: int) -> torch.Tensor:
        for block in self.layers[depth:]:
            hidden = block(hidden)
        return hidden.mean((2, 3))

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        BigConvNet.rows["features"] = BigConvNet.rows.get("features", 0) + len(pixels)
        return self.forward_from(self.forward_prefix(pixels, 0), 0)


def open_prefix(backbone: Backbone, data, cache_dir: Path):
    """The prefix-cache entry (2 views: the image and its mirror) of `data` at DEPTH."""
    from longtail.models.prefix_cache import open_prefix_cache

    decode = backbone.transform

    def render(images, index):
        x = decode.normalize(images)
        return torch.stack([x, x.flip(-1)], dim=1)

    return open_prefix_cache(backbone, data, DEPTH, 2, render, decode, SPEC, torch.device("cpu"), cache_dir,
                             batch_size=4, progress=False)


def extract(backbone: Backbone, data, cache_dir: Path):
    from longtail.models.features import extract_features

    return extract_features(backbone, data, batch_size=4, device="cpu", cache_dir=cache_dir, progress=False)


def one_process(threads: int, images: str, work: str) -> None:
    """At `threads` threads: fingerprints, cache keys, the feature cache and the prefix cache of
    the images (built, or read when there); what it saw goes to work/threads<threads>.json."""
    torch.set_num_threads(threads)
    from longtail.data.open_images import open_images
    from longtail.models.backbone import _legacy_fingerprint
    from longtail.models.features import cache_path
    from longtail.models.prefix_cache import entry_path

    data, backbone, root = open_images(images), BigConvNet(), Path(work)
    out = {
        "threads": torch.get_num_threads(),
        "weights": backbone.weights_fingerprint(),
        "prefix": backbone.prefix_fingerprint(DEPTH),
        "old_weights": _legacy_fingerprint(backbone.state_dict()),
        "old_prefix": _legacy_fingerprint(backbone._prefix_state(DEPTH)),
        "feature_entry": cache_path(backbone, data, "fp32", root / "features").name,
        "prefix_entry": entry_path(backbone, data, DEPTH, SPEC, "fp32", root / "prefix")[0].name,
    }
    features = extract(backbone, data, root / "features")
    cache = open_prefix(backbone, data, root / "prefix")
    out.update(rows=BigConvNet.rows, features_sum=float(features.features.sum()),
               prefix_sum=float(np.asarray(cache.array, dtype=np.float64).sum()),
               files=sorted(p.name for p in root.glob("*/*")))
    (root / f"threads{threads}.json").write_text(json.dumps(out))


@pytest.fixture()
def images(tmp_path):
    from conftest import write_random_images

    (tmp_path / "images").mkdir()
    return write_random_images(tmp_path / "images", {"a": 3, "b": 3}, (12, 20), seed=0)


def test_keys_and_cache_hits_do_not_depend_on_the_thread_count(images, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    seen = {}
    for threads in (1, 2):  # the first builds both caches, the second (another process) must only read them
        if threads == 1:  # this process: one torch thread already (tests/conftest.py)
            assert torch.get_num_threads() == 1
            BigConvNet.rows.clear()  # what other tests in this process counted
            one_process(threads, str(images), str(work))
        else:
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            subprocess.run([sys.executable, __file__, str(threads), str(images), str(work)], env=env, check=True,
                           timeout=120)
        seen[threads] = json.loads((work / f"threads{threads}.json").read_text())
    one, two = seen[1], seen[2]
    assert (one["threads"], two["threads"]) == (1, 2)
    # the old fingerprints (float sums) differ across thread counts: the flaw this test guards
    assert one["old_weights"] != two["old_weights"] and one["old_prefix"] != two["old_prefix"]
    for key in ("weights", "prefix", "feature_entry", "prefix_entry"):
        assert one[key] == two[key], key
    # the first process built both entries (6 images; the prefix: 2 views + 1 shape probe) ...
    assert one["rows"] == {"features": 6, "prefix0": 6, f"prefix{DEPTH}": 6 * 2 + 1}
    # ... the second read them: no feature extracted, only the prefix's one-image shape probe
    assert two["rows"] == {f"prefix{DEPTH}": 1}
    assert two["files"] == one["files"] == sorted([one["feature_entry"], one["prefix_entry"] + ".npy",
                                                   one["prefix_entry"] + ".json"])
    assert two["features_sum"] == one["features_sum"] and two["prefix_sum"] == one["prefix_sum"]


def _as_old_code_wrote_it(root: Path) -> None:
    """Drop from the metas under `root` what only the byte-fingerprint code records."""
    from longtail.data.features import load_features, save_features

    for path in root.glob("features/*.npz"):
        fs = load_features(path)
        fs.meta.pop("weights_hash")
        save_features(fs, path)
    for path in root.glob("prefix/*.json"):
        meta = json.loads(path.read_text())
        for key in ("backbone", "model_id", "revision", "prefix_weights", "prefix_hash"):
            meta.pop(key)
        path.write_text(json.dumps(meta))


def test_entries_saved_under_the_old_fingerprint_are_renamed_and_read(images, tmp_path, monkeypatch, capsys):
    import longtail.models.backbone as backbone_module
    from longtail.data.open_images import open_images

    data, backbone, other = open_images(str(images)), BigConvNet(), BigConvNet(seed=1)
    caches = tmp_path / "caches"
    with monkeypatch.context() as patch:  # the old code, at 2 threads: these weights and other ones
        patch.setattr(backbone_module, "_fingerprint", backbone_module._legacy_fingerprint)
        torch.set_num_threads(2)
        try:
            old = {"features": extract(backbone, data, caches / "features").features,
                   "prefix": np.array(open_prefix(backbone, data, caches / "prefix").array)}
            extract(other, data, caches / "features")
            open_prefix(other, data, caches / "prefix")
        finally:
            torch.set_num_threads(1)
    _as_old_code_wrote_it(caches)
    before = {p.name for p in caches.glob("*/*")}
    assert len(before) == 6
    BigConvNet.rows.clear()
    capsys.readouterr()
    features = extract(backbone, data, caches / "features").features  # at 1 thread: another old key
    prefix = open_prefix(backbone, data, caches / "prefix")
    assert BigConvNet.rows == {f"prefix{DEPTH}": 1}  # nothing computed again but the shape probe
    np.testing.assert_array_equal(features, old["features"])
    np.testing.assert_array_equal(prefix.array, old["prefix"])
    err = capsys.readouterr().err
    assert err.count("saved under the old weights fingerprint") == 2
    after = {p.name for p in caches.glob("*/*")}
    assert len(after) == 6 and len(after - before) == 3  # the entries of these weights, renamed
    assert prefix.meta["prefix_hash"] == FINGERPRINT and prefix.meta["renamed_from"] + ".npy" in before
    # the other weights' old entries were left for them, and are theirs only
    BigConvNet.rows.clear()
    extract(other, data, caches / "features")
    assert BigConvNet.rows == {}
    extract(BigConvNet(seed=2), data, caches / "features")
    assert BigConvNet.rows == {"features": 6, "prefix0": 6}


def test_fingerprint_reads_bytes_of_any_dtype_layout_and_device():
    from longtail.models.backbone import _fingerprint

    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 48, generator=g)
    state = {"w": w, "h": w.bfloat16(), "b": torch.tensor([True, False]), "n": torch.tensor(3),
             "e": torch.zeros(0, 5), "i": torch.arange(7)}
    base = _fingerprint(state)
    assert _fingerprint({**state, "w": w.t().contiguous().t()}) == base  # strided the other way: same values
    assert _fingerprint(dict(reversed(state.items()))) == base  # the order of the dict does not matter
    assert _fingerprint({**state, "w": w.double()}) != base  # the dtype is part of it
    assert _fingerprint({**state, "e": torch.zeros(5, 0)}) != base  # and the shape
    nudged = w.clone()
    nudged.view(-1)[1234] = torch.nextafter(nudged.view(-1)[1234], torch.tensor(1e9))
    assert _fingerprint({**state, "w": nudged}) != base  # one ulp of one weight
    if torch.cuda.is_available():
        assert _fingerprint({k: v.cuda() for k, v in state.items()}) == base


if __name__ == "__main__":
    one_process(int(sys.argv[1]), sys.argv[2], sys.argv[3])
