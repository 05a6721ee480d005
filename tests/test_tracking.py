"""log_with=tensorboard: a tiny fit run and a probe run write event files under RUN/tracking that
hold the loss curve and the final shot-group metrics; a missing package is a one-line error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from longtail.errors import ConfigError
from longtail.methods.tracking import require_tracker

GROUPS = ("all", "many", "medium", "few")


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the event files directly in `folder` (tag -> [(step, value)])."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _check_final(scalars: dict, metrics: dict) -> None:
    """Every shot group the run scored (a group without classes is None) is logged once, equal."""
    scored = [g for g in GROUPS if isinstance(metrics.get(g), float) and math.isfinite(metrics[g])]
    assert "all" in scored and "few" in scored
    for group in scored:
        (_, value), = scalars[f"test/{group}"]
        assert value == pytest.approx(metrics[group], abs=1e-6), group


def test_fit_logs_curves_and_shot_groups_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from longtail.methods.finetune import build_config, fit

    cfg = build_config("synthetic_images", "tiny_clip", "linear_probe", {
        "data_options": {"num_classes": 4, "n_max": 12, "imbalance_ratio": 4, "test_per_class": 2, "size": 16},
        "root": str(tmp_path / "data"), "batch_size": 8, "epochs": 2, "progress": False,
        "backbone_options": {"image_size": 16, "patch_size": 8}, "log_with": "tensorboard"})
    result = fit(cfg, out=tmp_path / "run", report=False)
    run = tmp_path / "run"
    record = json.loads((run / "tracking.json").read_text())
    assert record["log_with"] == "tensorboard" and record["dir"] == "tracking"
    assert "log_with: tensorboard" in (run / "config.yaml").read_text()
    scalars = _scalars(run / "tracking")
    steps = result.metrics["optimizer_steps"]
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, steps + 1))  # one point per optimizer step
    assert len(scalars["train/lr"]) == steps and len(scalars["epoch/loss"]) == 2
    assert scalars["epoch/loss"][-1][1] == pytest.approx(result.history[-1]["loss"])
    _check_final(scalars, json.loads((run / "metrics.json").read_text()))
    assert list((run / "tracking").glob("*/hparams.yml"))  # the resolved config as hyperparameters


def test_probe_logs_shot_groups_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from longtail.data.features import FeatureSet
    from longtail.methods.probe import ProbeConfig
    from longtail.methods.probe.run import run_probe

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), (60, 30, 12, 6))
    x = (rng.normal(size=(4, 8)) * 2)[y] + rng.normal(size=(y.size, 8))
    data = FeatureSet(x.astype(np.float32), y, class_names=[f"c{i}" for i in range(4)])
    folder, metrics = run_probe(data, data, ProbeConfig(log_with="tensorboard"), out=tmp_path / "probe",
                                many=50, few=10, report=False)
    assert json.loads((folder / "tracking.json").read_text())["log_with"] == "tensorboard"
    scalars = _scalars(folder / "tracking")
    assert "train/final_objective" in scalars and "train/iterations" in scalars
    _check_final(scalars, metrics)
    assert {"test/many", "test/medium"} <= set(scalars)  # 60 | 30, 12 | 6 images: every group scored


def test_missing_tracker_package_is_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"log_with=mlflow needs the 'mlflow' package: pip install") as err:
        require_tracker("mlflow")
    assert "\n" not in str(err.value)
    require_tracker(None)
