"""Issue 21 item 4: the features, stats and MonoSoup pipelines are library calls, usable without
the CLI (`models.extract.extract_to_file`, `data.stats.dataset_stats` with
`eval.plots.save_count_plot`, `soups.monosoup.run_monosoup`); tiny data made here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import write_random_images

from longtail.data.features import FeatureSet, load_features, save_features
from longtail.data.stats import StatsConfig, dataset_stats
from longtail.errors import ConfigError
from longtail.eval.plots import save_count_plot
from longtail.models.extract import FeaturesConfig, extract_to_file
from longtail.soups.merge import save_state_dict
from longtail.soups.monosoup import MonoSoupConfig, run_monosoup


def test_dataset_stats_of_a_feature_file_and_its_validation_part(tmp_path):
    labels = np.repeat(np.arange(3), [12, 5, 2])
    fs = FeatureSet(np.zeros((labels.size, 2), np.float32), labels, class_names=["a", "b", "c"], source="x")
    save_features(fs, tmp_path / "f.npz")
    name, stats = dataset_stats(StatsConfig(str(tmp_path / "f.npz"), many=10, few=3))
    assert name == "f" and stats.counts.tolist() == [12, 5, 2] and stats.groups.tolist() == ["many", "medium", "few"]
    _, val = dataset_stats(StatsConfig(str(tmp_path / "f.npz"), split="val", val_per_class=1))
    assert val.counts.tolist() == [1, 1, 1]
    with pytest.raises(ConfigError, match="takes no dataset options"):
        dataset_stats(StatsConfig(str(tmp_path / "f.npz"), data_options={"ir": 2}))
    assert save_count_plot(stats, tmp_path / "counts.png", name).stat().st_size > 0


def test_extract_to_file_writes_a_feature_file_and_refuses_to_overwrite(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "images").mkdir()
    images = write_random_images(tmp_path / "images", {"cat": 3, "dog": 2}, (20, 40), seed=0)
    cfg = FeaturesConfig(str(images), "tiny_clip", str(tmp_path / "f.npz"), device="cpu", progress=False)
    fs = extract_to_file(cfg)
    assert fs is not None and fs.prototypes is not None and fs.class_names == ["cat", "dog"]
    again = load_features(tmp_path / "f.npz")
    assert np.array_equal(again.features, fs.features) and again.meta["backbone_options"] == {}
    with pytest.raises(ConfigError, match="already exists"):
        extract_to_file(cfg)


def test_run_monosoup_on_weight_files(tmp_path):
    g = torch.Generator().manual_seed(0)
    w0 = {"enc.fc.weight": torch.randn(6, 5, generator=g), "head.weight": torch.randn(3, 6, generator=g)}
    w1 = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in w0.items()}
    f0, f1 = save_state_dict(w0, tmp_path / "w0.safetensors"), save_state_dict(w1, tmp_path / "w1.safetensors")
    result = run_monosoup(f1, f0, MonoSoupConfig(device="cpu"), out=tmp_path / "mono")
    assert result.folder == tmp_path / "mono" and result.edited == 2 and result.comparison == []
    log = json.loads((result.folder / "monosoup_log.json").read_text())
    assert log == json.loads(json.dumps(result.log))
    with pytest.raises(ConfigError, match="need a fit run folder"):
        run_monosoup(f1, "zero-shot", MonoSoupConfig(device="cpu"), out=tmp_path / "other")
