"""Reject option and selective-classification metrics (longtail.eval.selective, docs/methods.md §13.5–13.8)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import logsumexp, softmax

from longtail.errors import ConfigError, DataError
from longtail.eval.plots import risk_coverage_curves
from longtail.eval.selective import (
    accept,
    confidence,
    cosine_confidence,
    fit_thresholds,
    open_set_metrics,
    risk_coverage,
    selective_metrics,
)

GROUPS6 = np.array(["many", "many", "medium", "medium", "few", "few"])


def test_confidence_scores():
    z = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    assert confidence(z) == pytest.approx(softmax(z, axis=1).max(1))
    assert confidence(z, temperature=2.0) == pytest.approx(softmax(z / 2, axis=1).max(1))
    assert confidence(z, "energy") == pytest.approx(logsumexp(z, axis=1))
    assert confidence(z, "energy", 2.0) == pytest.approx(2 * logsumexp(z / 2, axis=1))
    with pytest.raises(ConfigError, match="msp or energy"):
        confidence(z, "entropy")
    feats = np.array([[3.0, 0.0], [1.0, 1.0]])
    protos = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert cosine_confidence(feats, protos) == pytest.approx([1.0, np.sqrt(0.5)])


def test_aurc_by_hand():
    # risks at coverage 1/4..4/4: 0/1, 1/2, 1/3, 2/4 -> AURC = (0 + 1/2 + 1/3 + 1/2) / 4 = 1/3
    # perfect order with 2 errors: 0, 0, 1/3, 2/4 -> 5/24; E-AURC = 1/3 - 5/24 = 1/8
    rc = risk_coverage([0.9, 0.8, 0.7, 0.6], [True, False, True, False])
    assert rc["coverage"] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert rc["risk"] == pytest.approx([0, 1 / 2, 1 / 3, 1 / 2])
    assert rc["aurc"] == pytest.approx(1 / 3)
    assert rc["eaurc"] == pytest.approx(1 / 8)
    # order of the input does not matter
    assert risk_coverage([0.6, 0.7, 0.8, 0.9], [False, True, False, True])["aurc"] == pytest.approx(1 / 3)


def test_aurc_ties_are_one_block():
    # two blocks: {0.9, 0.9} risk 1/2, then all four risk 1/4 -> AURC = (2 * 1/2 + 2 * 1/4) / 4
    rc = risk_coverage([0.9, 0.5, 0.9, 0.5], [True, True, False, True])
    assert rc["coverage"] == pytest.approx([0.5, 1.0])
    assert rc["risk"] == pytest.approx([0.5, 0.25])
    assert rc["aurc"] == pytest.approx(0.375)
    flat = risk_coverage(np.ones(10), np.arange(10) < 7)  # an uninformative score: AURC = error
    assert flat["aurc"] == pytest.approx(0.3)


def _val_set():
    """8 validation samples per group with distinct scores, predicted classes spread over the
    group's two classes; the many group is confident, the few group is not."""
    base = {"many": 0.9, "medium": 0.6, "few": 0.3}
    score, cls, correct = [], [], []
    for g, first in (("many", 0), ("medium", 2), ("few", 4)):
        score += list(base[g] - 0.01 * np.arange(8))
        cls += [first, first + 1] * 4
        correct += [True, True, True, False, True, False, False, False]
    return np.array(score), np.array(correct), np.array(cls)


def test_coverage_target_is_hit_in_every_group():
    score, correct, cls = _val_set()
    t = fit_thresholds(score, correct, cls, GROUPS6, coverage=0.75)
    assert t == pytest.approx([0.85, 0.85, 0.55, 0.55, 0.25, 0.25])  # 6th largest score of each group
    acc = accept(score, cls, t)
    for g in ("many", "medium", "few"):
        assert acc[GROUPS6[cls] == g].mean() == 0.75
    # one global threshold (all classes in one group) accepts the confident groups first
    t_global = fit_thresholds(score, correct, cls, np.zeros(6, int), coverage=0.75)
    acc = accept(score, cls, t_global)
    assert acc.mean() == 0.75 and acc[GROUPS6[cls] == "few"].mean() < 0.5


