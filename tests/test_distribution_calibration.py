"""Distribution calibration (Yang et al. 2021) as a long-tail oversampler and probe method (docs/methods.md §11)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from longtail.data.features import save_features
from longtail.data.synthetic_features import make_synthetic_benchmark
from longtail.errors import ConfigError, DataError
from longtail.methods.latent import calibration
from longtail.methods.latent.oversample import OVERSAMPLERS, make_oversampler
from longtail.methods.probe import ProbeConfig, fit_probe, load_methods

NAME = "distribution-calibration"


def hand_made(seed: int = 0, counts=(12, 10, 3, 8, 2, 1), d: int = 3):
    """Non-negative features (like pooled ReLU features): classes 0, 1, 3 have > 5 rows (head
    at head_threshold=5; class 2 has n = 3 <= d, its covariance root is the centred rows)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.5, 3.0, size=(len(counts), d))
    x = np.concatenate([np.abs(c + 0.4 * rng.normal(size=(n, d))) for c, n in zip(centres, counts)])
    return x, np.repeat(np.arange(len(counts)), counts)


def paper_statistics(x, y, heads, query, k, alpha, lam=0.5):
    """numpy, as the paper / reference code: Tukey x^lam, base means and np.cov, the k nearest
    base means to the query, mean of (those means + query), mean of their covariances + alpha."""
    z = np.power(x, lam)
    means = np.stack([z[y == c].mean(0) for c in heads])
    covs = np.stack([np.cov(z[y == c].T) for c in heads])
    near = np.argsort(np.linalg.norm(means - query, axis=1))[:k]
    mean = np.concatenate([means[near], query[None]]).mean(0)
    return near, mean, covs[near].mean(0) + alpha


def test_calibrated_mean_and_covariance_reproduce_the_paper_formulas():
    x, y = hand_made()
    heads = [0, 1, 2, 3]  # class 2 (n = 3 = d) included to cover the rank-deficient root below
    z = torch.from_numpy(np.power(x, 0.5))
    yt = torch.from_numpy(y)
    means = calibration.class_means(z, yt, 6)[heads]
    covs = torch.stack([torch.from_numpy(np.cov(z[yt == c].numpy().T)) for c in heads])
    queries = z[yt >= 4]  # the rows of the two smallest classes
    nearest = calibration.nearest_heads(queries, means, 2)
    mu = calibration.calibrated_mean(queries, means, nearest)
    sigma = calibration.calibrated_covariance(covs, nearest, 0.21)
    for i, q in enumerate(x[y >= 4]):
        near, mean, cov = paper_statistics(x, y, heads, np.power(q, 0.5), 2, 0.21)
        assert sorted(nearest[i].tolist()) == sorted(near.tolist())
        np.testing.assert_allclose(mu[i].numpy(), mean, rtol=1e-12)
        np.testing.assert_allclose(sigma[i].numpy(), cov, rtol=1e-12)
    for c in heads:  # the sampling root reproduces np.cov whether n <= d (class 2) or n > d
        root = calibration.covariance_root(z[yt == c])
        np.testing.assert_allclose((root.T @ root).numpy(), np.cov(z[yt == c].numpy().T), atol=1e-12)


