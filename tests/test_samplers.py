"""fit's samplers (longtail.data.sampling): class frequencies, repeat factors by hand, determinism
per (seed, epoch), disjoint DDP shares, and a resumed run bit-identical to an uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from longtail.data.sampling import SAMPLERS, make_sampler, repeat_factors
from longtail.errors import ConfigError, LongtailError
from longtail.methods.finetune.checkpoint import WEIGHTS
from longtail.methods.finetune.data import EpochBatches

COUNTS = np.array([80, 15, 4, 1])  # N = 100: f = 0.8, 0.15, 0.04, 0.01
LABELS = np.repeat(np.arange(4), COUNTS)


def _frequencies(name: str, epochs: int = 300, **options) -> np.ndarray:
    sampler = make_sampler(name, LABELS, seed=3, options=options)
    draws = torch.cat([sampler.draw(e, sampler.epoch_length) for e in range(epochs)])
    return np.bincount(LABELS[draws.numpy()], minlength=4) / len(draws)


@pytest.mark.parametrize("name, expected", [
    ("random", COUNTS / 100),
    ("balanced", np.full(4, 0.25)),
    ("sqrt", np.sqrt(COUNTS) / np.sqrt(COUNTS).sum()),  # sqrt(80), sqrt(15), 2, 1
])
def test_class_frequencies_over_many_epochs(name, expected):
    np.testing.assert_allclose(make_sampler(name, LABELS, 0).class_probabilities(), expected)
    np.testing.assert_allclose(_frequencies(name), expected, atol=0.01)  # 30,000 draws: SE <= 0.003


def test_repeat_factors_by_hand():
    """t = 0.16: r = max(1, sqrt(0.16 / f)) = 1, sqrt(16/15), 2, 4."""
    r = repeat_factors(COUNTS, 0.16)
    np.testing.assert_allclose(r, [1.0, np.sqrt(0.16 / 0.15), 2.0, 4.0])
    ceil = make_sampler("repeat_factor", LABELS, 0, {"threshold": 0.16, "rounding": "ceil"})
    assert ceil.epoch_length == 80 + 15 * 2 + 4 * 2 + 1 * 4  # mmpretrain: ceil(r) copies per pass
    per_image = np.bincount(ceil.draw(0, ceil.epoch_length).numpy(), minlength=100)
    np.testing.assert_array_equal(per_image, np.repeat([1, 2, 2, 4], COUNTS))
    stoch = make_sampler("repeat_factor", LABELS, 0, {"threshold": 0.16})  # LVIS: stochastic rounding
    assert stoch.epoch_length == round(80 + 15 * np.sqrt(0.16 / 0.15) + 8 + 4)  # 107
    expected = COUNTS * r / (COUNTS * r).sum()
    np.testing.assert_allclose(stoch.class_probabilities(), expected)
    np.testing.assert_allclose(_frequencies("repeat_factor", threshold=0.16), expected, atol=0.01)
    once = stoch._pass(0).numpy()  # one pass: every image floor(r) or floor(r) + 1 times
    copies = np.bincount(once, minlength=100)
    assert set(copies[80:95]) <= {1, 2} and set(copies[95:99]) == {2} and copies[99] == 4
    # default threshold 1/C = 0.25: r = 1, sqrt(0.25/0.15), 2.5, 5
    np.testing.assert_allclose(make_sampler("repeat_factor", LABELS, 0).class_factors,
                               [1.0, np.sqrt(0.25 / 0.15), 2.5, 5.0])


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_draws_depend_only_on_seed_and_epoch(name):
    a, b = make_sampler(name, LABELS, 7), make_sampler(name, LABELS, 7)
    for epoch in (4, 0, 9):  # any order: a fresh sampler gives epoch 9 as one that drew 0..8
        assert torch.equal(a.draw(epoch, a.epoch_length), b.draw(epoch, b.epoch_length))
    assert not torch.equal(a.draw(1, a.epoch_length), a.draw(2, a.epoch_length))
    assert not torch.equal(a.draw(1, a.epoch_length), make_sampler(name, LABELS, 8).draw(1, a.epoch_length))
    batches = list(EpochBatches(a.epoch_length, 16, 7, 3, sampler=a))
    assert list(EpochBatches(a.epoch_length, 16, 7, 3, start=2, sampler=b)) == batches[2:]  # restart mid-epoch


def test_random_sampler_is_the_shuffle_fit_always_used():
    g = torch.Generator().manual_seed(5 * 100_003 + 2)
    order = torch.randperm(10, generator=g).tolist()
    assert list(EpochBatches(10, 3, seed=5, epoch=2)) == [order[0:3], order[3:6], order[6:9], order[9:]]


def test_ddp_shares_are_disjoint_parts_of_the_same_batches():
    """accelerate (split_batches=True) gives process r rows [r m/2, (r+1) m/2) of every batch."""
    from accelerate.data_loader import BatchSamplerShard

    sampler = make_sampler("balanced", LABELS, 1)
    batches = list(EpochBatches(100, 8, 1, 0, drop_last=True, sampler=sampler))
    shares = [list(BatchSamplerShard(EpochBatches(100, 8, 1, 0, drop_last=True, sampler=make_sampler(
        "balanced", LABELS, 1)), num_processes=2, process_index=r, split_batches=True)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == len(batches) == 12
    for batch, first, second in zip(batches, *shares):
        assert first + second == batch and len(first) == len(second) == 4


def test_config_checks_names_and_options():
    from longtail.config import apply_overrides
    from longtail.methods.finetune.config import FitConfig

    with pytest.raises(LongtailError, match="balanced"):
        FitConfig(sampler="balance")
    with pytest.raises(ConfigError, match="no option 'threshold'"):
        FitConfig(sampler="balanced", sampler_options={"threshold": 0.1})
    with pytest.raises(ConfigError, match="threshold"):
        FitConfig(sampler="repeat_factor", sampler_options={"threshold": "a"})
    with pytest.raises(ConfigError, match="rounding"):
        FitConfig(sampler="repeat_factor", sampler_options={"rounding": "floor"})
    cfg = apply_overrides(FitConfig(sampler="repeat_factor", sampler_options={"threshold": 0.5}),
                          {"sampler": "sqrt"})
    assert cfg.sampler == "sqrt" and cfg.sampler_options == {}  # a new sampler drops the old one's options


def test_lt_soups_ingredients_get_the_sampler():
    from longtail.soups.lt_soups import LTSoupsConfig, fit_config

    soups = LTSoupsConfig(sampler="repeat_factor", sampler_options={"threshold": 0.01}, log_with="tensorboard")
    ingredient = fit_config(soups, steps=10, seed=0, loss="ce")
    assert (ingredient.sampler, ingredient.sampler_options, ingredient.log_with) == \
        ("repeat_factor", {"threshold": 0.01}, "tensorboard")
    with pytest.raises(ConfigError, match="rounding"):
        LTSoupsConfig(sampler="repeat_factor", sampler_options={"rounding": "up"})


def test_resume_with_repeat_factor_sampling_equals_uninterrupted(tmp_path):
    """Interrupt mid-epoch (stochastic repeat factors, crops, flips on), resume, compare weights."""
    from longtail.methods.finetune import build_config, fit

    cfg = build_config("synthetic_images", "tiny_clip", "lift", {
        "data_options": {"num_classes": 4, "n_max": 12, "imbalance_ratio": 4, "test_per_class": 2, "size": 16},
        "root": str(tmp_path / "data"), "batch_size": 8, "epochs": 2, "save_every": 1, "progress": False,
        "backbone_options": {"image_size": 16, "patch_size": 8}, "loss": "ce", "loss_options": {},
        "sampler": "repeat_factor"})
    full = fit(cfg, out=tmp_path / "full", report=False)
    assert full.metrics["optimizer_steps"] == 2 * 4  # counts 12, 7, 4, 3 -> 29 draws per epoch: 4 batches of 8
    assert fit(cfg, out=tmp_path / "resumed", stop_after_steps=3, report=False).interrupted
    resumed = fit(cfg, out=tmp_path / "resumed", resume=True, report=False)
    a = load_file(tmp_path / "full" / WEIGHTS)
    b = load_file(tmp_path / "resumed" / WEIGHTS)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
