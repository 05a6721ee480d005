"""LT-Soups: subsets, losses, soup weights (METHODS.md 2.7), stage 2, end-to-end on tiny CLIP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from longtail.errors import ConfigError, DataError
from longtail.soups.lt_soups import (
    LTSoups,
    LTSoupsConfig,
    default_exponents,
    ingredient_loss,
    run_lt_soups,
    soup_coefficients,
    subset_counts,
    subset_indices,
)

COUNTS = np.array([40, 25, 12, 7, 5, 5, 3])


def test_subset_counts_are_capped_at_nmin_times_two_to_the_i():
    for i in range(5):
        np.testing.assert_array_equal(subset_counts(COUNTS, i), np.minimum(COUNTS, 3 * 2**i))
    assert (subset_counts(COUNTS, 0) == 3).all()  # b = 1: perfectly balanced at n_min
    np.testing.assert_array_equal(subset_counts(COUNTS, -1), COUNTS)
    assert default_exponents(COUNTS) == [0, 1, 2, 3, 4]  # ceil(log2(40 / 3)) = 4


def test_subset_indices_seeded_by_position_in_F():
    labels = np.repeat(np.arange(COUNTS.size), COUNTS)
    np.random.default_rng(0).shuffle(labels)
    idx = subset_indices(labels, [0, 1, 2], 1)
    np.testing.assert_array_equal(np.bincount(labels[idx], minlength=7), subset_counts(COUNTS, 1))
    assert np.unique(idx).size == idx.size
    np.testing.assert_array_equal(idx, subset_indices(labels, [0, 1, 2], 1))  # same for every branch
    # same exponent at another position in F -> another seed -> another draw
    assert not np.array_equal(idx, subset_indices(labels, [1, 2, 3], 1))
    with pytest.raises(DataError, match="no training images"):
        subset_indices(np.array([0, 0, 2]), [0], 0)


def test_ingredient_loss_ce_when_balanced_else_la_with_subset_priors():
    logits, y = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    ce = ingredient_loss(np.array([4, 4, 4]))
    torch.testing.assert_close(ce(logits, y), torch.nn.functional.cross_entropy(logits, y))
    sub = np.array([8, 4, 2])
    la = ingredient_loss(sub)
    shifted = logits + torch.log(torch.tensor(sub / sub.sum(), dtype=torch.float64))
    torch.testing.assert_close(la(logits, y), torch.nn.functional.cross_entropy(shifted, y))


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


def _cfg(**kw) -> LTSoupsConfig:
    base = dict(data_options=dict(num_classes=4, n_max=16, imbalance_ratio=4, test_per_class=5, size=32),
                val_per_class=2, exponents=[0, 1], branches=1, batch_size=8, epochs=1, min_steps=1,
                max_steps=3, n_evals=2, stage2_epochs=1, progress=False, device="cpu", num_workers=0)
    return LTSoupsConfig(**{**base, **kw})


def test_stage2_trains_only_the_classifier(tmp_path):
    pipe = LTSoups(_cfg(root=str(tmp_path / "data"), stage2_cached_features=True, lr=1e-2), tmp_path / "p")
    theta0 = {k: v.clone() for k, v in pipe.zero_shot().state_dict().items()}
    out, log = pipe.stage2(theta0)
    assert len(log) == 2
    for key, value in theta0.items():
        if key == "head.weight":
            assert not torch.equal(out[key], value)
        else:  # every encoder tensor bit-identical
            assert torch.equal(out[key], value), key


@pytest.mark.slow
def test_end_to_end_tiny_clip(tmp_path):
    cfg = _cfg(root=str(tmp_path / "data"), lr=1e-3)
    folder = tmp_path / "lts"
    run_lt_soups(cfg, folder, job=1)  # one array job alone: ingredient e1_b0
    assert (folder / "ingredients" / "e1_b0" / "model.safetensors").exists()
    assert not (folder / "ingredients" / "e1_b0" / "checkpoints").exists()  # dropped once finished
    assert not (folder / "ingredients" / "e0_b0").exists()
    run_lt_soups(cfg, folder)  # the rest, then soup, stage 2 and the comparison
    table = json.loads((folder / "comparison.json").read_text())
    assert [r["name"] for r in table] == ["ingredient e0_b0", "ingredient e1_b0", "soup", "final"]
    for row in table:
        assert 0.0 <= row["all"] <= 1.0 and row["head_tail_ratio"] is not None
    assert (folder / "comparison.html").exists()
    cfg_json = json.loads((folder / "ingredients" / "e0_b0" / "data_stats.json").read_text())
    assert len(set(cfg_json["counts"])) == 1  # b = 1 subset is balanced
    # the soup is theta_0 * 0.09 + 0.21 e0 + 0.7 e1, and stage 2 changed only the head
    e0, e1 = (load_file(folder / "ingredients" / f"e{i}_b0" / "model.safetensors") for i in (0, 1))
    soup = load_file(folder / "soup" / "model.safetensors")
    final = load_file(folder / "final" / "model.safetensors")
    theta0 = LTSoups(cfg, folder).zero_shot().state_dict()
    key = "encoder.encoder.layers.0.mlp.fc1.weight"
    torch.testing.assert_close(soup[key], 0.09 * theta0[key] + 0.21 * e0[key] + 0.7 * e1[key])
    assert all(torch.equal(final[k], soup[k]) for k in soup if k != "head.weight")
    # finished jobs are skipped; another config in the same folder is refused
    mtime = (folder / "ingredients" / "e0_b0" / "model.safetensors").stat().st_mtime
    run_lt_soups(cfg, folder, stage="ingredients")
    assert (folder / "ingredients" / "e0_b0" / "model.safetensors").stat().st_mtime == mtime
    with pytest.raises(ConfigError, match="other settings"):
        run_lt_soups(_cfg(root=str(tmp_path / "data"), lam=0.5), folder)
    with pytest.raises(ConfigError, match="out of range"):
        run_lt_soups(cfg, folder, job=7)


# ----------------------------------------------------------------------------- resumable ingredients


def test_step_batches_depend_only_on_seed_and_step():
    from itertools import islice

    from longtail.soups.ingredient import StepBatches

    full = list(islice(StepBatches(10, 3, seed=5), 9))
    assert list(islice(StepBatches(10, 3, seed=5, start=4), 5)) == full[4:]  # restart mid-epoch
    for e in range(3):  # an epoch = 3 batches of distinct indices (the last, incomplete one dropped)
        assert len(set(sum(full[3 * e:3 * e + 3], []))) == 9
    assert full[:3] != full[3:6] and full != list(islice(StepBatches(10, 3, seed=6), 9))
    small = list(islice(StepBatches(2, 4, seed=1), 3))  # fewer samples than a batch: with replacement
    assert all(len(b) == 4 and set(b) <= {0, 1} for b in small)
    assert small[1:] == list(islice(StepBatches(2, 4, seed=1, start=1), 2))


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    import random

    from longtail.methods.finetune.checkpoint import rng_state, set_rng_state

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    first = torch.rand(2), np.random.rand(2), random.random()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = torch.rand(2), np.random.rand(2), random.random()
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


class _Stop(Exception):
    pass


def test_interrupted_ingredient_resumes_to_the_uninterrupted_weights(tmp_path):
    """Stop after step 5 (last checkpoint: step 4), leave a half-written step-6 checkpoint, run again."""
    cfg = _cfg(root=str(tmp_path / "data"), lr=1e-3, min_steps=6, max_steps=6, n_evals=3,
               save_every=2, keep_checkpoints=True)
    ref_dir = LTSoups(cfg, tmp_path / "ref").run_job(0, 0)

    def stop_after_5(step):
        if step == 5:
            raise _Stop

    pipe = LTSoups(cfg, tmp_path / "cut")
    with pytest.raises(_Stop):
        pipe.run_job(0, 0, on_step=stop_after_5)
    job = pipe.job_dir(0, 0)
    ckpts = job / "checkpoints"
    assert json.loads((ckpts / "latest.json").read_text())["step"] == 4
    assert not (job / "model.safetensors").exists()
    half = ckpts / "step-00000006"  # a crash while writing: files cut short, latest.json not yet moved
    half.mkdir()
    (half / "trainable.safetensors").write_bytes(b"\x10\x00\x00")
    (half / "training_state.pt").write_bytes(b"PK\x03")
    with pytest.raises(DataError, match="not finished"):
        pipe.soup()
    seen = []
    LTSoups(cfg, tmp_path / "cut").run_job(0, 0, on_step=seen.append)
    assert seen == [5, 6]  # continued after the step-4 checkpoint, not from scratch
    ref, resumed = load_file(ref_dir / "model.safetensors"), load_file(job / "model.safetensors")
    assert ref.keys() == resumed.keys()
    assert all(torch.equal(ref[k], resumed[k]) for k in ref)  # bit-identical on CPU
    theta0 = pipe.zero_shot().state_dict()
    assert not torch.equal(ref["head.weight"], theta0["head.weight"])  # it did train
    # the last step's trained and EMA weights too (the selected ones may come from before the cut)
    last = [load_file(d / "checkpoints" / "step-00000006" / "trainable.safetensors") for d in (ref_dir, job)]
    assert {k.split(".")[0] for k in last[0]} == {"model", "ema", "best"}
    assert last[0].keys() == last[1].keys() and all(torch.equal(last[0][k], last[1][k]) for k in last[0])
    log = json.loads((job / "train_log.json").read_text())
    assert log == json.loads((ref_dir / "train_log.json").read_text())
    assert [r["step"] for r in log] == [2, 4, 6]
    assert json.loads((job / "status.json").read_text())["status"] == "finished"
    seen.clear()
    LTSoups(cfg, tmp_path / "cut").run_job(0, 0, on_step=seen.append)  # finished: skipped
    assert seen == []
