"""Feature caches keyed on content (observation 2 of issue 13) and shards that keep an
interrupted extraction's work, saying what was kept and what is reused."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
from conftest import interrupt_forward
from PIL import Image

import longtail.cli
import longtail.data.images as images_module
import longtail.models.features as features_module
from longtail.data.features import load_features
from longtail.data.open_images import open_images
from longtail.models.backbone import load_backbone
from longtail.models.features import extract_features

CLASSES = {"cat": 3, "dog": 2, "eel": 2}


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)


def _rewrite_in_place(path, seed: int) -> None:
    """Other pixels under the same name and the same size (BMP), with the old mtime restored."""
    before = os.stat(path)
    Image.fromarray(_pixels(seed)).save(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


@pytest.fixture()
def folder(tmp_path):
    """root/<class>/<i>.bmp: fixed-size files, so an edit can keep the size."""
    root = tmp_path / "images"
    seed = 0
    for name, count in CLASSES.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(_pixels(seed)).save(root / name / f"{i}.bmp")
            seed += 1
    return root


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny_clip")


def _extract(tiny, spec, cache_dir, **kw):
    return extract_features(tiny, open_images(str(spec)), batch_size=2, device="cpu",
                            cache_dir=cache_dir, progress=False, **kw)


def test_image_edited_in_place_is_extracted_again(tiny, folder, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    first = _extract(tiny, folder, cache)
    _rewrite_in_place(folder / "cat" / "0.bmp", seed=99)
    capsys.readouterr()
    second = _extract(tiny, folder, cache)  # no --no-cache: the content key misses by itself
    assert "stale" in capsys.readouterr().err
    assert not np.allclose(second.features[0], first.features[0])
    np.testing.assert_allclose(second.features[1:], first.features[1:], rtol=1e-5, atol=1e-6)
    fresh = _extract(tiny, folder, None, cache=False)
    np.testing.assert_allclose(second.features, fresh.features, rtol=1e-5, atol=1e-6)
    assert len(list(cache.glob("*.npz"))) == 1  # the stale entry was replaced, not kept beside

    # a touch (same bytes, new mtime) keeps the entry: small folders are keyed on their bytes
    os.utime(folder / "cat" / "1.bmp", ns=(1, 10**18))

    def boom(pixels):
        raise AssertionError("forward_features called on a cache hit")

    monkeypatch.setattr(tiny, "forward_features", boom)
    np.testing.assert_array_equal(_extract(tiny, folder, cache).features, second.features)


def test_large_folders_key_on_size_and_mtime(folder, monkeypatch):
    """Above CONTENT_HASH_LIMIT bytes, files are keyed on size + mtime_ns: every ordinary write
    is seen; a same-size rewrite with the old mtime restored is not (documented)."""
    monkeypatch.setattr(images_module, "CONTENT_HASH_LIMIT", 0)
    base = open_images(str(folder)).fingerprint()
    path = folder / "dog" / "1.bmp"
    _rewrite_in_place(path, seed=50)
    assert open_images(str(folder)).fingerprint() == base  # the documented blind spot
    Image.fromarray(_pixels(51)).save(path)  # an ordinary write moves the mtime
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1000))
    assert open_images(str(folder)).fingerprint() != base


def _zip(folder, path, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for file in sorted(folder.rglob("*.bmp")):
            archive.write(file, file.relative_to(folder).as_posix())


def test_zip_member_edited_is_seen_through_its_crc(tiny, folder, tmp_path):
    archive = tmp_path / "images.zip"
    _zip(folder, archive)
    cache = tmp_path / "cache"
    first = _extract(tiny, archive, cache)
    before = os.stat(archive)
    _rewrite_in_place(folder / "eel" / "1.bmp", seed=77)
    _zip(folder, archive)
    os.utime(archive, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (os.stat(archive).st_size, os.stat(archive).st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    second = _extract(tiny, archive, cache)
    assert not np.allclose(second.features[-1], first.features[-1])
    np.testing.assert_allclose(second.features[:-1], first.features[:-1], rtol=1e-5, atol=1e-6)
    assert len(list(cache.glob("*.npz"))) == 1


def test_shards_close_by_time_and_both_runs_say_what_was_kept(tiny, folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(features_module, "SHARD_IMAGES", 10**6)
    monkeypatch.setattr(features_module, "SHARD_SECONDS", 0.0)  # every batch closes a shard
    dataset = open_images(str(folder))
    calls, real = interrupt_forward(monkeypatch, tiny, on_call=3)
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        extract_features(tiny, dataset, batch_size=2, device="cpu", cache_dir=tmp_path / "c", progress=False)
    err = capsys.readouterr().err
    shard_dir = next((tmp_path / "c").glob("*.shards"))
    assert f"kept 4 of 7 images in 2 shards under {shard_dir}; run the same command again to continue" in err
    assert sorted(p.name for p in shard_dir.iterdir()) == ["000000000-000000002.npy", "000000002-000000004.npy"]

    (shard_dir / "000000002-000000004.npy").write_bytes(b"torn")  # a damaged shard is redone
    calls.clear()
    monkeypatch.setattr(tiny, "forward_features", lambda pixels: calls.append(pixels.shape[0]) or real(pixels))
    resumed = extract_features(tiny, dataset, batch_size=2, device="cpu", cache_dir=tmp_path / "c", progress=False)
    assert "reusing 2 images from 1 shards" in capsys.readouterr().err
    assert sum(calls) == 5
    full = extract_features(tiny, dataset, batch_size=2, device="cpu", cache=False, progress=False)
    np.testing.assert_allclose(resumed.features, full.features, rtol=1e-5, atol=1e-6)
    assert not list((tmp_path / "c").glob("*.shards"))


def test_observation_2_replayed_on_the_cli(folder, tmp_path, monkeypatch, capsys):
    """`features` twice with an image replaced under the same name: the second run returns the
    new features, equal to `--no-cache`."""
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(longtail.cli, "COMMANDS", ("features",))

    def features(out, *extra):
        argv = ["features", "--data", str(folder), "--backbone", "tiny_clip", "--out", str(tmp_path / out),
                "--no-progress", "--prototypes", "none", *extra]
        assert longtail.cli.main(argv) == 0
        return load_features(tmp_path / out).features

    before = features("a.npz")
    _rewrite_in_place(folder / "dog" / "0.bmp", seed=123)
    after = features("b.npz")
    fresh = features("c.npz", "--no-cache")
    np.testing.assert_allclose(after, fresh, rtol=1e-5, atol=1e-6)
    assert not np.allclose(after[3], before[3])
