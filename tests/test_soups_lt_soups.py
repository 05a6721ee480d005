"""LT-Soups: subsets, F, soup weights (docs/methods.md §2.4), the pipeline on tiny CLIP through
`longtail lt-soups`, and the bit-identical resume of an interrupted ingredient."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from longtail.cli import main
from longtail.errors import ConfigError, DataError
from longtail.eval.metrics import COMPARISON_KEYS
from longtail.methods.finetune.checkpoint import WEIGHTS
from longtail.methods.finetune.data import EpochBatches, subset_counts, subset_indices
from longtail.soups.lt_soups import (
    LTSoups,
    LTSoupsConfig,
    default_exponents,
    soup_coefficients,
)

COUNTS = np.array([40, 25, 12, 7, 5, 5, 3])
DATA = dict(num_classes=4, n_max=16, imbalance_ratio=4, test_per_class=5, size=32)


def test_subset_counts_and_default_exponents():
    for i in range(5):
        np.testing.assert_array_equal(subset_counts(COUNTS, i), np.minimum(COUNTS, 3 * 2**i))
    assert (subset_counts(COUNTS, 0) == 3).all()  # b = 1: perfectly balanced at n_min
    np.testing.assert_array_equal(subset_counts(COUNTS, -1), COUNTS)
    assert default_exponents(COUNTS) == [0, 1, 2, 3]  # floor(log2(40 / 3)) = 3
    cifar = np.round(500 * 0.01 ** (np.arange(100) / 99)).astype(int)  # CIFAR-100-LT, rho = 100
    assert default_exponents(cifar) == [0, 1, 2, 3, 4, 5, 6]  # the authors' F, 7 * K jobs
    assert default_exponents(np.array([64, 1])) == list(range(7))


def test_subset_indices_seeded():
    labels = np.repeat(np.arange(COUNTS.size), COUNTS)
    np.random.default_rng(0).shuffle(labels)
    idx = subset_indices(labels, 1, seed=1)
    np.testing.assert_array_equal(np.bincount(labels[idx], minlength=7), subset_counts(COUNTS, 1))
    assert np.unique(idx).size == idx.size
    np.testing.assert_array_equal(idx, subset_indices(labels, 1, seed=1))  # same for every branch
    assert not np.array_equal(idx, subset_indices(labels, 1, seed=2))
    with pytest.raises(DataError, match="no training images"):
        subset_indices(np.array([0, 0, 2]), 0, 0)


@pytest.mark.parametrize("merge,k", [("recursive", 1), ("recursive", 2), ("uniform", 3)])
def test_soup_coefficients_sum_to_one_and_average_branches(merge, k):
    cfg = LTSoupsConfig(merge=merge, branches=k, lam=0.7)
    c = soup_coefficients(cfg, 3)
    assert c.total == pytest.approx(1.0)
    assert len(c.ingredients) == 3 * k
    per_exp = [sum(c.ingredients[j * k:(j + 1) * k]) for j in range(3)]
    expected = [0.7 * 0.09, 0.7 * 0.3, 0.7] if merge == "recursive" else [1 / 3] * 3
    np.testing.assert_allclose(per_exp, expected)
    assert c.base == pytest.approx(0.027 if merge == "recursive" else 0.0)
    with pytest.raises(ConfigError):
        LTSoupsConfig(merge="ties")
    with pytest.raises(ConfigError, match="interpolation"):
        LTSoupsConfig(interpolation="nearest")


def test_epoch_batches_depend_only_on_seed_epoch_and_position():
    full = list(EpochBatches(10, 3, seed=5, epoch=2, drop_last=True))
    assert len(full) == 3 and len(set(sum(full, []))) == 9  # the incomplete last batch dropped
    assert list(EpochBatches(10, 3, seed=5, epoch=2, start=1, drop_last=True)) == full[1:]  # restart mid-epoch
    assert full != list(EpochBatches(10, 3, seed=5, epoch=3, drop_last=True))
    assert [len(b) for b in EpochBatches(10, 3, seed=5, epoch=2)] == [3, 3, 3, 1]  # LIFT keeps it
    small = list(EpochBatches(2, 4, seed=1, epoch=0, drop_last=True))  # smaller than a batch: with replacement
    assert len(small) == 1 and len(small[0]) == 4 and set(small[0]) <= {0, 1}


def _args(root, folder, *extra):
    data = [f"data_options.{k}={v}" for k, v in DATA.items()]
    return ["lt-soups", "-d", "synthetic_images", "-b", "tiny_clip", "--out", str(folder), f"root={root}",
            *data, "val_per_class=2", "exponents=[0, 1]", "branches=1", "batch_size=8", "epochs=1",
            "min_steps=1", "max_steps=3", "n_evals=2", "stage2_epochs=1", "progress=false", "device=cpu",
            "num_workers=0", "lr=1e-3", *extra]


@pytest.mark.slow
def test_pipeline_through_the_command(tmp_path, capsys):
    from longtail.methods.run_kinds import evaluate_run
    from longtail.runs import load_run

    folder = tmp_path / "lts"
    assert main(_args(tmp_path / "data", folder, "--job", "1", "--no-report")) == 0  # one array job alone: e1_b0
    assert (folder / "ingredients" / "e1_b0" / WEIGHTS).exists()
    assert not (folder / "ingredients" / "e1_b0" / "report.html").exists()  # --no-report
    assert not (folder / "ingredients" / "e1_b0" / "checkpoints").exists()  # dropped once finished
    assert not (folder / "ingredients" / "e0_b0").exists()
    assert main(_args(tmp_path / "data", folder)) == 0  # the rest, then soup, stage 2 and the comparison
    assert "soup" in capsys.readouterr().out
    table = json.loads((folder / "comparison.json").read_text())
    assert [r["name"] for r in table] == ["ingredient e0_b0", "ingredient e1_b0", "soup", "final"]
    assert all(list(r) == ["name", *COMPARISON_KEYS] for r in table)  # the rows of `longtail soup --eval`
    assert (folder / "comparison.html").exists()
    stats = json.loads((folder / "ingredients" / "e0_b0" / "data_stats.json").read_text())
    assert len(set(stats["counts"])) == 1  # b = 1 subset is balanced
    # every folder is a run of a registered kind: evaluable and reportable like a fit run
    for sub, kind in [("ingredients/e0_b0", "fit"), ("soup", "soup"), ("final", "fit")]:
        run = load_run(folder / sub)
        assert run["config"]["kind"] == kind
        for name in ("config.yaml", "env.json", "data_stats.json", "metrics.json", "per_class.csv", "report.html"):
            assert (folder / sub / name).is_file(), (sub, name)
        assert evaluate_run(folder / sub)["all"] == pytest.approx(run["metrics"]["all"])
        # the page the pipeline wrote with write_report(folder) once the run was finished (what
        # `longtail report FOLDER` calls, less the gallery's pictures), not written a second time here
        page = (folder / sub / "report.html").read_text()
        for section in ("Test data", "Per-class results", "Configuration"):
            assert f"<h2>{section}</h2>" in page, (sub, section)
        assert ("<h2>Training curves</h2>" in page) == (kind == "fit"), sub
    from longtail.eval import plots

    fig = plots.training_curves([("e0", load_run(folder / "ingredients" / "e0_b0")["metrics"])])
    assert len(fig.axes) == 3  # loss, train accuracy and the validation (selection) log
    cfg = load_run(folder / "ingredients" / "e1_b0")["config"]
    assert (cfg["balance_exponent"], cfg["subset_seed"], cfg["origin"]["branch"]) == (1, 1, 0)
    # the soup is theta_0 * 0.09 + 0.21 e0 + 0.7 e1 (full fine-tunes), stage 2 changed only the head
    e0, e1 = (load_file(folder / "ingredients" / f"e{i}_b0" / WEIGHTS) for i in (0, 1))
    soup, final = load_file(folder / "soup" / WEIGHTS), load_file(folder / "final" / WEIGHTS)
    from longtail.methods.finetune import config_from_run, zero_shot_weights

    e0_dir = folder / "ingredients" / "e0_b0"
    names = json.loads((e0_dir / "classes.json").read_text())["class_names"]
    theta0 = zero_shot_weights(config_from_run(e0_dir), names)
    key = "backbone.model.vision_model.encoder.layers.0.mlp.fc1.weight"
    assert not torch.equal(e1[key], theta0[key])  # the encoder was fine-tuned
    torch.testing.assert_close(soup[key], 0.09 * theta0[key] + 0.21 * e0[key] + 0.7 * e1[key])
    assert soup.keys() == final.keys()
    assert all(torch.equal(final[k], soup[k]) for k in soup if k not in ("head.weight",))
    assert not torch.equal(final["head.weight"], soup["head.weight"])
    # finished jobs are skipped; another config in the same folder is refused
    mtime = (folder / "ingredients" / "e0_b0" / WEIGHTS).stat().st_mtime
    assert main(_args(tmp_path / "data", folder, "--stage", "ingredients")) == 0
    assert (folder / "ingredients" / "e0_b0" / WEIGHTS).stat().st_mtime == mtime
    assert main(_args(tmp_path / "data", folder, "lam=0.5")) == 2
    assert "other settings (lam)" in capsys.readouterr().err
    assert main(_args(tmp_path / "data", folder, "--job", "7")) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["soup", "-m", "lt_soups", "x"]) == 2
    assert "longtail lt-soups" in capsys.readouterr().err


class _Stop(Exception):
    pass


def test_interrupted_ingredient_resumes_bit_identically(tmp_path):
    """Stop after step 5 (last checkpoint: step 4), leave a half-written step-6 checkpoint, run again."""
    cfg = LTSoupsConfig(data_options=DATA, root=str(tmp_path / "data"), val_per_class=2, exponents=[0, 1],
                        branches=1, batch_size=8, epochs=1, min_steps=6, max_steps=6, n_evals=3, save_every=2,
                        keep_checkpoints=True, progress=False, device="cpu", num_workers=0, lr=1e-3)
    ref_dir = LTSoups(cfg, tmp_path / "ref", report=False).run_job(1, 0)  # the pipeline test reads pages

    def stop_after_5(step):
        if step == 5:
            raise _Stop

    pipe = LTSoups(cfg, tmp_path / "cut", report=False)
    with pytest.raises(_Stop):
        pipe.run_job(1, 0, on_step=stop_after_5)
    job = pipe.job_dir(1, 0)
    ckpts = job / "checkpoints"
    assert json.loads((ckpts / "latest.json").read_text())["step"] == 4
    assert not (job / WEIGHTS).exists()
    half = ckpts / "step-00000006"  # a crash while writing: files cut short, latest.json not yet moved
    half.mkdir()
    (half / "trainable.safetensors").write_bytes(b"\x10\x00\x00")
    (half / "training_state.pt").write_bytes(b"PK\x03")
    with pytest.raises(DataError, match="not finished"):
        pipe.soup()
    seen = []
    LTSoups(cfg, tmp_path / "cut", report=False).run_job(1, 0, on_step=seen.append)
    assert seen == [5, 6]  # continued after the step-4 checkpoint, not from scratch
    assert not (job / "report.html").exists() and (job / "metrics.json").is_file()
    ref, resumed = load_file(ref_dir / WEIGHTS), load_file(job / WEIGHTS)
    assert ref.keys() == resumed.keys()
    assert all(torch.equal(ref[k], resumed[k]) for k in ref)  # bit-identical on CPU
    assert not torch.equal(ref["head.weight"], ref["w_zs"])  # it did train
    # the last step's trained, EMA and best weights too
    last = [load_file(d / "checkpoints" / "step-00000006" / "trainable.safetensors") for d in (ref_dir, job)]
    assert {k.split(".")[0] for k in last[0]} == {"model", "ema", "best"}
    assert last[0].keys() == last[1].keys() and all(torch.equal(last[0][k], last[1][k]) for k in last[0])
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (ref_dir, job)]
    assert metrics[0]["selection"] == metrics[1]["selection"]
    assert [r["step"] for r in metrics[1]["selection"]] == [2, 4, 6]
    assert json.loads((job / "status.json").read_text())["status"] == "finished"
    seen.clear()
    LTSoups(cfg, tmp_path / "cut").run_job(1, 0, on_step=seen.append)  # finished: skipped
    assert seen == []


def test_ingredients_and_stage2_pass_tuning_mode_and_prefix_cache(tmp_path):
    """adapter / head_init / prefix settings reach every job's FitConfig; stage 2 trains only the
    head (cached from the soup); a plan written before these fields existed is still accepted."""
    from longtail.io import read_yaml, write_yaml

    cfg = LTSoupsConfig(data_options=DATA, root=str(tmp_path / "data"), exponents=[0, 1], branches=1,
                        adapter="partial", adapter_options={"num_blocks": 1}, head_init="class_mean",
                        prefix_cache="auto", prefix_views=2, ema_decay=None, device="cpu", num_workers=0)
    pipe = LTSoups(cfg, tmp_path / "lts")
    job = pipe.ingredient_config(1, 0)
    assert (job.adapter, job.adapter_options, job.head_init) == ("partial", {"num_blocks": 1}, "class_mean")
    assert job.uses_prefix_cache and job.prefix_views == 2 and job.ema_decay is None
    stage2 = pipe.stage2_config()
    assert (stage2.adapter, stage2.adapter_options) == ("none", {}) and stage2.uses_prefix_cache
    assert stage2.lr == job.lr == cfg.lr  # one lr unless stage2_lr says otherwise
    own = LTSoups(dataclasses.replace(cfg, lr=1e-3, stage2_lr=3e-5), tmp_path / "other")
    assert (own.stage2_config().lr, own.ingredient_config(1, 0).lr) == (3e-5, 1e-3)
    from longtail.methods.finetune.prefix import ViewRenderer
    from longtail.models.preprocess import InputSpec

    spec = InputSpec(size=32, mean=(0.5,) * 3, std=(0.5,) * 3, test_resize_ratio=1.0)
    first = pipe.ingredient_config(0, 0)
    assert first.seed != job.seed  # flip views are seed-free: every ingredient keys the same cache entry
    assert ViewRenderer(first, spec).to_dict() == ViewRenderer(job, spec).to_dict()
    rrc = [dataclasses.replace(c, prefix_view_kind="rrc_flip") for c in (first, job)]
    assert ViewRenderer(rrc[0], spec).to_dict() != ViewRenderer(rrc[1], spec).to_dict()
    pipe.write_plan()
    plan = read_yaml(tmp_path / "lts" / "plan.yaml")
    for key in ("adapter", "adapter_options", "head_init", "prefix_cache", "prefix_views", "test_split"):
        plan.pop(key)  # an older plan
    write_yaml(tmp_path / "lts" / "plan.yaml", plan)
    with pytest.raises(ConfigError, match="adapter"):  # missing keys compare as their defaults
        pipe.write_plan()
    LTSoups(LTSoupsConfig(**{**cfg.__dict__, "adapter": "full", "adapter_options": {}, "head_init": "text",
                             "prefix_cache": "off", "prefix_views": 1}), tmp_path / "lts").write_plan()
