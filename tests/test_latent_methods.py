"""The vmf-kde / gaussian-kde / smote probe methods: registry, priors, prototype init, figures, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from longtail.data.features import save_features
from longtail.data.synthetic_features import make_synthetic_benchmark
from longtail.errors import ConfigError, DataError
from longtail.methods.probe import Probe, ProbeConfig, fit_probe, load_methods

METHODS = ("vmf-kde", "gaussian-kde", "smote")


@pytest.fixture(scope="module")
def bench():
    return make_synthetic_benchmark(seed=1, num_classes=6, dim=16, n_max=60, imbalance_ratio=20,
                                    n_val=5, n_test=30, bayes_per_class=20)


def test_methods_registered():
    assert set(METHODS) <= set(load_methods().names())


@pytest.mark.parametrize("method", METHODS)
def test_fit_records_oversampling_and_keeps_real_counts(bench, method, tmp_path):
    probe = fit_probe(bench.train, ProbeConfig(method=method, max_iter=50))
    real = bench.train.class_counts()
    info = probe.info["oversampling"]
    assert info["oversampler"] == method and info["loss_prior"] == "resampled"
    assert info["synthetic_per_class"] == (real.max() - real).tolist()
    assert info["resampled_counts"] == [int(real.max())] * 6 and info["real_counts"] == real.tolist()
    assert np.array_equal(probe.class_counts, real)
    assert probe.synthetic.features.shape == (int((real.max() - real).sum()), 16)
    probe.save(tmp_path / "head")
    loaded = Probe.load(tmp_path / "head")
    assert loaded.info["oversampling"]["synthetic_per_class"] == info["synthetic_per_class"]
    np.testing.assert_allclose(loaded.logits(bench.test.features), probe.logits(bench.test.features), rtol=1e-6)
    figures = probe.write_figures(tmp_path / "figs")
    assert figures[0].stat().st_size > 1000 and figures[0].read_bytes()[:4] == b"\x89PNG"


def test_la_on_resampled_prior_equals_ce_and_original_prior_differs(bench):
    base = {"method": "vmf-kde"}
    ce = fit_probe(bench.train, ProbeConfig(loss="ce", **base)).logits(bench.test.features)
    la = fit_probe(bench.train, ProbeConfig(loss="la", **base)).logits(bench.test.features)
    # balanced data: uniform prior, the LA shift is a constant -> same optimum (up to L-BFGS tol)
    np.testing.assert_allclose(la, ce, atol=1e-2)
    assert (la.argmax(1) == ce.argmax(1)).mean() > 0.98
    orig = fit_probe(bench.train, ProbeConfig(loss="la", method_options={"loss_prior": "original"}, **base))
    assert orig.info["oversampling"]["loss_prior"] == "original"
    la_orig = orig.logits(bench.test.features)
    # LA on the real prior pushes predictions to the tail: tail-class logits rise relative to head ones
    shift = (la_orig - ce).mean(0)
    assert shift[-1] - shift[0] > 0.1


def test_method_options_reach_the_oversampler_and_are_validated_up_front(bench):
    probe = fit_probe(bench.train, ProbeConfig(method="smote", max_iter=5,
                                               method_options={"k_neighbors": 2, "sampling_strategy": {5: 10}}))
    info = probe.info["oversampling"]
    assert info["k_neighbors"] == 2 and sum(info["synthetic_per_class"]) == 10 - bench.train.class_counts()[5]
    # checked when the config is built, before any data: the valid keys are listed
    with pytest.raises(ConfigError, match="unknown method_options key 'kappa' .*k_neighbors"):
        ProbeConfig(method="smote", method_options={"kappa": 3})
    with pytest.raises(ConfigError, match="loss_prior"):
        ProbeConfig(method="vmf-kde", method_options={"loss_prior": "x"})
    with pytest.raises(ConfigError, match="set seed as the probe's own key"):
        ProbeConfig(method="vmf-kde", method_options={"seed": 3})


def test_prototype_init_starts_from_zero_shot(bench):
    zs = fit_probe(bench.train, ProbeConfig(method="zero-shot")).logits(bench.test.features)
    start = fit_probe(bench.train, ProbeConfig(method="vmf-kde", init="prototypes", max_iter=0))
    np.testing.assert_allclose(start.logits(bench.test.features), zs, rtol=1e-5, atol=1e-4)
    mixed = fit_probe(bench.train, ProbeConfig(method="vmf-kde", max_iter=20, interpolate=0.0))
    np.testing.assert_allclose(mixed.logits(bench.test.features), zs, rtol=1e-5, atol=1e-4)


def test_vmf_kde_lifts_tail_accuracy_over_plain_probe(bench):
    from longtail.eval.metrics import per_class_accuracy

    def few_acc(method):
        probe = fit_probe(bench.train, ProbeConfig(method=method))
        acc, _ = per_class_accuracy(probe.predict(bench.test.features), bench.test.labels, 6)
        return acc[-2:].mean()  # the two smallest classes (3 and 5 training samples)

    assert few_acc("vmf-kde") > few_acc("linear")


def test_cli_probe_with_vmf_kde(bench, tmp_path, capsys):
    import argparse

    from longtail.commands import probe as command

    def main(argv):  # `longtail probe ...` without the other subcommands' imports
        parser = argparse.ArgumentParser()
        command.add_arguments(parser)
        return command.run(parser.parse_args(argv[1:]))

    save_features(bench.train, tmp_path / "train.npz")
    save_features(bench.test, tmp_path / "test.npz")
    code = main(["probe", "--train", str(tmp_path / "train.npz"), "--test", str(tmp_path / "test.npz"),
                 "--method", "vmf-kde", "--loss", "la", "max_iter=30",
                 "--out", str(tmp_path / "run"), "--no-report", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    from longtail.methods.run_kinds import evaluate_run

    assert evaluate_run(tmp_path / "run")["all"] == pytest.approx(result["all"])  # the saved head reproduces it
    head = json.loads((tmp_path / "run" / "head" / "head.json").read_text())
    assert head["info"]["oversampling"]["oversampler"] == "vmf-kde"


def test_plot_latent_projection_handles_single_sample_class(tmp_path):
    from longtail.methods.latent.plots import plot_latent_projection

    rng = np.random.default_rng(0)
    real_x, real_y = rng.normal(size=(7, 5)), np.array([0, 0, 0, 0, 0, 0, 1])
    synth_x, synth_y = rng.normal(size=(9, 5)), np.array([1] * 5 + [2] * 4)
    path = plot_latent_projection(real_x, real_y, synth_x, synth_y, [1], tmp_path / "one.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    plot_latent_projection(real_x, real_y, synth_x, synth_y, [0, 1], tmp_path / "two.png", class_names=["a", "b", "c"])
    assert (tmp_path / "two.png").exists()
    with pytest.raises(DataError, match="no real samples"):
        plot_latent_projection(real_x, real_y, synth_x, synth_y, [2], tmp_path / "none.png")