def test_risk_target_is_met_with_the_largest_coverage():
    score, correct, cls = _val_set()
    # errors in score order per group: T T T F T F F F -> risks 0, 0, 0, 1/4, 1/5, 2/6, 3/7, 4/8
    t = fit_thresholds(score, correct, cls, GROUPS6, risk=0.2)
    acc = accept(score, cls, t)
    for g in ("many", "medium", "few"):
        sel = GROUPS6[cls] == g
        assert acc[sel].sum() == 5  # 5 accepted: risk 1/5 <= 0.2; 6 would give 1/3
        assert (~correct[sel & acc]).mean() <= 0.2
    assert fit_thresholds(score, correct, cls, GROUPS6, risk=1.0) == pytest.approx(np.repeat([0.83, 0.53, 0.23], 2))


def test_unreachable_risk_rejects_the_whole_group():
    score, correct, cls = _val_set()
    correct = correct | (GROUPS6[cls] != "few")
    correct[GROUPS6[cls] == "few"] = False  # the few group is always wrong
    with pytest.warns(UserWarning, match="group 'few' cannot reach risk"):
        t = fit_thresholds(score, correct, cls, GROUPS6, risk=0.1)
    assert np.isinf(t[4:]).all() and np.isfinite(t[:4]).all()
    assert not accept(score, cls, t)[GROUPS6[cls] == "few"].any()


def test_per_class_shrinkage():
    score, correct, cls = _val_set()
    cls = np.where(cls == 1, 0, cls)  # class 1 (many) is never predicted: n_1 = 0
    t_group = fit_thresholds(score, correct, cls, GROUPS6, coverage=0.5)
    t_cls0 = fit_thresholds(score, correct, cls, GROUPS6, coverage=0.5, per="class", shrinkage=0.0)
    assert t_cls0[1] == t_group[1]  # no sample of class 1: its group's threshold
    # k = 0: each class's own threshold (class 2: scores 0.6, 0.58, 0.56, 0.54 -> 2nd largest)
    assert t_cls0[2] == pytest.approx(0.58) and t_cls0[3] == pytest.approx(0.57)
    big = fit_thresholds(score, correct, cls, GROUPS6, coverage=0.5, per="class", shrinkage=1e9)
    assert big == pytest.approx(t_group)
    k = 20.0  # the default: t_c = (n_c t_class + k t_group) / (n_c + k), n_2 = 4
    mid = fit_thresholds(score, correct, cls, GROUPS6, coverage=0.5, per="class")
    assert mid[2] == pytest.approx((4 * 0.58 + k * t_group[2]) / (4 + k))


def test_accept_uses_the_predicted_class():
    t = np.array([0.9, 0.1])
    assert accept([0.5, 0.5], [0, 1], t).tolist() == [False, True]
    with pytest.raises(DataError, match="outside"):
        accept([0.5], [2], t)


def test_threshold_argument_checks():
    score, correct, cls = _val_set()
    with pytest.raises(ConfigError, match="exactly one"):
        fit_thresholds(score, correct, cls, GROUPS6, coverage=0.5, risk=0.1)
    with pytest.raises(ConfigError, match="in \\(0, 1\\]"):
        fit_thresholds(score, correct, cls, GROUPS6, coverage=0.0)
    with pytest.raises(ConfigError, match="per must be"):
        fit_thresholds(score, correct, cls, GROUPS6, coverage=0.5, per="sample")
    few = GROUPS6[cls] == "few"
    with pytest.warns(UserWarning, match="no validation sample predicted in group 'few'"):
        t = fit_thresholds(score[~few], correct[~few], cls[~few], GROUPS6, coverage=0.5)
    pooled = fit_thresholds(score[~few], correct[~few], cls[~few], np.zeros(6, int), coverage=0.5)
    assert t[4:] == pytest.approx(pooled[4:])


def test_open_set_metrics_by_hand():
    # pairs (known, unknown) ranked right: 0.9 > both, 0.8 > both, 0.4 > 0.3 only -> 5 / 6
    out = open_set_metrics([0.9, 0.8, 0.4], [0.7, 0.3])
    assert out["auroc"] == pytest.approx(5 / 6)
    # TPR >= 0.95 first reached at threshold 2 (19 of 20 known); unknowns >= 2: 2.5 and 10.5
    out = open_set_metrics(np.arange(1, 21), [1.5, 2.5, 10.5, 0.5])
    assert out["fpr_at_95_tpr"] == pytest.approx(0.5)


