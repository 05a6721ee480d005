"""method=auto (issue 12 item 5; longtail/methods/probe/auto.py): the stratified folds, the
selection on val and by cross-validation, its table and cost, and that it never sees the test set."""

import csv
import json

import numpy as np
import pytest
import yaml

from longtail.cli import main
from longtail.data.features import FeatureSet, save_features
from longtail.data.splits import stratified_folds
from longtail.errors import ConfigError, DataError
from longtail.eval.metrics import balanced_accuracy
from longtail.methods.probe import ProbeConfig, fit_probe
from longtail.methods.probe.auto import (
    ALPHA_GRID,
    L2_PATH_C,
    POSTHOC_GRID,
    TAU_NORM_GRID,
    config_of,
)

COUNTS = (40, 20, 6, 2, 1)  # a class with fewer images than folds (2) and one with a single image


def AUTO(**kwargs):  # noqa: N802 - a config factory; few L-BFGS iterations keep the tests fast
    return ProbeConfig(**{"method": "auto", "max_iter": 30, **kwargs})


def _blobs(seed=0, counts=COUNTS, d=6, prototypes=True):
    """Overlapping Gaussian blobs with unit prototypes near the class means."""
    means = np.random.default_rng(7).normal(size=(len(counts), d)) * 1.5
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(counts)), counts)
    x = means[y] + rng.normal(size=(y.size, d))
    protos = means + 0.3 * np.random.default_rng(8).normal(size=means.shape)
    protos = (protos / np.linalg.norm(protos, axis=1, keepdims=True)).astype(np.float32) if prototypes else None
    return FeatureSet(x.astype(np.float32), y, class_names=[f"c{i}" for i in range(len(counts))], prototypes=protos)


def _table(probe):
    """The candidate table without timings (what must not depend on anything but the data and seed)."""
    return [(r["candidate"], json.dumps(r["settings"], sort_keys=True), r["scores"])
            for r in probe.info["auto"]["candidates"]]


# ------------------------------------------------------------------ folds
def test_folds_keep_every_class_in_every_training_part():
    y = np.repeat(np.arange(4), [10, 5, 2, 1])
    folds = stratified_folds(y, 3, seed=4)
    held_all = np.concatenate([held for _, held in folds])
    for train, held in folds:
        assert np.bincount(y[train], minlength=4).min() >= 1  # every class in every training part
        assert np.intersect1d(train, held).size == 0 and train.size + held.size == y.size
    assert sorted(held_all.tolist()) == list(range(17))  # each image of a class of >= 2 held out once
    held_counts = np.array([np.bincount(y[held], minlength=4) for _, held in folds])
    assert sorted(held_counts[:, 0].tolist()) == [3, 3, 4] and sorted(held_counts[:, 1].tolist()) == [1, 2, 2]
    assert sorted(held_counts[:, 2].tolist()) == [0, 1, 1] and held_counts[:, 3].tolist() == [0, 0, 0]
    again = stratified_folds(y, 3, seed=4)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, stratified_folds(y, 3, seed=5)))
    with pytest.raises(ConfigError, match="folds >= 2"):
        stratified_folds(y, 1)
    with pytest.raises(DataError, match="nothing held out"):
        stratified_folds(np.arange(5), 3)  # every class has a single image


# ------------------------------------------------------------------ selection
def test_val_path_scores_are_the_methods_own_and_the_winner_is_refitted():
    train, val = _blobs(seed=1), _blobs(seed=2, counts=(10,) * 5)
    probe = fit_probe(train, AUTO(method_options={"candidates": ["cosine", "tau-norm", "ncm"]}), val)
    auto = probe.info["auto"]
    assert auto["validated_by"] == "val" and auto["folds"] is None and auto["held_out_sizes"] == [50]
    rows = auto["candidates"]
    assert {r["candidate"] for r in rows} == {"cosine", "tau-norm", "ncm"}
    best = max(r["mean"] for r in rows)
    first_best = next(r for r in rows if r["mean"] == best)  # ties: the earlier row
    assert auto["chosen"]["settings"] == first_best["settings"] and auto["chosen"]["score"] == best
    assert auto["chosen"]["se"] == first_best["se"] > 0
    # the shared-work score of a row (post-hoc tau, tau-norm rescaling, interpolation on one fit's
    # logits) is the validation score of the method itself, fitted from the row's configuration
    picks = [r for r in rows if r["settings"]["posthoc_tau"] == 1.0 and r["settings"]["interpolate"] == 0.5
             and r["settings"]["C"] in (None, 1.0) and r["settings"]["method_options"].get("tau", 0.5) == 0.5]
    assert sorted(r["candidate"] for r in picks) == ["cosine", "ncm", "tau-norm"]
    for row in picks:
        own = fit_probe(train, config_of(AUTO(method="cosine"), row["settings"], train.num_samples))
        assert balanced_accuracy(own.logits(val.features), val.labels) == pytest.approx(row["scores"][0])
    refit = fit_probe(train, config_of(AUTO(method="cosine"), auto["chosen"]["settings"], train.num_samples))
    assert np.array_equal(refit.logits(val.features), probe.logits(val.features))
    assert probe.config["method"] == auto["chosen"]["settings"]["method"]
    assert auto["total_seconds"] >= auto["refit_seconds"] > 0 and auto["cost_vs_plain_fit"] > 0


def test_standard_error_of_a_balanced_accuracy_is_binomial_per_class():
    from longtail.eval.metrics import balanced_accuracy_se

    labels = np.array([0, 0, 0, 0, 1, 1])  # class 0: 3 of 4 right; class 1: 1 of 2; class 2 absent
    pred = np.array([0, 0, 0, 1, 1, 0])
    score, se = balanced_accuracy_se(pred, labels, 3)
    assert score == pytest.approx((0.75 + 0.5) / 2)
    assert se == pytest.approx(np.sqrt(0.75 * 0.25 / 4 + 0.5 * 0.5 / 2) / 2)


