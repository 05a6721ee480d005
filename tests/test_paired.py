"""Paired comparison of two runs on the same test images (issue 25 item 1, docs/methods.md §7.7):
the paired SE against a hand-computed case, the stratified bootstrap (seeded, covering the
difference), the verdict rule on its boundaries, `eval --against` and `report --paired` end to end
on tiny probe runs; and comparison labels naming every differing key (issue 22 item 8)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from longtail.cli import main
from longtail.data.features import save_features
from longtail.data.synthetic_features import make_synthetic_benchmark
from longtail.errors import DataError
from longtail.eval.compare import run_labels
from longtail.eval.metrics import balanced_accuracy_se
from longtail.eval.paired import (
    BETTER,
    EQUAL,
    WORSE,
    between_class_se,
    compare_runs,
    paired_balanced_accuracy_se,
    paired_bootstrap,
    paired_difference,
    pairing_problem,
    verdict,
)
from longtail.runs import load_run

# ------------------------------------------------------------------------- hand-computed case

# class 0: 4 images, A right on [1, 1, 0, 0], B on [1, 1, 1, 0] -> d = [0, 0, 1, 0]: mean 1/4, s^2 = 1/4
# class 1: 2 images, A right on [1, 0],       B on [0, 0]       -> d = [-1, 0]:     mean -1/2, s^2 = 1/2
LABELS = np.array([0, 0, 0, 0, 1, 1])
RIGHT_A = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
RIGHT_B = np.array([1, 1, 1, 0, 0, 0], dtype=bool)


def _pred(right: np.ndarray, labels: np.ndarray, num_classes: int = 2) -> np.ndarray:
    return np.where(right, labels, (labels + 1) % num_classes)


def test_paired_se_equals_the_hand_computed_case():
    a, b = _pred(RIGHT_A, LABELS), _pred(RIGHT_B, LABELS)
    diff, se = paired_balanced_accuracy_se(a, b, LABELS, 2)
    assert diff == pytest.approx((0.25 - 0.5) / 2)
    assert se == pytest.approx(math.sqrt(0.25 / 4 + 0.5 / 2) / 2)  # sqrt(sum_c s_c^2 / n_c) / C
    assert between_class_se(a, b, LABELS, 2) == pytest.approx(np.std([0.25, -0.5], ddof=1) / math.sqrt(2))
    # logits give the same as their argmax; the full table agrees and adds overall accuracy
    logits = np.eye(2)[b] * 3.0
    assert paired_balanced_accuracy_se(a, logits, LABELS) == pytest.approx((diff, se))
    result = paired_difference(a, b, LABELS, ["many", "few"])
    cm, overall = result["metrics"]["class_mean"], result["metrics"]["all"]
    assert (cm["a"], cm["b"], cm["diff"], cm["se"]) == pytest.approx((0.5, 0.375, diff, se))
    assert overall["diff"] == pytest.approx(0.0) and overall["se"] == pytest.approx(math.sqrt(4 * 0.25 + 2 * 0.5) / 6)
    assert result["metrics"]["many"]["diff"] == pytest.approx(0.25) and result["metrics"]["medium"] is None
    assert result["metrics"]["few"]["se"] == pytest.approx(math.sqrt(0.5 / 2))
    assert result["agreement"] == pytest.approx(4 / 6)


def test_one_image_classes_take_the_pooled_variance_and_pairing_beats_the_unpaired_se():
    labels = np.array([0, 0, 0, 1])
    a = _pred(np.array([1, 0, 0, 1], dtype=bool), labels)
    b = _pred(np.array([1, 1, 0, 0], dtype=bool), labels)  # class 0: d = [0, 1, 0] (s^2 = 1/3); class 1: d = [-1]
    assert paired_balanced_accuracy_se(a, b, labels, 2)[1] == pytest.approx(math.sqrt(1 / 3 / 3 + 1 / 3 / 1) / 2)
    # two models that disagree on few images: the paired SE is far below the unpaired one
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(20), 30)
    right_a = rng.random(labels.size) < 0.7
    right_b = right_a.copy()
    flip = rng.random(labels.size) < 0.05
    right_b[flip] = ~right_b[flip]
    a, b = _pred(right_a, labels, 20), _pred(right_b, labels, 20)
    unpaired = math.hypot(balanced_accuracy_se(a, labels, 20)[1], balanced_accuracy_se(b, labels, 20)[1])
    assert paired_balanced_accuracy_se(a, b, labels, 20)[1] < unpaired / 2


def test_the_bootstrap_is_seeded_stratified_and_covers_the_difference():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(12), [40] * 4 + [15] * 4 + [5] * 4)
    a = _pred(rng.random(labels.size) < 0.6, labels, 12)
    b = _pred(rng.random(labels.size) < 0.7, labels, 12)
    diff, se = paired_balanced_accuracy_se(a, b, labels, 12)
    one, again = paired_bootstrap(a, b, labels, 12, seed=7), paired_bootstrap(a, b, labels, 12, seed=7)
    assert one == again  # deterministic for a seed
    assert paired_bootstrap(a, b, labels, 12, seed=8) != one
    assert one["low"] < diff < one["high"]
    # resampling within classes: its SE is the plug-in (n_c) version of the paired SE
    d = (b == labels).astype(float) - (a == labels)
    plug_in = math.sqrt(sum(d[labels == c].var() / (labels == c).sum() for c in range(12))) / 12
    wide = paired_bootstrap(a, b, labels, 12, n_boot=8000, seed=1)
    assert wide["se"] == pytest.approx(plug_in, rel=0.05) and plug_in < se
    table = paired_difference(a, b, labels, ["many"] * 4 + ["medium"] * 4 + ["few"] * 4, seed=7)
    assert table["metrics"]["class_mean"]["ci"] == pytest.approx([one["low"], one["high"]])
    assert table == paired_difference(a, b, labels, ["many"] * 4 + ["medium"] * 4 + ["few"] * 4, seed=7)
    # identical predictions: no difference, no noise
    same = paired_difference(a, a, labels)["metrics"]["class_mean"]
    assert (same["diff"], same["se"], same["ci"], same["verdict"]) == (0.0, 0.0, [0.0, 0.0], EQUAL)


def test_the_verdict_rule_on_its_boundaries():
    assert verdict(0.02, 0.01) == EQUAL  # exactly 2 SE: noise
    assert verdict(0.0201, 0.01) == BETTER and verdict(-0.0201, 0.01) == WORSE
    assert verdict(0.0, 0.0) == EQUAL and verdict(1e-9, 0.0) == BETTER
    assert verdict(0.03, 0.01, margin=0.01) == EQUAL and verdict(0.031, 0.01, margin=0.01) == BETTER
    assert verdict(-0.031, 0.01, margin=0.01) == WORSE
    assert verdict(0.05, 0.01, z=5) == EQUAL and verdict(0.05, 0.01, z=4.9) == BETTER
    assert verdict(0.5, None) == EQUAL and verdict(0.5, float("nan")) == EQUAL and verdict(None, 0.1) == EQUAL


def test_the_goal_rule_is_met_only_beyond_the_noise():
    from longtail.eval.paired import MET, MISSED, NEAR, goal_verdict

    # "B - A >= 3 points" with a paired SE of 0.5 point: met above 4, missed below 2, else noise
    assert goal_verdict(0.0401, 0.005, goal=0.03) == MET and goal_verdict(0.0399, 0.005, goal=0.03) == NEAR
    assert goal_verdict(0.034, 0.005, goal=0.03) == NEAR and goal_verdict(0.0199, 0.005, goal=0.03) == MISSED
    # ">= the checkpoint" (goal 0): a +0.26 point gain with SE 0.3 is not met, only equal within noise
    assert goal_verdict(0.0026, 0.003) == NEAR and goal_verdict(-0.0061, 0.003) == MISSED
    assert goal_verdict(0.5, None) == NEAR and goal_verdict(None, 0.1) == NEAR


def test_mismatched_inputs_are_refused():
    with pytest.raises(DataError, match="same 6 test images"):
        paired_difference(LABELS[:5], LABELS, LABELS)
    with pytest.raises(DataError, match="groups name 3 classes"):
        paired_difference(LABELS, LABELS, LABELS, ["many"] * 3)


# --------------------------------------------------------------------------- saved runs, CLI


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("paired")
    files = {}
    for name, classes in (("six", 6), ("four", 4)):
        bench = make_synthetic_benchmark(seed=1, num_classes=classes, dim=8, n_max=150, imbalance_ratio=30,
                                         n_val=10, n_test=30, bayes_per_class=50)
        files[name] = {split: save_features(getattr(bench, split), root / f"{name}_{split}.npz")
                       for split in ("train", "test")}
    made = {}
    for run, data, extra in (("ce", "six", ["method=linear", "loss=ce"]), ("la", "six", ["method=linear", "loss=la"]),
                             ("cos", "six", ["method=cosine", "loss=la"]), ("other", "four", ["method=linear"])):
        made[run] = root / run
        assert main(["probe", "--train", str(files[data]["train"]), "--test", str(files[data]["test"]),
                     "--out", str(made[run]), "--no-report", *extra]) == 0
    return made


def test_eval_against_prints_the_paired_difference(runs, capsys):
    capsys.readouterr()
    assert main(["eval", str(runs["la"]), "--against", str(runs["ce"]), "--bootstrap", "500"]) == 0
    out = capsys.readouterr().out
    assert "paired: la vs ce on the same 180 test images (6 classes" in out
    saved = {k: json.loads((runs[k] / "metrics.json").read_text()) for k in ("ce", "la")}
    table = out[out.index("paired:"):].splitlines()  # after RUN's own metrics
    row = next(line for line in table if line.startswith("class_mean "))
    cells = row.split()
    assert float(cells[1]) == pytest.approx(100 * saved["ce"]["class_mean"], abs=0.006)
    assert float(cells[3]) == pytest.approx(100 * (saved["la"]["class_mean"] - saved["ce"]["class_mean"]), abs=0.006)
    assert re.search(r"(better|worse|equal within noise)$", row)
    for group in ("many ", "medium ", "few "):
        assert any(line.startswith(group) for line in table), group
    assert main(["eval", str(runs["la"]), "--against", str(runs["ce"]), "--json", "--bootstrap", "200",
                 "--seed", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    entry = data["paired"]["metrics"]["class_mean"]
    assert data["class_mean"] == pytest.approx(saved["la"]["class_mean"])
    assert entry["diff"] == pytest.approx(saved["la"]["class_mean"] - saved["ce"]["class_mean"])
    assert entry["se"] > 0 and entry["ci"][0] <= entry["diff"] <= entry["ci"][1]
    assert entry["verdict"] == verdict(entry["diff"], entry["se"])
    assert (data["paired"]["n_boot"], data["paired"]["seed"]) == (200, 3)


def test_runs_on_other_test_data_are_not_paired(runs, capsys):
    problem = pairing_problem(load_run(runs["ce"]), load_run(runs["other"]))
    assert problem and "test data differ" in problem
    assert pairing_problem(load_run(runs["ce"]), load_run(runs["la"])) is None
    capsys.readouterr()
    assert main(["eval", str(runs["la"]), "--against", str(runs["other"])]) == 2
    assert "cannot pair" in capsys.readouterr().err
    assert main(["eval", str(runs["la"]), "--against", str(runs["ce"]), "--reject", "coverage=0.9"]) == 2
    called = []
    with pytest.raises(DataError, match="cannot pair"):
        compare_runs(load_run(runs["ce"]), load_run(runs["other"]), lambda folder: called.append(folder))
    assert called == []  # nothing is re-scored when the records already disagree


def test_report_pairs_only_when_asked(runs, tmp_path, capsys):
    folders = [str(runs[k]) for k in ("ce", "la", "other")]
    assert main(["report", *folders, "--out", str(tmp_path / "plain.html")]) == 0
    assert "Paired differences" not in (tmp_path / "plain.html").read_text()
    assert main(["report", *folders, "--paired", "--bootstrap", "200", "--out", str(tmp_path / "p.html")]) == 0
    page = (tmp_path / "p.html").read_text()
    section = page[page.index("<h2>Paired differences</h2>"):]
    assert "On the same 180 test images" in section and "class_mean" in section
    assert re.search(r"<td>(better|worse|equal within noise)</td>", section)
    assert "Not paired: cannot pair" in section and "test data differ" in section
    capsys.readouterr()
    assert main(["report", folders[0], "--paired"]) == 2


# ------------------------------------------------------------------ labels (issue 22 item 8)


def test_labels_name_every_differing_key(runs):
    # method and loss differ: not just 'probe linear' vs 'probe cosine' (the old labels)
    labels = run_labels([load_run(runs["ce"]), load_run(runs["cos"])])
    assert labels == ["probe linear: loss=ce", "probe cosine: loss=la"]
    labels = run_labels([load_run(runs[k]) for k in ("ce", "cos", "la")])
    assert labels == ["probe linear: loss=ce", "probe cosine: loss=la", "probe linear: loss=la"]
    assert run_labels([load_run(runs["ce"]), load_run(runs["la"])]) == ["loss=ce", "loss=la"]


def test_labels_leave_out_unset_defaults():
    def run(folder, **probe):
        return {"folder": folder, "config": {"kind": "probe", "probe": {"method": "linear", "loss": "la", **probe}}}

    plain = run("p", posthoc_tau=None, loss_options={}, calibrate=None)
    tuned = run("t", posthoc_tau=1.0, loss_options={"tau": 0.5})  # calibrate missing: None in both
    labels = run_labels([plain, tuned])
    assert labels == ["probe linear", "posthoc_tau=1.0, loss_options.tau=0.5"]
    assert not any("None" in label or "calibrate" in label for label in labels)
    # unset vs a value still tells two runs apart when nothing else does
    labels = run_labels([plain, tuned, run("u", posthoc_tau=1.0, loss_options={"tau": 0.5}, calibrate="temperature")])
    assert len(set(labels)) == 3 and "calibrate=temperature" in labels[2]


def test_bootstrap_interval_covers_the_true_difference_at_about_the_nominal_rate():
    """Simulation (issue 25): 300 test sets drawn from known per-class accuracies of two correlated
    models; the 95 % paired bootstrap interval covers the true balanced-accuracy difference in about
    95 % of them (binomial SE of the rate ~1.3 points at 300 draws)."""
    from longtail.eval.paired import paired_bootstrap

    rng = np.random.default_rng(0)
    classes, per_class = 6, 40
    p_a = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    p_b = np.array([0.85, 0.85, 0.75, 0.55, 0.6, 0.5])
    truth = float(np.mean(p_b - p_a))
    labels = np.repeat(np.arange(classes), per_class)
    covered = 0
    for _ in range(300):
        shared = rng.random(labels.size)  # one draw for both: the models agree on most images
        a_right = shared < p_a[labels]
        b_right = np.where(rng.random(labels.size) < 0.7, shared < p_b[labels], rng.random(labels.size) < p_b[labels])
        pred_a = np.where(a_right, labels, (labels + 1) % classes)
        pred_b = np.where(b_right, labels, (labels + 1) % classes)
        ci = paired_bootstrap(pred_a, pred_b, labels, classes, n_boot=400, seed=int(rng.integers(1 << 30)))
        covered += ci["low"] <= truth <= ci["high"]
    assert 0.90 <= covered / 300 <= 0.99