def _long_tailed_logits(rng, per_class: int):
    """30 classes (10 many, 10 medium, 10 few); the true class's logit margin shrinks toward the
    tail, as a long-tailed model's does, so tail predictions are less confident (test accuracy
    about 100 / 96 / 67 % by group)."""
    groups = np.repeat(["many", "medium", "few"], 10)
    margin = np.repeat([5.0, 3.5, 2.5], 10)
    y = np.repeat(np.arange(30), per_class)
    z = rng.normal(size=(y.size, 30))
    z[np.arange(y.size), y] += margin[y]
    return z, y, groups


def test_per_group_thresholds_spread_rejection_evenly():
    rng = np.random.default_rng(0)
    val_z, val_y, groups = _long_tailed_logits(rng, 60)
    test_z, test_y, _ = _long_tailed_logits(rng, 60)
    s, pred = confidence(val_z), val_z.argmax(1)
    per_group = fit_thresholds(s, pred == val_y, pred, groups, coverage=0.7)
    one = fit_thresholds(s, pred == val_y, pred, np.zeros(30, int), coverage=0.7)
    m_group = selective_metrics(test_z, test_y, groups, thresholds=per_group)
    m_one = selective_metrics(test_z, test_y, groups, thresholds=one)
    for m in (m_group, m_one):
        assert m["rejection_rate"] == pytest.approx(0.3, abs=0.05)
    # by predicted group (the rule the thresholds were fitted under) every group is near 30 %
    assert m_group["rejection_rate_per_predicted_group"] == pytest.approx({"many": 0.3, "medium": 0.3, "few": 0.3},
                                                                          abs=0.05)
    # by true group (what a user of a rare class sees): within 2x of the overall rate (measured
    # 0.66-1.53x over seeds 0-4); the global threshold rejects the few group at 2.0-2.1x
    overall = m_group["rejection_rate"]
    for g, rate in m_group["rejection_rate_per_group"].items():
        assert overall / 2 <= rate <= 2 * overall, (g, rate, overall)
    few_one = m_one["rejection_rate_per_group"]["few"]
    assert few_one > 1.7 * m_one["rejection_rate"]  # the global threshold rejects the tail first
    assert few_one > 1.25 * m_group["rejection_rate_per_group"]["few"]
    assert m_one["rejection_rate_per_group"]["many"] < 0.1


def test_selective_metrics_schema_and_plot(tmp_path):
    rng = np.random.default_rng(1)
    z, y, groups = _long_tailed_logits(rng, 20)  # 600 samples: the curve is downsampled
    m = selective_metrics(z, y, groups)
    assert set(m) == {"n", "aurc", "eaurc", "error_all", "curve"}
    assert len(m["curve"]["coverage"]) <= 101 and m["curve"]["coverage"][-1] == 1.0
    assert m["curve"]["risk"][-1] == pytest.approx(m["error_all"])
    assert 0 <= m["eaurc"] <= m["aurc"] <= 1
    t = np.full(30, 0.5)
    m = selective_metrics(z, y, groups, thresholds=t)
    pred = z.argmax(1)
    acc = confidence(z) >= 0.5
    assert m["coverage"] == pytest.approx(acc.mean())
    assert m["risk"] == pytest.approx((pred != y)[acc].mean())
    assert m["error_accepted"] == pytest.approx(((pred != y) & acc).mean())
    assert m["rejection_rate_per_group"]["few"] == pytest.approx((~acc)[groups[y] == "few"].mean())
    assert set(m["rejection_rate_per_predicted_group"]) == {"many", "medium", "few"}
    json.dumps(m)  # JSON-ready
    energy = selective_metrics(z, y, groups, score=confidence(z, "energy"))
    assert energy["aurc"] != m["aurc"]
    with pytest.raises(DataError, match="group_of_class"):
        selective_metrics(z, y, groups[:5])
    png = tmp_path / "plots" / "rc.png"
    fig = risk_coverage_curves({"msp": {**m["curve"], "aurc": m["aurc"]}, "energy": energy["curve"]}, png)
    assert fig is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
