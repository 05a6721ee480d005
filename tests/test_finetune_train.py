"""End-to-end fine-tuning on tiny CLIP + tiny synthetic images: learning, resume, CLI, reload."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from longtail.cli import main
from longtail.methods.finetune import build_config, fit, load_finetuned, predict_logits
from longtail.methods.finetune.trainer import open_split

SMALL = {"num_classes": 4, "n_max": 12, "imbalance_ratio": 4, "test_per_class": 4, "size": 16}

@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic"))


def small_cfg(root: str, method: str = "lift", **overrides):
    options = {"data_options": SMALL, "root": root, "batch_size": 8, "progress": False,
               "backbone_options": {"image_size": 16, "patch_size": 8}, **overrides}
    return build_config("synthetic_images", "tiny_clip", method, options)


def test_training_lowers_loss_and_raises_accuracy(root, tmp_path):
    cfg = small_cfg(root, "lift", epochs=4, lr=0.05)
    zero = fit(small_cfg(root, "zero_shot"), out=tmp_path / "zs", report=False)
    result = fit(cfg, out=tmp_path / "lift", report=False)
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0]
    assert result.history[-1]["train_acc"] > result.history[0]["train_acc"]
    assert result.metrics["all"] > zero.metrics["all"] + 0.2
    m = json.loads((tmp_path / "lift" / "metrics.json").read_text())
    assert {"all", "many", "medium", "few", "ece", "train_images_per_s", "max_gpu_memory_gb"} <= set(m)
    assert m["train_images_per_s"] > 0 and m["optimizer_steps"] == 4 * 4  # 27 images / batch 8


def test_resume_equals_uninterrupted(root, tmp_path):
    """Interrupt mid-epoch (random crops, flips, shuffling on), resume, compare the final weights."""
    cfg = small_cfg(root, "sage", epochs=2, grad_accum=2, save_every=1)
    full = fit(cfg, out=tmp_path / "full", report=False)
    part = fit(cfg, out=tmp_path / "resumed", stop_after_steps=5, report=False)
    assert part.interrupted and not (tmp_path / "resumed" / "metrics.json").exists()
    resumed = fit(cfg, out=tmp_path / "resumed", resume=True, report=False)
    a = load_file(tmp_path / "full" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert not torch.equal(a["head.weight"], a["w_zs"])  # training did move the head
    assert resumed.metrics["all"] == full.metrics["all"]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]


def test_cli_fit_eval_and_reload(root, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["fit", "-d", "synthetic_images", "-b", "tiny_clip", "-m", "lift", "--out", str(out), "--json",
            "epochs=1", f"root={root}", "tte=true", "progress=false", "backbone_options.image_size=16",
            "backbone_options.patch_size=8"] + [f"data_options.{k}={v}" for k, v in SMALL.items()]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"all", "many", "medium", "few", "ece"} <= set(summary)
    for name in ("config.yaml", "env.json", "metrics.json", "per_class.csv", "report.html",
                 "adapter_model.safetensors", "adapter_config.json", "data_stats.json"):
        assert (out / name).is_file(), name
    assert main(args) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err
    model, info = load_finetuned(out, device="cpu")
    cfg = info["config"]
    test_set = open_split(cfg, "test")
    logits = predict_logits(model, test_set, tte=True, device="cpu")
    acc = float((logits.argmax(1) == np.asarray(test_set.labels)).mean())
    assert acc == pytest.approx(summary["all"])
    from longtail.eval.evaluators import evaluate_run

    assert evaluate_run(out)["all"] == pytest.approx(summary["all"])


def test_cli_unknown_key_lists_valid_keys(capsys):
    assert main(["fit", "-d", "synthetic_images", "-b", "tiny_clip", "-m", "lift", "epoch=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key epoch" in err and "epochs" in err and "lambda3" in err
    assert main(["fit", "-d", "nope", "-b", "tiny_clip", "-m", "lift"]) == 2
    assert "cifar100_ir100" in capsys.readouterr().err


@pytest.mark.parametrize("method, extra", [("sage", {}), ("linear_probe", {}), ("full_ft", {}), ("lift_plus", {}),
                                           ("lift", {"loss": "ccar-la", "loss_options.omega": 0.75})])
def test_every_method_runs_offline(root, tmp_path, method, extra):
    result = fit(small_cfg(root, method, epochs=1, **extra), out=tmp_path / method, report=False)
    assert 0.0 <= result.metrics["all"] <= 1.0 and result.metrics["optimizer_steps"] == 4


def test_failed_new_run_leaves_no_folder_but_checkpointed_run_stays(root, tmp_path, monkeypatch):
    import longtail.methods.finetune.runner as runner
    from longtail.errors import ConfigError

    def fails(cfg, run=None, **kw):
        raise ConfigError("model cannot be built")

    monkeypatch.setattr(runner, "train", fails)
    with pytest.raises(ConfigError):
        fit(small_cfg(root), out=tmp_path / "a", report=False)
    assert not (tmp_path / "a").exists()  # nothing to resume: the same --out works again

    def fails_after_checkpoint(cfg, run=None, **kw):
        (run.dir / "checkpoints").mkdir()
        (run.dir / "checkpoints" / "latest.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "train", fails_after_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        fit(small_cfg(root), out=tmp_path / "b", report=False)
    assert (tmp_path / "b" / "config.yaml").exists()  # kept for --resume