def test_samples_follow_the_calibrated_gaussian_in_tukey_space():
    x, y = hand_made()
    target = {5: 40001}  # class 5 has one row: per-class calibration = the paper's 1-shot case
    sampler = make_oversampler(NAME, head_threshold=5, alpha=0.05, alpha_relative=False, calibrate="class",
                               sampling_strategy=target, device="cpu")
    synth = sampler.sample(torch.from_numpy(x), y)
    assert synth.info["head_classes"] == [0, 1, 3] and synth.info["alpha_effective"] == 0.05
    near, mean, cov = paper_statistics(x, y, [0, 1, 3], np.power(x[y == 5][0], 0.5), 2, 0.05)
    z = calibration.tukey(synth.features, 0.5).numpy()  # the transform is inverted on the way out
    np.testing.assert_allclose(z.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(np.cov(z.T), cov, atol=0.02)


def test_head_classes_are_untouched_and_tail_classes_reach_their_targets():
    x, y = hand_made()
    sampler = make_oversampler(NAME, head_threshold=5, device="cpu")
    x_res, y_res = sampler.fit_resample(x, y)
    assert np.array_equal(x_res[: len(x)], x) and np.array_equal(y_res[: len(y)], y)  # real rows first, unchanged
    assert np.bincount(y_res).tolist() == [12, 10, 12, 8, 12, 12]  # heads 0, 1, 3 keep their counts
    assert set(y_res[len(y):].tolist()) == {2, 4, 5}
    # an explicit strategy still only grows tail classes; head classes get no synthetic rows
    synth = make_oversampler(NAME, head_threshold=5, sampling_strategy=[20, 20, 7, 20, 5, 30]).sample(x, y)
    assert synth.info["synthetic_per_class"] == [0, 0, 4, 0, 3, 29]
    assert np.bincount(synth.labels.numpy(), minlength=6).tolist() == [0, 0, 4, 0, 3, 29]


def test_tukey_round_trip_and_negative_features():
    x = torch.tensor([[0.0, 0.25, 4.0], [-4.0, -0.25, 1.0]], dtype=torch.float64)
    z = calibration.tukey(x, 0.5)
    assert z.tolist() == [[0.0, 0.5, 2.0], [-2.0, -0.5, 1.0]]  # x^0.5 on x >= 0, odd extension below
    torch.testing.assert_close(calibration.inverse_tukey(z, 0.5), x)
    x, y = hand_made()  # non-negative: transformed; synthetic rows come back through the inverse
    assert make_oversampler(NAME, head_threshold=5).sample(x, y).info["tukey_applied"] is True
    # unit-sphere embeddings (negative entries): no transform (as lambda = 1) unless signed_tukey
    bench = make_synthetic_benchmark(seed=1, num_classes=6, dim=16, n_max=60, imbalance_ratio=20,
                                     n_val=5, n_test=5, bayes_per_class=5)
    xs, ys = bench.train.features, bench.train.labels
    plain = make_oversampler(NAME, head_threshold=20).sample(xs, ys)
    assert plain.info["tukey_applied"] is False and plain.features.shape[0] > 0
    assert torch.equal(plain.features, make_oversampler(NAME, head_threshold=20, tukey_lambda=1).sample(xs, ys).features)
    signed = make_oversampler(NAME, head_threshold=20, signed_tukey=True).sample(xs, ys)
    assert signed.info["tukey_applied"] is True and torch.isfinite(signed.features).all()


def test_deterministic_for_a_seed():
    x, y = hand_made()
    a = make_oversampler(NAME, head_threshold=5, seed=3).sample(x, y)
    b = make_oversampler(NAME, head_threshold=5, seed=3).sample(x, y)
    c = make_oversampler(NAME, head_threshold=5, seed=4).sample(x, y)
    assert torch.equal(a.features, b.features) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.features, c.features)


@pytest.mark.parametrize("options,match", [
    ({"k": 0}, "k must be an integer >= 1"), ({"alpha": -0.1}, "alpha must be a finite number >= 0"),
    ({"tukey_lambda": 0}, "tukey_lambda must be > 0"), ({"head_threshold": 0}, "head_threshold must be"),
    ({"calibrate": "query"}, "calibrate must be 'sample' or 'class'"), ({"kappa": 1}, "bad parameters"),
])
def test_bad_options_are_one_line_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        make_oversampler(NAME, **options)
    if "kappa" not in options:  # checked when the probe config is built, before any data
        with pytest.raises(ConfigError, match=match):
            ProbeConfig(method=NAME, method_options=options)


def test_too_few_head_classes_is_a_data_error():
    x, y = hand_made()
    assert NAME in OVERSAMPLERS
    with pytest.raises(DataError, match="at least k=2 head classes .n_c > 100., found 0: lower head_threshold"):
        make_oversampler(NAME).sample(x, y)
    with pytest.raises(DataError, match="at least k=4 head classes"):
        make_oversampler(NAME, head_threshold=5, k=4).sample(x, y)


def test_probe_method_end_to_end_cli(tmp_path, capsys):
    import argparse

    from longtail.commands import probe as command
    from longtail.methods.run_kinds import evaluate_run

    assert NAME in load_methods().names()
    bench = make_synthetic_benchmark(seed=1, num_classes=6, dim=16, n_max=60, imbalance_ratio=20,
                                     n_val=5, n_test=30, bayes_per_class=20)
    save_features(bench.train, tmp_path / "train.npz")
    save_features(bench.test, tmp_path / "test.npz")
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    code = command.run(parser.parse_args([
        "--train", str(tmp_path / "train.npz"), "--test", str(tmp_path / "test.npz"), "--method", NAME,
        "method_options.head_threshold=20", "method_options.k=1", "max_iter=30",
        "--out", str(tmp_path / "run"), "--no-report", "--json"]))
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluate_run(tmp_path / "run")["all"] == pytest.approx(result["all"])
    info = json.loads((tmp_path / "run" / "head" / "head.json").read_text())["info"]["oversampling"]
    counts = bench.train.class_counts()
    assert info["oversampler"] == NAME and info["k"] == 1 and info["head_classes"] == np.flatnonzero(counts > 20).tolist()
    assert info["resampled_counts"] == np.where(counts > 20, counts, counts.max()).tolist()
    probe = fit_probe(bench.train, ProbeConfig(method=NAME, method_options={"head_threshold": 20}, max_iter=30))
    assert probe.synthetic.features.shape == (int((counts.max() - counts)[counts <= 20].sum()), 16)
