"""The trainer (issue 21 item 5): `train_loop` takes one `Parts` object and returns a complete
result; the loss is summed on the device and read once per interval, with the tracker still
getting every optimizer step's loss; a failure inside the loop is recorded by the runner."""

from __future__ import annotations

import pytest
import torch

from longtail.errors import ConfigError
from longtail.methods.finetune import build_config, engine, runner

DATA = dict(num_classes=4, n_max=16, imbalance_ratio=4, test_per_class=5, size=32)


def _cfg(tmp_path, **extra):
    return build_config("synthetic_images", "tiny_clip", "lift", {
        "data_options": DATA, "root": str(tmp_path / "data"), "backbone_options": {"image_size": 16, "patch_size": 8},
        "batch_size": 8, "grad_accum": 2, "epochs": 2, "device": "cpu", "progress": False, "num_workers": 0,
        "head_init": "random", **extra})


class _Tracker:
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict]] = []

    def log(self, values: dict, step: int | None = None) -> None:
        self.rows.append((step, values))


def test_loop_takes_parts_and_reads_the_loss_once_per_interval(tmp_path, monkeypatch):
    tracker = _Tracker()
    parts = engine.build(_cfg(tmp_path), engine.make_accelerator(_cfg(tmp_path)), tracker=tracker)
    assert isinstance(parts, engine.Parts) and parts.schedule.total == 2 * parts.schedule.steps_per_epoch
    reads = []
    flush = engine.Meter.flush
    monkeypatch.setattr(engine.Meter, "flush", lambda self, *a: reads.append(1) or flush(self, *a))
    result = engine.train_loop(parts)
    assert result.splits is parts.splits and result.metrics["throughput"]["optimizer_steps"] == parts.schedule.total
    micro_batches = 2 * parts.schedule.per_epoch
    assert len(reads) == 2 < micro_batches  # one host read per epoch here (no checkpoint, no selection)
    steps = [(s, v) for s, v in tracker.rows if "train/loss" in v]
    assert [s for s, _ in steps] == list(range(1, parts.schedule.total + 1))  # every step, in order
    per_epoch = parts.schedule.steps_per_epoch
    first = [v["train/loss"] for _, v in steps[:per_epoch]]
    history = result.history[0]
    assert history["loss"] == pytest.approx(sum(first) / len(first), rel=0.2)  # the epoch mean of its steps
    epochs = [s for s, v in tracker.rows if "epoch/loss" in v]
    assert epochs == [per_epoch, 2 * per_epoch]
    assert all(torch.isfinite(torch.tensor(v["train/loss"])) for _, v in steps)


def test_a_failing_loop_leaves_no_new_run_folder(tmp_path, monkeypatch):
    seen = []

    def fails(parts):
        seen.append(parts)
        raise ConfigError("model cannot be built")

    monkeypatch.setattr(runner, "train_loop", fails)
    with pytest.raises(ConfigError):
        runner.fit(_cfg(tmp_path), out=tmp_path / "a", report=False)
    assert not (tmp_path / "a").exists() and isinstance(seen[0], engine.Parts) and seen[0].run is not None
