"""evaluate(): every metric on a hand-computed case, ECE binning, empty groups, absent classes."""

import numpy as np
import pytest

from longtail.errors import DataError
from longtail.eval.metrics import (
    SUMMARY_KEYS,
    balanced_accuracy,
    evaluate,
    reliability_bins,
    summary,
)

# 4 classes; train counts -> groups many, medium, few, few. Class 2 has no test sample.
TRAIN_COUNTS = np.array([150, 50, 10, 5])
PROBS = np.array([
    [0.9, 0.04, 0.03, 0.03],  # y=0 pred 0 conf .9
    [0.6, 0.3, 0.05, 0.05],  # y=0 pred 0 conf .6
    [0.2, 0.7, 0.05, 0.05],  # y=0 pred 1 conf .7 (wrong)
    [0.1, 0.8, 0.05, 0.05],  # y=1 pred 1 conf .8
    [0.5, 0.4, 0.05, 0.05],  # y=1 pred 0 conf .5 (wrong)
    [0.1, 0.1, 0.1, 0.7],  # y=3 pred 3 conf .7
])
LABELS = np.array([0, 0, 0, 1, 1, 3])
# Per-row constants do not change the softmax.
LOGITS = np.log(PROBS) + np.arange(6)[:, None] * 3.0


def test_hand_computed_case():
    m = evaluate(LOGITS, LABELS, TRAIN_COUNTS, class_names=["a", "b", "c", "d"])
    assert m["all"] == pytest.approx(4 / 6)
    assert m["class_mean"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["many"] == pytest.approx(2 / 3)
    assert m["medium"] == pytest.approx(1 / 2)
    assert m["few"] == pytest.approx(1.0)  # class c (few) is absent: only d counts
    assert m["worst_class"] == pytest.approx(0.5)
    assert m["hmean"] == pytest.approx(3 / (1.5 + 2 + 1))
    assert m["gmean"] == pytest.approx((2 / 3 * 1 / 2 * 1) ** (1 / 3))
    # F1: class a 2TP 1FP 1FN -> 2/3; class b 1TP 1FP 1FN -> 1/2; class d -> 1
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # bins (M=15): .9->13, .6->9, .7->10 (x2: one right, one wrong), .8->12, .5->7
    assert m["ece"] == pytest.approx((0.1 + 0.4 + 2 * 0.2 + 0.2 + 0.5) / 6)
    assert m["n_bins"] == 15
    assert m["absent_test_classes"] == ["c"]
    assert m["num_classes_evaluated"] == 3
    per_class = {row["name"]: row for row in m["per_class"]}
    assert per_class["c"] == {"name": "c", "train_count": 10, "group": "few", "n_test": 0, "accuracy": None}
    assert per_class["b"]["accuracy"] == pytest.approx(0.5) and per_class["b"]["group"] == "medium"
    rel = m["reliability"]
    assert rel["count"][10] == 2 and rel["accuracy"][10] == pytest.approx(0.5)
    assert rel["confidence"][10] == pytest.approx(0.7) and rel["confidence"][0] is None
    assert sum(rel["count"]) == 6 and len(rel["edges"]) == 16


def test_empty_groups_are_none_and_group_counts():
    m = evaluate(LOGITS, LABELS, np.array([500, 400, 300, 200]))
    assert m["many"] == pytest.approx(m["class_mean"])
    assert m["medium"] is None and m["few"] is None
    # groups from other counts (LIFT's rule for CIFAR): all classes "few"
    m = evaluate(LOGITS, LABELS, np.array([500, 400, 300, 200]), group_counts=np.array([1, 1, 1, 1]))
    assert m["many"] is None and m["few"] == pytest.approx(m["class_mean"])


def test_group_with_only_absent_classes_is_none():
    counts = np.array([150, 150, 10, 150])  # class 2 is the only few-shot class and has no test sample
    assert evaluate(LOGITS, LABELS, counts)["few"] is None


def test_zero_accuracy_class_gives_zero_means():
    labels = np.array([0, 0, 0, 1, 1, 2])  # class 2 never predicted
    m = evaluate(LOGITS, labels, TRAIN_COUNTS)
    assert m["worst_class"] == 0.0 and m["hmean"] == 0.0 and m["gmean"] == 0.0


def test_ece_bin_index_edges():
    conf = np.array([1.0, 0.0, 14.5 / 15, 0.5])
    rel = reliability_bins(conf, np.array([True, False, True, False]), n_bins=15)
    assert rel["count"][14] == 2 and rel["count"][0] == 1 and rel["count"][7] == 1
    assert rel["ece"] == pytest.approx((0.0 + 0.0 + (1 - 14.5 / 15) + 0.5) / 4)
    rel10 = reliability_bins(conf, np.array([True, False, True, False]), n_bins=10)
    assert len(rel10["count"]) == 10 and rel10["count"][9] == 2


def test_balanced_accuracy_matches_class_mean():
    assert balanced_accuracy(LOGITS, LABELS) == pytest.approx(evaluate(LOGITS, LABELS, TRAIN_COUNTS)["class_mean"])
    assert balanced_accuracy(LOGITS.argmax(1), LABELS, 4) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_bad_input():
    with pytest.raises(DataError, match="out of range"):
        evaluate(LOGITS, np.array([0, 0, 0, 1, 1, 4]), TRAIN_COUNTS)
    with pytest.raises(DataError, match="train_counts"):
        evaluate(LOGITS, LABELS, TRAIN_COUNTS[:3])
    bad = LOGITS.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        evaluate(bad, LABELS, TRAIN_COUNTS)


def test_summary_is_the_json_contract():
    m = evaluate(LOGITS, LABELS, TRAIN_COUNTS) | {"fit_seconds": 1.5}
    out = summary(m)
    assert tuple(out) == SUMMARY_KEYS and out["all"] == m["all"] and out["fit_seconds"] == 1.5
    assert "per_class" not in out and "reliability" not in out
    assert summary({"all": 0.5})["few"] is None  # a metric the run lacks is null, never missing