def test_cross_validation_is_deterministic_for_a_seed_and_records_its_cost():
    train = _blobs(seed=3)
    cfg = AUTO(method_options={"candidates": "cosine,tau-norm,crt", "folds": 3})
    first, second = fit_probe(train, cfg), fit_probe(train, cfg)
    auto = first.info["auto"]
    assert auto["validated_by"] == "3-fold cross-validation on train" and auto["folds"] == 3
    assert sum(auto["held_out_sizes"]) == sum(COUNTS) - 1  # the single-image class is never held out
    assert all(len(r["scores"]) == 3 and r["mean"] == pytest.approx(np.mean(r["scores"])) for r in auto["candidates"])
    assert "interpolate" in {k for r in auto["candidates"] for k, v in r["settings"].items() if v}  # prototypes
    assert _table(first) == _table(second) and auto["chosen"] == second.info["auto"]["chosen"]
    assert np.array_equal(first.logits(train.features), second.logits(train.features))
    assert auto["plain_fit_seconds"] > 0 and auto["cost_vs_plain_fit"] > 0 and auto["plain_fit_from"]
    # the work (L-BFGS evaluations x samples, deterministic) stays within the design bound of
    # 10 plain fits: 3 folds of 2/3 of the data x (cosine + 3 path fits + cRT) + the refit
    assert auto["total_work"] > 0 and 1 < auto["work_vs_plain_fit"] <= 10
    other = fit_probe(train, AUTO(seed=1, method_options=cfg.method_options))
    assert _table(other) != _table(first)  # other folds
    # without prototypes: no interpolation rows and no zero-shot candidate
    plain = fit_probe(_blobs(seed=3, prototypes=False), AUTO(method_options={"folds": 2}))
    rows = plain.info["auto"]["candidates"]
    assert {r["candidate"] for r in rows} == {"cosine", "tau-norm", "crt", "ncm"}
    assert all(r["settings"]["interpolate"] is None and len(r["scores"]) == 2 for r in rows)


def test_bad_options_fail_when_the_config_is_built():
    with pytest.raises(ConfigError, match="unknown candidate 'bogus'"):
        ProbeConfig(method="auto", method_options={"candidates": ["cosine", "bogus"]})
    with pytest.raises(ConfigError, match="unknown candidate 'auto'"):
        ProbeConfig(method="auto", method_options={"candidates": ["auto"]})
    with pytest.raises(ConfigError, match="folds must be an integer >= 2"):
        ProbeConfig(method="auto", method_options={"folds": 1})
    with pytest.raises(ConfigError, match="unknown method_options key 'k'"):
        ProbeConfig(method="auto", method_options={"k": 3})
    with pytest.raises(ConfigError, match="chooses loss itself"):  # when the config is built, before data
        ProbeConfig(method="auto", loss="ce")
    with pytest.raises(DataError, match="candidate 'zero-shot' needs class prototypes"):
        fit_probe(_blobs(prototypes=False), ProbeConfig(method="auto", method_options={"candidates": ["zero-shot"]}))


# ------------------------------------------------------------------ the command
def test_cli_selection_never_reads_the_test_file(tmp_path, capsys):
    train, test = _blobs(seed=5), _blobs(seed=6, counts=(8,) * 5)
    save_features(train, tmp_path / "train.npz")
    save_features(test, tmp_path / "test.npz")
    shuffled = test.with_arrays(test.features[::-1].copy(), np.random.default_rng(0).permutation(test.labels))
    save_features(shuffled, tmp_path / "shuffled.npz")
    keys = ["method=auto", "max_iter=30", "method_options.candidates=[cosine,tau-norm]", "method_options.folds=2"]
    assert main(["probe", "--train", str(tmp_path / "train.npz"), "--test", str(tmp_path / "test.npz"),
                 "--out", str(tmp_path / "a"), *keys]) == 0
    assert main(["probe", "--train", str(tmp_path / "train.npz"), "--test", str(tmp_path / "shuffled.npz"),
                 "--out", str(tmp_path / "b"), "--no-report", *keys]) == 0

    def selection(folder):
        with open(folder / "selection.csv", newline="") as handle:
            return [{k: v for k, v in row.items() if k != "fit_seconds"} for row in csv.DictReader(handle)]

    a, b = selection(tmp_path / "a"), selection(tmp_path / "b")
    per_fit = len(POSTHOC_GRID) * len(ALPHA_GRID)  # every post-hoc tau and interpolation alpha
    assert a == b and len(a) == per_fit * (1 + len(L2_PATH_C) * len(TAU_NORM_GRID))  # cosine; tau-norm path
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["auto"] == {**metrics["auto"], "folds": 2, "num_candidates": len(a), "table": "selection.csv"}
    chosen = metrics["auto"]["chosen"]
    assert chosen == json.loads((tmp_path / "b" / "metrics.json").read_text())["auto"]["chosen"]
    assert (a[0]["method"], float(a[0]["mean"])) == (chosen["settings"]["method"], pytest.approx(chosen["score"]))
    config = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert config["probe"]["method"] == "auto"
    html = (tmp_path / "a" / "report.html").read_text()
    assert "<h2>Selection</h2>" in html and "2-fold cross-validation on train" in html
    # a bad candidate name fails before any file is read (the files here do not exist)
    capsys.readouterr()
    assert main(["probe", "--train", str(tmp_path / "none.npz"), "--test", str(tmp_path / "none.npz"),
                 "method=auto", "method_options.candidates=[cosine,bogus]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown candidate 'bogus'" in err and "none.npz" not in err and len(err.splitlines()) == 1
