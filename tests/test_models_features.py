"""Feature extraction end to end on a tiny CLIP and generated PNGs: pipeline, cache, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import interrupt_forward, write_random_images

import longtail.cli
from longtail.data.features import load_features
from longtail.data.open_images import open_images
from longtail.errors import DataError
from longtail.models.backbone import load_backbone
from longtail.models.features import extract_features, load_prototype_file
from longtail.models.templates import LIFT, SAGE60

CLASSES = {"cat": 4, "dog": 2, "golden_retriever": 1}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """root/<class>/<i>.png with random sizes and colours (7 images, 3 classes)."""
    return write_random_images(tmp_path_factory.mktemp("images"), CLASSES, (20, 60), seed=0)


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny_clip")


@pytest.fixture(scope="module")
def dataset(folder):
    return open_images(str(folder))


def test_extract_matches_direct_forward(tiny, dataset, tmp_path):
    fs = extract_features(tiny, dataset, batch_size=3, device="cpu", cache_dir=tmp_path,
                          progress=False, prototypes="auto")
    assert fs.features.shape == (7, tiny.feature_dim) and fs.features.dtype == np.float32
    np.testing.assert_array_equal(fs.labels, [0, 0, 0, 0, 1, 1, 2])
    assert fs.class_names == ["cat", "dog", "golden_retriever"]
    with torch.no_grad():
        direct = tiny.forward_features(tiny.preprocess([dataset.load(i) for i in range(7)]))
    np.testing.assert_allclose(fs.features, direct.numpy(), rtol=1e-5, atol=1e-5)
    expected = tiny.text_embeddings(fs.class_names, LIFT).numpy()
    np.testing.assert_allclose(fs.prototypes, expected, rtol=1e-6)
    assert fs.prototype_bias is None
    meta = fs.meta
    assert meta["backbone"] == "tiny_clip" and meta["feature_kind"] == "pooler_output"
    assert meta["dataset_fingerprint"] == dataset.fingerprint() and meta["precision"] == "fp32"


def test_second_call_hits_cache(tiny, dataset, tmp_path, monkeypatch):
    first = extract_features(tiny, dataset, device="cpu", cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 1 and first.prototypes is None

    def boom(pixels):
        raise AssertionError("forward_features called on a cache hit")

    monkeypatch.setattr(tiny, "forward_features", boom)
    second = extract_features(tiny, dataset, device="cpu", cache_dir=tmp_path, progress=False,
                              prototypes="text", prototype_options={"templates": "sage60"})
    np.testing.assert_array_equal(second.features, first.features)
    np.testing.assert_allclose(second.prototypes, tiny.text_embeddings(second.class_names, SAGE60).numpy())
    with pytest.raises(AssertionError, match="cache hit"):  # cache off -> forward runs
        extract_features(tiny, dataset, device="cpu", cache=False, progress=False)


def test_interrupted_extraction_resumes_from_saved_shards(tiny, dataset, tmp_path, monkeypatch, capsys):
    import longtail.models.features as features_module

    monkeypatch.setattr(features_module, "SHARD_IMAGES", 3)  # batches of 2: shards close at 4, 7
    full = extract_features(tiny, dataset, batch_size=2, device="cpu", cache=False, progress=False)
    calls, real = interrupt_forward(monkeypatch, tiny, on_call=3)
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        extract_features(tiny, dataset, batch_size=2, device="cpu", cache_dir=tmp_path, progress=False)
    shards = sorted(p.name for p in tmp_path.glob("*.shards/*.npy"))
    assert shards == ["000000000-000000004.npy"] and not list(tmp_path.glob("*.npz"))
    err = capsys.readouterr().err
    assert "kept 4 of 7 images in 1 shards under" in err and "run the same command again" in err

    calls.clear()
    monkeypatch.setattr(tiny, "forward_features", lambda pixels: calls.append(pixels.shape[0]) or real(pixels))
    resumed = extract_features(tiny, dataset, batch_size=2, device="cpu", cache_dir=tmp_path, progress=False)
    assert sum(calls) == 3  # only images 4..6 were recomputed
    assert "reusing 4 images from 1 shards" in capsys.readouterr().err
    np.testing.assert_allclose(resumed.features, full.features, rtol=1e-6, atol=1e-6)
    assert len(list(tmp_path.glob("*.npz"))) == 1 and not list(tmp_path.glob("*.shards"))


def test_cache_misses_on_other_weights_or_data(dataset, tmp_path):
    b = load_backbone("tiny_clip")
    base = extract_features(b, dataset, device="cpu", cache_dir=tmp_path, progress=False)
    sub = extract_features(b, dataset.subset([0, 4, 6]), device="cpu", cache_dir=tmp_path,
                           progress=False, num_workers=1)
    np.testing.assert_allclose(sub.features, base.features[[0, 4, 6]], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        b.model.vision_model.post_layernorm.bias.add_(1.0)
    shifted = extract_features(b, dataset, device="cpu", cache_dir=tmp_path, progress=False)
    np.testing.assert_allclose(shifted.features, base.features + 1.0, rtol=1e-5, atol=1e-5)
    assert len(list(tmp_path.glob("*.npz"))) == 3


def test_prototype_arrays_are_validated(tiny, dataset, tmp_path):
    good = np.ones((3, tiny.feature_dim), dtype=np.float64)
    fs = extract_features(tiny, dataset, device="cpu", cache_dir=tmp_path, progress=False, prototypes=good)
    assert fs.prototypes.dtype == np.float32 and fs.prototypes.shape == (3, 32)
    path = tmp_path / "p.npy"
    np.save(path, np.ones((4, tiny.feature_dim)))
    with pytest.raises(DataError, match="4 prototype rows but the dataset has 3 classes"):
        load_prototype_file(path, 3, tiny.feature_dim)
    np.save(path, np.ones((3, 5)))
    with pytest.raises(DataError, match=r"shape \(3, 32\)"):
        load_prototype_file(path, 3, tiny.feature_dim)
    bad = good.copy()
    bad[1, 2] = np.nan
    np.save(path, bad)
    with pytest.raises(DataError, match="NaN"):
        load_prototype_file(path, 3, tiny.feature_dim)
    with pytest.raises(DataError, match="not found"):
        load_prototype_file(tmp_path / "missing.npy", 3, 32)


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch, tmp_path):
    """`longtail.cli.main` restricted to this command (others may be written concurrently)."""
    monkeypatch.setattr(longtail.cli, "COMMANDS", ("features",))
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "cache"))
    return lambda *argv: longtail.cli.main(["features", *map(str, argv)])


def test_cli_writes_features_and_text_prototypes(cli, folder, tmp_path, tiny, capsys):
    out = tmp_path / "train.npz"
    assert cli("--data", folder, "--backbone", "tiny_clip", "--out", out, "--no-progress",
               "--templates", "sage60", "--batch-size", "4") == 0
    assert "7 x 32 features, 3 classes (1 to 4 images each), 3 prototypes" in capsys.readouterr().out
    fs = load_features(out)
    assert fs.class_names == list(CLASSES) and fs.features.shape == (7, 32)
    np.testing.assert_allclose(fs.prototypes, tiny.text_embeddings(list(CLASSES), SAGE60).numpy(), rtol=1e-6)
    assert fs.meta["split"] == "train" and fs.meta["templates"] == "sage60"
    assert list((tmp_path / "cache" / "features").glob("tiny_clip-*.npz"))
    # never overwrite silently
    assert cli("--data", folder, "--backbone", "tiny_clip", "--out", out) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli("--data", folder, "--backbone", "tiny_clip", "--out", out, "--overwrite",
               "--prototypes", "none", "--no-progress") == 0
    assert load_features(out).prototypes is None


def test_cli_prototype_file(cli, folder, tmp_path, capsys):
    protos = np.random.default_rng(0).normal(size=(3, 32)).astype(np.float32)
    np.save(tmp_path / "p.npy", protos)
    out = tmp_path / "f.safetensors"
    assert cli("--data", folder, "--backbone", "tiny_clip", "--out", out, "--no-progress",
               "--prototypes", tmp_path / "p.npy") == 0
    np.testing.assert_array_equal(load_features(out).prototypes, protos)
    np.save(tmp_path / "bad.npy", protos[:2])
    assert cli("--data", folder, "--backbone", "tiny_clip", "--out", tmp_path / "g.npz",
               "--no-progress", "--prototypes", tmp_path / "bad.npy") == 2
    err = capsys.readouterr().err.strip()
    assert "2 prototype rows but the dataset has 3 classes" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "g.npz").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "{tmp}/nowhere", "--backbone", "tiny_clip"], "not found"),
        (["--data", "{folder}", "--backbone", "no_such_net"], "tiny_clip"),
        (["--data", "{folder}", "--backbone", "tiny_clip", "--prototypes", "imagenet"], "choose from: text"),
        (["--data", "{folder}", "--backbone", "tiny_clip", "--prototypes", "{tmp}/x.npy"], "not found"),
    ],
)
def test_cli_bad_inputs(cli, folder, tmp_path, capsys, args, message):
    argv = [a.format(tmp=tmp_path, folder=folder) for a in args]
    assert cli(*argv, "--out", tmp_path / "o.npz", "--no-progress") == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.npz").exists()


def test_cli_help_has_example(cli, capsys):
    with pytest.raises(SystemExit):
        cli("--help")
    text = capsys.readouterr().out
    assert "examples:" in text and "--prototypes" in text and "--imagenet-map" in text
