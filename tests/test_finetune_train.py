"""End-to-end fine-tuning on tiny CLIP + tiny synthetic images: learning, resume, CLI, reload."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from longtail.cli import main
from longtail.methods.finetune import build_config, fit, load_finetuned, predict_logits
from longtail.methods.finetune.checkpoint import WEIGHTS, WEIGHTS_CONFIG
from longtail.methods.finetune.data import open_split
from longtail.methods.finetune.presets import METHOD_PRESETS
from longtail.methods.finetune.runner import config_from_run
from tests.conftest import copy_runs

SMALL = {"num_classes": 4, "n_max": 12, "imbalance_ratio": 4, "test_per_class": 4, "size": 16}

@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic"))


def small_cfg(root: str, method: str = "lift", **overrides):
    options = {"data_options": SMALL, "root": root, "batch_size": 8, "progress": False,
               "backbone_options": {"image_size": 16, "patch_size": 8}, **overrides}
    return build_config("synthetic_images", "tiny_clip", method, options)


def test_training_lowers_loss_and_raises_accuracy(root, tmp_path):
    cfg = small_cfg(root, "lift", epochs=4, lr=0.05, seed=1)  # 16 test images: seeds 0..3 give 50-94 %
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
    t0 = time.perf_counter()
    part = fit(cfg, out=tmp_path / "resumed", stop_after_steps=5, report=False)
    assert part.interrupted and not (tmp_path / "resumed" / "metrics.json").exists()
    t1 = time.perf_counter()
    resumed = fit(dataclasses.replace(cfg, save_every=2), out=tmp_path / "resumed", resume=True, report=False)
    t2 = time.perf_counter()
    # the run's one config records the resumed invocation's runtime keys (evaluation reads it)
    assert config_from_run(tmp_path / "resumed") == dataclasses.replace(cfg, save_every=2)
    a = load_file(tmp_path / "full" / WEIGHTS)
    b = load_file(tmp_path / "resumed" / WEIGHTS)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert not torch.equal(a["head.weight"], a["w_zs"])  # training did move the head
    assert resumed.metrics["all"] == full.metrics["all"]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    # timings recorded in metrics.json: training seconds over both invocations (the interrupted
    # epoch's time carries over), wall seconds of the resuming invocation
    saved = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert 0 < saved["train_seconds"] <= t2 - t0 and 0 < saved["wall_seconds"] <= t2 - t1


def test_cli_fit_eval_and_reload(tiny_runs, tmp_path, capsys):
    """`longtail fit ... --json` (the shared run ft0, tte=true): the printed summary, the run
    folder, reload, evaluation, never overwriting, and --resume's checks (on a copy)."""
    summary, args = tiny_runs["ft0"]["summary"], tiny_runs["ft0"]["args"]
    assert {"all", "many", "medium", "few", "ece"} <= set(summary)
    (out,) = copy_runs(tiny_runs, tmp_path, "ft0")
    for name in ("config.yaml", "env.json", "metrics.json", "per_class.csv", "report.html",
                 WEIGHTS, WEIGHTS_CONFIG, "data_stats.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text())["all"] == pytest.approx(summary["all"])
    before = (out / "metrics.json").read_text()
    args = [str(out) if a == str(tiny_runs["root"] / "ft0") else a for a in args]
    assert main(args) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == before
    model, info = load_finetuned(out, device="cpu")
    cfg = info["config"]
    assert cfg.tte
    test_set = open_split(cfg, "test")
    logits = predict_logits(model, test_set, tte=True, device="cpu")
    acc = float((logits.argmax(1) == np.asarray(test_set.labels)).mean())
    assert acc == pytest.approx(summary["all"])
    from longtail.eval.report import write_report
    from longtail.methods.run_kinds import evaluate_run

    assert evaluate_run(out)["all"] == pytest.approx(summary["all"])
    assert write_report(out).stat().st_size > 1000
    # --resume checks the folder's kind and every setting given again
    assert main(["fit", "--out", str(out), "--resume", "-m", "sage"]) == 2
    assert "method=lift, not sage" in capsys.readouterr().err
    assert main(["fit", "--out", str(out), "--resume", "lr=0.5"]) == 2
    assert "'lr' differs" in capsys.readouterr().err


def test_cli_unknown_key_lists_valid_keys(capsys):
    assert main(["fit", "-d", "synthetic_images", "-b", "tiny_clip", "-m", "lift", "epoch=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'epoch'" in err and "epochs" in err and "lambda3" in err
    assert main(["fit", "-d", "nope", "-b", "tiny_clip", "-m", "lift"]) == 2
    assert "cifar100_ir100" in capsys.readouterr().err


def _backbone_state(model):
    return {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}


# every fit preset (a new preset is tested by default), plus LIFT with a loss that needs options
EVERY_METHOD = [(name, {}) for name in METHOD_PRESETS.names()] + [("lift", {"loss": "ccar-la", "loss_options.omega": 0.75})]


@pytest.mark.parametrize("method, extra", EVERY_METHOD, ids=[m + ("-" + e["loss"] if e else "") for m, e in EVERY_METHOD])
def test_every_method_runs_offline(root, tmp_path, method, extra):
    """Each preset fits one epoch, saves, and reloads to the metrics it recorded."""
    from longtail.methods.finetune import load_finetuned
    from longtail.models.backbone import load_backbone

    preset = METHOD_PRESETS.get(method)
    tiny = {} if preset.get("epochs") == 0 else {"epochs": 1}  # zero_shot keeps its 0 epochs
    if preset.get("val_per_class"):  # held out of the 4 test images per class
        tiny["val_per_class"] = 1
    result = fit(small_cfg(root, method, **tiny, **extra), out=tmp_path / method, report=False)
    assert result.metrics["optimizer_steps"] == (0 if method == "zero_shot" else 4)
    from longtail.methods.run_kinds import evaluate_run

    assert evaluate_run(tmp_path / method)["all"] == pytest.approx(result.metrics["all"])  # reloads to its metrics
    trained = load_finetuned(tmp_path / method, device="cpu")[0]
    pretrained = load_backbone("tiny_clip", image_size=16, patch_size=8)
    frozen = {k: v for k, v in pretrained.state_dict().items()}
    after = trained.backbone.state_dict()
    same = [k for k in frozen if torch.equal(frozen[k], after[k])]
    if method == "linear_probe":  # the backbone is bit-identical, only the head moved
        assert len(same) == len(frozen)
        assert not torch.equal(trained.head.weight, trained.w_zs)
    elif method == "zero_shot":  # nothing trains: the zero-shot head on the pretrained backbone
        assert len(same) == len(frozen) and torch.equal(trained.head.weight, trained.w_zs)
    elif method == "full_ft":
        assert not any("vision_model.encoder" in k for k in same)
    if method == "sage":  # FIT's s1, s2 start at 0 and are trained through l(z_hat)
        assert float(trained.s1.detach()) != 0.0 and float(trained.s2.detach()) != 0.0


def test_failed_new_run_leaves_no_folder_but_checkpointed_run_stays(root, tmp_path, monkeypatch):
    import longtail.methods.finetune.runner as runner
    from longtail.errors import ConfigError

    def fails(parts):
        raise ConfigError("model cannot be built")

    monkeypatch.setattr(runner, "train_loop", fails)
    with pytest.raises(ConfigError):
        fit(small_cfg(root), out=tmp_path / "a", report=False)
    assert not (tmp_path / "a").exists()  # nothing to resume: the same --out works again

    def fails_after_checkpoint(parts):
        (parts.run.dir / "checkpoints").mkdir()
        (parts.run.dir / "checkpoints" / "latest.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "train_loop", fails_after_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        fit(small_cfg(root), out=tmp_path / "b", report=False)
    assert (tmp_path / "b" / "config.yaml").exists()  # kept for --resume


def test_resume_refuses_another_kind_of_run(tmp_path, capsys):
    from longtail.runs import create_run

    create_run(tmp_path / "probe", "probe", {"probe": {}}).finish({})
    assert main(["fit", "--out", str(tmp_path / "probe"), "--resume"]) == 2
    assert "is a 'probe' run, not a fit run" in capsys.readouterr().err


def test_step_budget_ema_and_selection(root, tmp_path):
    """Engine options: a step budget, weight EMA, best-of-N on held-out test images."""
    cfg = small_cfg(root, "linear_probe", steps=5, ema_decay=0.5, n_evals=2, val_per_class=1,
                    optimizer="adamw", lr=0.05, schedule_unit="step", final_lr_fraction=0.1)
    result = fit(cfg, out=tmp_path / "sel", report=False)
    assert result.metrics["optimizer_steps"] == 5
    assert [r["step"] for r in result.metrics["selection"]] == [2, 4]
    from longtail.methods.run_kinds import evaluate_run

    assert evaluate_run(tmp_path / "sel")["all"] == pytest.approx(result.metrics["all"])
    # scored on the held-out split, one image per class of 4: every score is a multiple of 1/4
    assert all(abs(r["val_class_mean"] * 4 - round(r["val_class_mean"] * 4)) < 1e-9 for r in result.metrics["selection"])


def test_saved_config_with_unknown_key_is_an_error(tmp_path, capsys):
    from longtail.errors import ConfigError
    from longtail.methods.finetune import FitConfig, config_from_run
    from longtail.runs import create_run

    create_run(tmp_path / "old", "fit", {**FitConfig().to_dict(), "data_spec": "x"}, staged=False)
    with pytest.raises(ConfigError, match="unknown fit config key 'data_spec'"):
        config_from_run(tmp_path / "old")
    # a registry typo on the command line fails before the (missing) data is touched
    assert main(["fit", "-d", "synthetic_images", "-b", "tiny_clip", "-m", "lift", "optimizer=sgdd",
                 f"root={tmp_path / 'nowhere'}", "--out", str(tmp_path / "x")]) == 2
    assert "sgdd" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "x").exists()
