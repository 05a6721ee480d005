"""Sharded extraction: two gloo processes on CPU (with the environment torchrun gives its workers:
RANK, WORLD_SIZE, MASTER_*; conftest.run_torchrun_workers) write the same feature-cache and
prefix-cache entries as one process (same names, so the same keys, and byte-identical arrays),
one of them resuming from a shard that an interrupted one-process run left."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from longtail.models.backbone import Backbone
from longtail.models.preprocess import EvalTransform

DEPTH = 2  # the prefix: stem + blocks 0, 1
SPEC = {"views": "identity+flip"}


class TinyConvNet(Backbone):
    """Stem conv, three conv blocks, global average pool: seeded random weights that build in
    milliseconds (a preset backbone would take most of the test's time to build)."""

    name = "tiny_convnet"
    model_id = "tests/test_ddp_extraction.py"
    feature_dim = 8
    arch = "cnn"
    seen: dict[int, int] = {}  # rows this process ran, by prefix depth (0: whole features)

    def __init__(self) -> None:
        super().__init__()
        self.transform = EvalTransform(size=16, crop_size=(16, 16), mean=(0.5,) * 3, std=(0.25,) * 3)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.stem_conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.layers = nn.ModuleList(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
                                        for _ in range(3))

    def stem(self) -> list[nn.Module]:
        return [self.stem_conv]

    def blocks(self) -> nn.ModuleList:
        return self.layers

    def top(self) -> list[nn.Module]:
        return []

    def forward_prefix(self, pixels: torch.Tensor, depth: int) -> torch.Tensor:
        TinyConvNet.seen[depth] = TinyConvNet.seen.get(depth, 0) + len(pixels)
        x = self.stem_conv(pixels)
        for block in self.layers[:depth]:
            x = block(x)
        return x

    def forward_from(self, hidden: torch.Tensor, depth: int) -> torch.Tensor:
        for block in self.layers[depth:]:
            hidden = block(hidden)
        return hidden.mean((2, 3))

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.forward_prefix(pixels, 0), 0)


def open_prefix(data, cache_dir):
    """The prefix-cache entry (2 views: the image and its mirror) of `data` at DEPTH."""
    from longtail.models.prefix_cache import open_prefix_cache

    backbone = TinyConvNet()
    decode = backbone.transform

    def render(images, index):
        x = decode.normalize(images)
        return torch.stack([x, x.flip(-1)], dim=1)

    return open_prefix_cache(backbone, data, DEPTH, 2, render, decode, SPEC, torch.device("cpu"), cache_dir,
                             batch_size=4, progress=False)


def rank_main(images: str, work: str, port: int) -> None:
    """One process of the group: `longtail features` (its process group joined by the command),
    then a prefix-cache build in a fresh group; the array each rank opens goes to rank<r>.npy."""
    TinyConvNet.seen.clear()  # the rows this worker runs, not those of the process it was forked from
    import torch.distributed as dist

    from longtail.cli import main
    from longtail.data.open_images import open_images
    from longtail.models.backbone import BACKBONES

    BACKBONES.register("tiny_convnet", TinyConvNet)
    code = main(["features", "--data", images, "--backbone", "tiny_convnet", "--out", f"{work}/two.npz",
                 "--cache-dir", f"{work}/features2", "--batch-size", "4", "--device", "cpu", "--no-progress"])
    assert code == 0 and not dist.is_initialized()  # the command left its process group
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    cache = open_prefix(open_images(images), Path(work) / "prefix2")
    np.save(Path(work) / f"rank{rank}.npy", np.asarray(cache.array))
    (Path(work) / f"seen{rank}.json").write_text(json.dumps(TinyConvNet.seen))
    dist.destroy_process_group()


def test_ranks_split_whole_batches_of_the_missing_rows():
    from longtail.models.cache_store import rank_ranges

    done = np.zeros(11, dtype=bool)
    done[2:4] = True  # rows 0-1 and 4-10 missing: batches of 3 from each range's start
    assert [rank_ranges(done, 3, r, 2) for r in range(2)] == [[(0, 2), (4, 7)], [(7, 11)]]
    assert [rank_ranges(done, 3, r, 3) for r in range(3)] == [[(0, 2), (4, 7)], [(7, 10)], [(10, 11)]]
    assert rank_ranges(done, 3, 4, 5) == [] and rank_ranges(np.ones(4, dtype=bool), 3, 0, 1) == []


@pytest.mark.slow  # two worker processes: scheduled first (conftest)
def test_two_gloo_processes_write_what_one_process_writes(tmp_path):
    from conftest import free_port, run_torchrun_workers, write_random_images

    from longtail.data.features import load_features
    from longtail.data.open_images import open_images
    from longtail.models.cache_store import save_npy
    from longtail.models.features import extract_features
    from longtail.models.prefix_cache import entry_path

    (tmp_path / "images").mkdir()
    images = write_random_images(tmp_path / "images", {"a": 11, "b": 9}, (18, 30), seed=1)
    data = open_images(str(images))
    one = extract_features(TinyConvNet(), data, batch_size=4, device="cpu", cache_dir=tmp_path / "features1",
                           progress=False)
    one_prefix = np.asarray(open_prefix(data, tmp_path / "prefix1").array)
    # What a one-process build killed after 8 images leaves; the two processes continue from it.
    entry, _ = entry_path(TinyConvNet(), data, DEPTH, SPEC, "fp32", tmp_path / "prefix2", "fp16")
    entry.with_suffix(".shards").mkdir(parents=True)
    save_npy(entry.with_suffix(".shards") / "000000000-000000008.npy", one_prefix[:8])

    logs = run_torchrun_workers(rank_main, (str(images), str(tmp_path), free_port()),
                                [tmp_path / f"rank{r}.log" for r in range(2)])
    assert "reusing 8 images from 1 shards" in logs[0]
    # The work was split in whole batches of 4: features 20 images = 3 + 2 batches; the prefix,
    # 12 missing images x 2 views = 2 + 1 batches (+ 1 image each to learn the state's shape).
    seen = [json.loads((tmp_path / f"seen{r}.json").read_text()) for r in range(2)]
    assert seen == [{"0": 12, "2": 1 + 16}, {"0": 8, "2": 1 + 8}]

    def entries(folder):
        return sorted(p.name for p in folder.iterdir())

    assert entries(tmp_path / "features2") == entries(tmp_path / "features1")  # same key, no shards left
    (name,) = entries(tmp_path / "features1")
    two = load_features(tmp_path / "features2" / name)
    assert two.features.tobytes() == load_features(tmp_path / "features1" / name).features.tobytes()
    assert load_features(tmp_path / "two.npz").features.tobytes() == one.features.tobytes()  # rank 0's --out
    assert entries(tmp_path / "prefix2") == entries(tmp_path / "prefix1")
    for rank in range(2):  # every rank opened the assembled entry
        arr = np.load(tmp_path / f"rank{rank}.npy")
        assert arr.dtype == one_prefix.dtype and arr.tobytes() == one_prefix.tobytes()
    assert (tmp_path / "prefix2" / (entry.name + ".json")).read_text() == \
        (tmp_path / "prefix1" / (entry.name + ".json")).read_text()
