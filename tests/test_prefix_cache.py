"""The frozen-prefix cache: cached runs train like uncached ones, resume bit-identically, share
one entry across runs, and never use a corrupted or foreign entry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from longtail.methods.finetune import build_config, fit
from longtail.methods.finetune.checkpoint import WEIGHTS
from longtail.methods.finetune.data import open_split
from longtail.methods.finetune.prefix import ViewRenderer, crop_params, epoch_views
from longtail.models.backbone import load_backbone
from longtail.models.prefix_cache import open_prefix_cache
from longtail.models.preprocess import EvalTransform, InputSpec

SMALL = {"num_classes": 4, "n_max": 12, "imbalance_ratio": 4, "test_per_class": 4, "size": 16}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic"))


def cnn_cfg(root, cache, **kw):
    options = {"data_options": SMALL, "root": root, "batch_size": 8, "progress": False, "num_workers": 0,
               "backbone_options": {"image_size": 32, "pretrained": False}, "head_init": "random",
               "epochs": 2, "lr": 0.01, "augment": "none", "prefix_cache": "on", "prefix_views": 1,
               "prefix_cache_dir": str(cache), **kw}
    return build_config("synthetic_images", "efficientnet_lite0", "partial_ft", options)


def weights(run):
    return load_file(run / WEIGHTS)


def entries(cache):
    """The training-image entries (evaluation adds one of the test images, views kind 'test')."""
    return sorted(p.with_suffix(".npy").name for p in cache.glob("*.json")
                  if json.loads(p.read_text())["spec"]["views"]["kind"] != "test")


@pytest.mark.parametrize(("backbone", "dtype"), [("efficientnet_lite0", "fp32"), ("tiny_clip", "fp16")])
def test_one_view_without_augmentation_trains_like_the_uncached_run(root, tmp_path, backbone, dtype):
    cache = tmp_path / "cache"
    extra = {"prefix_dtype": dtype} if backbone == "efficientnet_lite0" else {
        "prefix_dtype": dtype, "backbone": "tiny_clip", "backbone_options": {"image_size": 16, "patch_size": 8}}
    plain = fit(cnn_cfg(root, cache, prefix_cache="off", **extra), out=tmp_path / "plain", report=False)
    cached = fit(cnn_cfg(root, cache, **extra), out=tmp_path / "cached", report=False)
    (entry,) = entries(cache)
    array = np.load(cache / entry, mmap_mode="r")
    assert array.dtype == {"fp16": np.float16, "fp32": np.float32}[dtype]
    assert array.shape[:2] == (len(cached.splits.train), 1)  # V = 1
    if backbone == "tiny_clip":
        assert array.shape[2:] == (5, 32)  # CLS + 4 patch tokens after block L - 1
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "cached")
    assert a.keys() == b.keys() and len(plain.history) == len(cached.history) == 2
    options = cnn_cfg(root, cache, **extra).backbone_options
    init = {f"backbone.{k}": v for k, v in load_backbone(extra.get("backbone", backbone), **options).state_dict().items()}
    init["head.weight"] = a["w_zs"]
    for key in sorted(set(a) - {"w_zs"}):
        if dtype == "fp32":  # the same states: equal up to float summation order
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
        else:  # fp16 states (~1e-3 relative): the same training up to that rounding
            assert (a[key] - b[key]).norm() <= 0.05 * (a[key] - init[key]).norm() + 1e-7, key
    assert not torch.equal(a["head.weight"], a["w_zs"])


def test_resume_of_a_cached_run_is_bit_identical_and_reuses_the_entry(root, tmp_path):
    cache = tmp_path / "cache"
    cfg = cnn_cfg(root, cache, prefix_views=2, save_every=1)
    full = fit(cfg, out=tmp_path / "full", report=False)
    (entry,) = entries(cache)
    stamp = (cache / entry).stat().st_mtime_ns
    part = fit(cfg, out=tmp_path / "resumed", stop_after_steps=3, report=False)
    assert part.interrupted
    resumed = fit(cfg, out=tmp_path / "resumed", resume=True, report=False)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "resumed")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert entries(cache) == [entry] and (cache / entry).stat().st_mtime_ns == stamp  # built once


def test_views_are_seeded_and_batch_independent():
    idx = torch.arange(6)
    first = crop_params(idx, 1, seed=3, scale=(0.08, 1.0))
    again = crop_params(idx[[5, 2]], 1, seed=3, scale=(0.08, 1.0))
    for whole, part in zip(first, again):
        assert torch.equal(whole[[5, 2]], part)
    w, h, x0, y0, _ = first
    assert bool(((w * h >= 0.08 - 1e-6) & (x0 + w <= 1 + 1e-6) & (y0 + h <= 1 + 1e-6)).all())
    assert not torch.equal(first[0], crop_params(idx, 2, seed=3, scale=(0.08, 1.0))[0])  # views differ
    views = [epoch_views(0, e, 1000, 2) for e in range(3)]
    assert all(0.4 < v.mean() < 0.6 for v in views) and not np.array_equal(views[0], views[1])
    images = torch.randint(0, 256, (3, 20, 20, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    spec = InputSpec(size=16, mean=(0.5,) * 3, std=(0.25,) * 3, test_resize_ratio=1.0)
    flip = ViewRenderer(cnn_cfg("x", "y", prefix_views=2), spec)(images, torch.arange(3))
    assert flip.shape == (3, 2, 3, 16, 16) and torch.equal(flip[:, 1], flip[:, 0].flip(-1))
    cfg = cnn_cfg("x", "y", prefix_views=3, prefix_view_kind="rrc_flip")
    crops = ViewRenderer(cfg, spec)(images, torch.arange(3))
    assert crops.shape == (3, 3, 3, 16, 16) and bool(crops.isfinite().all())
    assert torch.equal(ViewRenderer(cfg, spec)(images[1:], torch.arange(1, 3)), crops[1:])  # batch-independent


def test_corrupted_foreign_or_incomplete_entries_are_rebuilt_never_used(root, tmp_path):
    backbone = load_backbone("efficientnet_lite0", pretrained=False, image_size=32)
    data = open_split(cnn_cfg(root, tmp_path), "train")
    decode = EvalTransform(size=32, crop_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    calls = []

    def render(images, index):
        calls.append(len(index))
        return decode.normalize(images)[:, None]

    def open_cache():
        return open_prefix_cache(backbone, data, 12, 1, render, decode, {"test": 1}, torch.device("cpu"),
                                 tmp_path / "cache", batch_size=16, progress=False)

    good = np.array(open_cache().array)
    path = next((tmp_path / "cache").glob("*.npy"))
    meta_file = path.with_suffix(".json")
    built = len(calls)
    assert np.array_equal(np.array(open_cache().array), good) and len(calls) == built + 1  # reused: only the probe

    def damage_bytes():
        raw = bytearray(path.read_bytes())
        raw[-7] ^= 0xFF
        path.write_bytes(bytes(raw))

    def foreign():
        meta = json.loads(meta_file.read_text())
        meta_file.write_text(json.dumps({**meta, "key": "0" * 24}))

    damages = {"checksum": damage_bytes, "foreign": foreign,
               "unreadable|shape": lambda: path.write_bytes(path.read_bytes()[:-64]),  # truncated
               "unreadable": lambda: meta_file.unlink()}
    for why, damage in damages.items():
        damage()
        before = len(calls)
        with pytest.warns(UserWarning, match=why):
            rebuilt = open_cache()
        assert len(calls) > before + 1, why  # computed again
        assert np.array_equal(np.array(rebuilt.array), good), why


def test_an_interrupted_build_continues_from_its_shards(root, tmp_path, monkeypatch):
    import longtail.models.prefix_cache as prefix_cache

    monkeypatch.setattr(prefix_cache, "SHARD_IMAGES", 8)
    backbone = load_backbone("efficientnet_lite0", pretrained=False, image_size=32)
    data = open_split(cnn_cfg(root, tmp_path), "train")
    decode = EvalTransform(size=32, crop_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    seen = []

    def render(images, index, stop_at=None):
        seen.extend(index.tolist())
        if stop_at is not None and len(seen) > stop_at:
            raise KeyboardInterrupt
        return decode.normalize(images)[:, None]

    def build(folder, stop_at=None):
        return open_prefix_cache(backbone, data, 14, 1, lambda x, i: render(x, i, stop_at), decode, {},
                                 torch.device("cpu"), folder, batch_size=8, progress=False)

    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "a", stop_at=17)  # the probe image, then two batches of 8 shard
    assert len(list((tmp_path / "a").glob("*.shards/*.npy"))) == 2
    seen.clear()
    resumed = np.array(build(tmp_path / "a").array)
    assert len(seen) == 1 + len(data) - 16  # the probe + only the images not in a shard
    assert not list((tmp_path / "a").glob("*.shards"))
    assert np.array_equal(resumed, np.array(build(tmp_path / "b").array))
