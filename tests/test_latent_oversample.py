"""Local concentration (blockwise kNN) and the oversamplers' contracts (docs/methods.md §4.3, §4.4, §4.7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from longtail.errors import ConfigError, DataError, UnknownNameError
from longtail.methods.latent.concentration import in_class_knn, local_concentration
from longtail.methods.latent.oversample import (
    OVERSAMPLERS,
    make_oversampler,
    resolve_oversampling_targets,
)


def pair_with_cosine(s: float, d: int = 768) -> torch.Tensor:
    """Two unit vectors in R^d with cosine exactly s (float64)."""
    x = torch.zeros(2, d, dtype=torch.float64)
    x[0, 0] = 1.0
    x[1, 0], x[1, 1] = s, math.sqrt(1 - s * s)
    return x


@pytest.mark.parametrize("s,kappa", [(0.8, 7277), (0.9, 14953), (0.95, 30295), (0.99, 153017)])
def test_local_kappa_from_nearest_neighbour_matches_methods_table(s, kappa):
    got = local_concentration(pair_with_cosine(s), torch.tensor([0, 0]))
    assert got.tolist() == pytest.approx([kappa, kappa], rel=1e-4)


def imbalanced(seed: int = 0, counts=(60, 25, 7, 2, 1), d: int = 12):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(counts), d))
    x = np.concatenate([c + 0.3 * rng.normal(size=(n, d)) for c, n in zip(centres, counts)])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x, np.repeat(np.arange(len(counts)), counts)


def test_knn_blockwise_equals_brute_force():
    x, y = imbalanced()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    idx, sim = in_class_knn(xt, yt, k=3, block_elements=130)  # tiny blocks: many per class
    full = xt @ xt.T
    full[yt[:, None] != yt[None, :]] = -np.inf
    full.fill_diagonal_(-np.inf)
    top_s, top_i = full.topk(3, dim=1)
    counts = np.bincount(y)
    ok = counts[y] >= 4
    assert torch.equal(idx[ok], top_i[ok])
    torch.testing.assert_close(sim[ok], top_s[ok])
    two = np.flatnonzero(counts[y] == 2)  # class of 2: one neighbour, then padding
    assert (idx[two, 0] == torch.tensor(two[::-1].copy())).all() and (idx[two, 1:] == -1).all()
    single = np.flatnonzero(counts[y] == 1)
    assert (idx[single] == -1).all() and torch.isnan(sim[single]).all()
    only0, _ = in_class_knn(xt, yt, k=3, classes=torch.tensor([True, False, False, False, False]))
    assert torch.equal(only0[yt == 0], idx[yt == 0]) and (only0[yt != 0] == -1).all()


def test_concentration_guards_duplicates_singletons_and_k():
    x, y = imbalanced()
    x[1] = x[0]  # exact duplicate in class 0
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    kappa = local_concentration(xt, yt, max_kappa=1e7)
    assert kappa[0] == 1e7 and kappa[1] == 1e7
    singleton = int(np.flatnonzero(y == 4)[0])
    others = torch.ones_like(kappa, dtype=torch.bool)
    others[singleton] = False
    assert kappa[singleton] == kappa[others].median()
    k3 = local_concentration(xt, yt, k=3)
    # k = 3 on a class of two: same as k = 1 there; elsewhere r of 4 vectors differs from 2
    pair = np.flatnonzero(y == 3)
    torch.testing.assert_close(k3[pair], kappa[pair])
    assert not torch.allclose(k3[y == 0], kappa[y == 0])
    with pytest.raises(DataError, match="single sample"):
        local_concentration(xt[:3], torch.tensor([0, 1, 2]))


def test_targets_resolution():
    counts = np.array([10, 4, 1])
    assert resolve_oversampling_targets("auto", counts).tolist() == [10, 10, 10]
    assert resolve_oversampling_targets({1: 6}, counts).tolist() == [10, 6, 1]
    assert resolve_oversampling_targets({"c": 3}, counts, ["a", "b", "c"]).tolist() == [10, 4, 3]
    assert resolve_oversampling_targets(lambda n: {2: int(n.max()) // 2}, counts).tolist() == [10, 4, 5]
    assert resolve_oversampling_targets([12, 12, 12], counts).tolist() == [12, 12, 12]
    with pytest.raises(ConfigError, match="already has 4"):
        resolve_oversampling_targets({1: 2}, counts)
    with pytest.raises(ConfigError, match="unknown class"):
        resolve_oversampling_targets({"zzz": 2}, counts, ["a", "b", "c"])
    with pytest.raises(UnknownNameError, match="vmf-kde"):
        make_oversampler("adasyn")
    with pytest.raises(ConfigError, match="bad parameters"):
        make_oversampler("smote", bandwidth=1.0)


@pytest.mark.parametrize("name", ["vmf-kde", "gaussian-kde", "smote"])
def test_exact_counts_real_untouched_reproducible(name):
    x, y = imbalanced()
    x_before, y_before = x.copy(), y.copy()
    sampler = make_oversampler(name, seed=3)
    xr, yr = sampler.fit_resample(x, y)
    assert np.array_equal(x, x_before) and np.array_equal(y, y_before)  # inputs not mutated
    assert np.array_equal(xr[: len(x)], x) and np.array_equal(yr[: len(y)], y)  # real rows first, unchanged
    assert np.bincount(yr).tolist() == [60] * 5
    synth = sampler.sample(x, y)
    assert synth.info["synthetic_per_class"] == [0, 35, 53, 58, 59]  # largest class gets nothing
    assert (synth.labels != 0).all() and (y[synth.seeds.numpy()] == synth.labels.numpy()).all()
    xr2, _ = make_oversampler(name, seed=3).fit_resample(x, y)
    xr3, _ = make_oversampler(name, seed=4).fit_resample(x, y)
    assert np.array_equal(xr, xr2) and not np.array_equal(xr, xr3)
    assert np.isfinite(xr).all() and xr.dtype == x.dtype
    xt, yt = sampler.fit_resample(torch.from_numpy(x), torch.from_numpy(y))  # tensors in, tensors out
    assert torch.is_tensor(xt) and torch.equal(xt, torch.from_numpy(xr))


def test_vmf_samples_on_sphere_near_their_seeds():
    x, y = imbalanced()
    synth = make_oversampler("vmf-kde", seed=0).sample(x, y)
    assert (synth.features.norm(dim=1) - 1).abs().max() < 1e-6
    kappa = local_concentration(torch.from_numpy(x), torch.from_numpy(y))
    cos = (synth.features * torch.from_numpy(x)[synth.seeds]).sum(1)
    assert cos.mean() > 0.5 and synth.info["kappa_median"] == pytest.approx(float(kappa.median()))


def test_smote_points_lie_on_segments_to_in_class_neighbours():
    x, y = imbalanced()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    synth = make_oversampler("smote", seed=1, k_neighbors=3).sample(x, y)
    idx, _ = in_class_knn(xt, yt, 3)
    seed_x = xt[synth.seeds]
    best = torch.full((len(synth.seeds),), np.inf)
    for j in range(3):  # distance of each synthetic point to the segment seed -> j-th neighbour
        nb = idx[synth.seeds, j]
        seg = xt[nb.clamp_min(0)] - seed_x
        t = ((synth.features - seed_x) * seg).sum(1) / seg.square().sum(1).clamp_min(1e-12)
        dist = (synth.features - seed_x - t.clamp(0, 1)[:, None] * seg).norm(dim=1)
        best = torch.minimum(best, torch.where(nb >= 0, dist, torch.full_like(dist, np.inf)))
    singleton = synth.labels == 4
    assert best[~singleton].max() < 1e-5
    assert torch.equal(synth.features[singleton], seed_x[singleton])  # nothing to interpolate with
    assert synth.info["duplicated_singletons"] == int(singleton.sum())


def test_gaussian_kde_bandwidth_is_scott_times_class_spread():
    rng = np.random.default_rng(0)
    d = 6
    x = np.concatenate([rng.normal(size=(400, d)), 0.5 * rng.normal(size=(100, d))]).astype(np.float64)
    y = np.repeat([0, 1], [400, 100])
    synth = make_oversampler("gaussian-kde", seed=0, project=False).sample(x, y)
    noise = synth.features - torch.from_numpy(x)[synth.seeds]
    sigma = x[y == 1].var(axis=0, ddof=1).mean() ** 0.5
    assert float(noise.std()) == pytest.approx(sigma * 100 ** (-1 / (d + 4)), rel=0.05)
    projected = make_oversampler("gaussian-kde", seed=0).sample(x, y)
    assert (projected.features.norm(dim=1) - 1).abs().max() < 1e-9


def test_registry_and_strategies_that_add_nothing_or_little():
    x, y = imbalanced()
    assert set(OVERSAMPLERS.names()) == {"vmf-kde", "gaussian-kde", "smote", "distribution-calibration"}
    keep = np.bincount(y).tolist()  # targets = current counts: nothing to add
    xr, yr = make_oversampler("smote", sampling_strategy=keep).fit_resample(x, y)
    assert np.array_equal(xr, x) and np.array_equal(yr, y)
    partial = make_oversampler("vmf-kde", sampling_strategy={4: 5}).sample(x, y)
    assert partial.info["synthetic_per_class"] == [0, 0, 0, 0, 4]
    with pytest.raises(DataError, match="class 1 has no training samples"):
        make_oversampler("smote").sample(x[:4], np.array([0, 0, 2, 2]))


def test_bad_input_is_a_data_error():
    x, y = imbalanced()
    bad = x.copy()
    bad[3, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        make_oversampler("vmf-kde").sample(bad, y)
    with pytest.raises(DataError, match="non-negative"):
        make_oversampler("smote").sample(x, y - 1)
    with pytest.raises(DataError, match="do not match"):
        make_oversampler("smote").sample(x, y[:-1])
    settings = make_oversampler("smote", sampling_strategy=np.array([60, 60, 7, 2, 1])).settings()
    assert settings["sampling_strategy"] == [60, 60, 7, 2, 1] and settings["oversampler"] == "smote"
