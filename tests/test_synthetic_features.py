"""The synthetic_features benchmark: reproducible, long-tailed, exact densities, Bayes limit on top."""

import math

import numpy as np
import pytest
import torch

from longtail.data.synthetic_features import VMFMixtures, make_synthetic_benchmark
from longtail.eval.metrics import balanced_accuracy
from longtail.methods.probe import ProbeConfig, fit_probe

SMALL = dict(num_classes=12, dim=16, n_max=200, n_test=60, bayes_per_class=800)


@pytest.fixture(scope="module")
def bench():
    return make_synthetic_benchmark(seed=0, **SMALL)


def test_reproducible_and_seeded(bench):
    again = make_synthetic_benchmark(seed=0, **SMALL)
    for a, b in ((bench.train, again.train), (bench.val, again.val), (bench.test, again.test)):
        assert np.array_equal(a.features, b.features) and np.array_equal(a.labels, b.labels)
    assert again.bayes_balanced_accuracy == bench.bayes_balanced_accuracy
    other = make_synthetic_benchmark(seed=1, **SMALL)
    assert not np.allclose(other.train.features[:10], bench.train.features[:10])


def test_shapes_counts_and_unit_norms(bench):
    counts = bench.train.class_counts()
    assert counts[0] == 200 and counts[-1] == 2 and (np.diff(counts) <= 0).all()  # IR 100
    assert (bench.test.class_counts() == 60).all() and (bench.val.class_counts() == 20).all()
    for fs in (bench.train, bench.val, bench.test):
        assert fs.dim == 16 and fs.num_classes == 12 and fs.prototypes.shape == (12, 16)
        assert np.allclose(np.linalg.norm(fs.features, axis=1), 1.0, atol=1e-5)
    assert bench.bayes_samples == 12 * 800
    assert 0 < bench.bayes_standard_error < 0.02
    assert bench.summary()["bayes_balanced_accuracy"] == bench.bayes_balanced_accuracy


def test_class_density_integrates_to_one():
    # d = 3: E_uniform[p(x | c)] * area(S^2) = 1 for every class (Monte Carlo, 1% tolerance).
    g = torch.Generator().manual_seed(0)
    means = torch.nn.functional.normalize(torch.randn(2, 2, 3, generator=g, dtype=torch.float64), dim=2)
    mix = VMFMixtures(means, torch.tensor([[2.0, 5.0], [0.5, 3.0]], dtype=torch.float64),
                      torch.log(torch.tensor([[0.3, 0.7], [0.5, 0.5]], dtype=torch.float64)))
    u = torch.nn.functional.normalize(torch.randn(400_000, 3, generator=g, dtype=torch.float64), dim=1)
    integral = mix.log_density(u).exp().mean(0) * 4 * math.pi
    assert torch.allclose(integral, torch.ones(2, dtype=torch.float64), atol=0.01)


def test_bayes_rule_beats_trained_probes(bench):
    test = bench.test
    bayes_test = balanced_accuracy(bench.mixtures.bayes_predict(test.features), test.labels)
    # the Monte-Carlo estimate and the test-set value agree within sampling error
    # (test-set standard error <= sqrt(C * 0.25 / 60) / C = 0.019; allow 4 of them)
    assert abs(bayes_test - bench.bayes_balanced_accuracy) < 0.075
    scores = {}
    for loss in ("ce", "la"):
        probe = fit_probe(bench.train, ProbeConfig(method="linear", loss=loss))
        scores[loss] = balanced_accuracy(probe.logits(test.features), test.labels)
        assert bayes_test >= scores[loss]
        assert bench.bayes_balanced_accuracy >= scores[loss]
    assert scores["la"] > scores["ce"]  # the benchmark separates methods
    assert scores["ce"] < bench.bayes_balanced_accuracy - 0.05


def test_save_round_trip(bench, tmp_path):
    from longtail.data.features import load_features
    from longtail.errors import DataError
    from longtail.io import read_json

    bench.save(tmp_path / "synth")
    test = load_features(tmp_path / "synth" / "test.npz")
    assert np.array_equal(test.features, bench.test.features) and test.class_names == bench.test.class_names
    assert np.array_equal(test.prototypes, bench.test.prototypes)
    assert read_json(tmp_path / "synth" / "benchmark.json")["bayes_samples"] == bench.bayes_samples
    with pytest.raises(DataError, match="not overwriting"):
        bench.save(tmp_path / "synth")
