"""Evaluating from the frozen-prefix cache: the test images' prefix is computed once and every
model sharing it (runs, soups, interpolations) is scored from it, with the full forward's
logits; a deeper entry is derived from a shallower one without decoding an image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from longtail.eval.metrics import balanced_accuracy
from longtail.io import read_json
from longtail.methods.finetune import RunModel, build_config, fit, predict_logits
from longtail.methods.finetune.data import open_split
from longtail.methods.finetune.predict import evaluation_logits
from longtail.models.backbone import load_backbone
from longtail.models.prefix_cache import open_prefix_cache
from longtail.models.preprocess import EvalTransform
from longtail.soups.merge import load_state_dict, merge, weights_file

SMALL = {"num_classes": 4, "n_max": 12, "imbalance_ratio": 4, "test_per_class": 4, "size": 16}


def cnn_cfg(root, cache, **kw):
    options = {"data_options": SMALL, "root": root, "batch_size": 8, "progress": False, "num_workers": 0,
               "backbone_options": {"image_size": 32, "pretrained": False}, "head_init": "random",
               "epochs": 1, "lr": 0.05, "augment": "none", "prefix_cache": "on", "prefix_views": 2,
               "prefix_dtype": "fp32", "prefix_cache_dir": str(cache), **kw}
    return build_config("synthetic_images", "efficientnet_lite0", "partial_ft", options)


def metas(cache, kind):
    return {p.name: json.loads(p.read_text()) for p in cache.glob("*.json")
            if (json.loads(p.read_text())["spec"]["views"]["kind"] == "test") == (kind == "test")}


def test_evaluation_reads_one_test_entry_and_gives_the_full_forward_logits(tmp_path):
    cache, root = tmp_path / "cache", str(tmp_path / "data")
    fit(cnn_cfg(root, cache), out=tmp_path / "run", report=False)
    (name, meta), = metas(cache, "test").items()
    model = RunModel(tmp_path / "run", "cpu")
    assert meta["shape"][:2] == [len(model.test), 1] and meta["depth"] == model.model.backbone.num_blocks - 1
    stamp = (cache / name).with_suffix(".npy").stat().st_mtime_ns
    full = predict_logits(model.model, model.test, device="cpu")
    torch.testing.assert_close(evaluation_logits(model.model, model.cfg, model.test, "cpu"), full, rtol=1e-4, atol=1e-4)
    saved = read_json(tmp_path / "run" / "metrics.json")["class_mean"]
    assert saved == pytest.approx(balanced_accuracy(full, np.asarray(model.test.labels), 4), abs=1e-9)
    # another model with the same frozen prefix (WiSE-FT halfway to theta_0) reads the same entry
    state, _ = merge("wise", [tmp_path / "run"], base=model.zero_shot(), alpha=0.5)
    tuned = load_state_dict(weights_file(tmp_path / "run"))
    assert not torch.equal(state["head.weight"], tuned["head.weight"])
    metrics = model.metrics(state)
    model.load(state)
    expected = balanced_accuracy(predict_logits(model.model, model.test, device="cpu"), np.asarray(model.test.labels), 4)
    assert metrics["class_mean"] == pytest.approx(expected, abs=1e-9)
    assert list(metas(cache, "test")) == [name] and (cache / name).with_suffix(".npy").stat().st_mtime_ns == stamp
    # a run that does not train from the cache evaluates through the full network
    plain = fit(cnn_cfg(root, tmp_path / "other", prefix_cache="off"), out=tmp_path / "plain", report=False)
    assert plain.metrics["class_mean"] >= 0 and not (tmp_path / "other").exists()


def test_a_deeper_entry_is_derived_from_a_shallower_one_without_decoding(tmp_path):
    backbone = load_backbone("efficientnet_lite0", pretrained=False, image_size=32)
    data = open_split(cnn_cfg(str(tmp_path / "data"), tmp_path), "train")
    decode = EvalTransform(size=32, crop_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    calls = []

    def render(images, index):
        calls.append(len(index))
        x = decode.normalize(images)
        return torch.stack([x, x.flip(-1)], dim=1)

    def entry(folder, depth, dtype="fp32"):
        return open_prefix_cache(backbone, data, depth, 2, render, decode, {"views": {"kind": "flip"}},
                                 torch.device("cpu"), folder, batch_size=8, progress=False, dtype=dtype)

    direct = np.array(entry(tmp_path / "direct", 14).array)
    shallow = entry(tmp_path / "shared", 11)
    calls.clear()
    derived = entry(tmp_path / "shared", 14)
    assert calls == [1]  # only the probe image that tells the shape: no image is decoded for the states
    assert derived.meta["derived_from"] == shallow.path.name
    np.testing.assert_allclose(np.array(derived.array), direct, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # other weights in blocks 0..10: the shallow entry is not theirs
        backbone.blocks()[3].parameters().__next__().mul_(1.5)
    calls.clear()
    assert entry(tmp_path / "shared", 14).meta["derived_from"] is None and sum(calls) == 1 + len(data)
