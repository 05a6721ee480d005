"""Long-tail evaluation metrics (docs/methods.md §7.6): accuracy, class means, shot groups, F1, ECE,
and where the errors go (per-class precision / recall / F1, confused pairs: `eval.confusion`).

Classes with no test samples are left out of every class mean (listed under
`absent_test_classes`); groups with no evaluated class are reported as None, never 0 or NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import softmax
from sklearn.metrics import f1_score

from longtail.data.stats import GROUPS, class_stats
from longtail.errors import DataError
from longtail.eval.confusion import failure_metrics
from longtail.eval.selective import selective_metrics


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy per class with NaN where a class has no test sample, test count per class)."""
    n_test = np.bincount(labels, minlength=num_classes)
    correct = np.bincount(labels, weights=(pred == labels), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return correct / n_test, n_test


def balanced_accuracy(logits_or_pred: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> float:
    """Mean per-class accuracy over classes present in `labels` (argmax when given logits)."""
    x = np.asarray(logits_or_pred)
    pred = x.argmax(axis=1) if x.ndim == 2 else x
    num_classes = num_classes or (x.shape[1] if x.ndim == 2 else int(max(pred.max(), labels.max())) + 1)
    return balanced_accuracy_se(pred, np.asarray(labels), num_classes)[0]


def balanced_accuracy_se(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[float, float]:
    """(balanced accuracy of predicted labels, its binomial standard error) over the classes
    present in `labels`: SE = sqrt(sum_c p_c (1 - p_c) / n_c) / C_present (classes independent)."""
    acc, n_test = per_class_accuracy(pred, labels, num_classes)
    present = n_test > 0
    p, n = acc[present], n_test[present]
    return float(p.mean()), float(np.sqrt(np.sum(p * (1.0 - p) / n)) / p.size)


def _hmean(a: np.ndarray) -> float:
    """Harmonic mean; 0 when any entry is 0 (its limit)."""
    return 0.0 if (a == 0).any() else float(a.size / np.sum(1.0 / a))


def _gmean(a: np.ndarray) -> float:
    """Geometric mean via logs; 0 when any entry is 0."""
    return 0.0 if (a == 0).any() else float(np.exp(np.mean(np.log(a))))


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> dict[str, Any]:
    """Equal-width confidence bins, index min(floor(conf * M), M - 1), and the ECE over them.

    Written by hand (not torchmetrics) because the report needs the per-bin figures too.
    """
    idx = np.minimum(np.floor(confidence * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct.astype(np.float64), minlength=n_bins)
    nonempty = counts > 0
    conf = np.where(nonempty, conf_sum / np.maximum(counts, 1), np.nan)
    acc = np.where(nonempty, acc_sum / np.maximum(counts, 1), np.nan)
    ece = float(np.sum(counts[nonempty] / counts.sum() * np.abs(acc - conf)[nonempty]))

    def listed(v: np.ndarray) -> list[float | None]:
        return [None if np.isnan(x) else float(x) for x in v]

    return {
        "ece": ece,
        "edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "confidence": listed(conf),
        "accuracy": listed(acc),
        "count": counts.tolist(),
    }


def _check(logits: np.ndarray, labels: np.ndarray, train_counts: np.ndarray) -> None:
    if logits.ndim != 2:
        raise DataError(f"logits must be a 2-D array (N x C), got shape {logits.shape}")
    if labels.shape != (logits.shape[0],):
        raise DataError(f"labels must have shape ({logits.shape[0]},), got {labels.shape}")
    if train_counts.shape != (logits.shape[1],):
        raise DataError(
            f"train_counts has {train_counts.size} classes, logits have {logits.shape[1]}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise DataError(f"test label out of range for {logits.shape[1]} classes")
    if not np.all(np.isfinite(logits)):
        raise DataError("logits contain NaN or inf")


def evaluate(
    logits: np.ndarray,
    labels: np.ndarray,
    train_counts: np.ndarray,
    group_counts: np.ndarray | None = None,
    n_bins: int = 15,
    class_names: list[str] | None = None,
    many_threshold: int | None = None,
    few_threshold: int | None = None,
) -> dict[str, Any]:
    """All metrics of one prediction run as a JSON-ready dict; fractions in [0, 1]."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    train_counts = np.asarray(train_counts)
    _check(logits, labels, train_counts)
    num_classes = logits.shape[1]
    thresholds = {k: v for k, v in (("many_threshold", many_threshold), ("few_threshold", few_threshold)) if v is not None}
    stats = class_stats(train_counts, class_names, group_counts=group_counts, **thresholds)
    names = list(stats.class_names)

    pred = logits.argmax(axis=1)
    acc, n_test = per_class_accuracy(pred, labels, num_classes)
    present = n_test > 0
    if not present.any():
        raise DataError("the test set holds no samples")
    accs = acc[present]

    groups = {}
    for g in GROUPS:
        member = present & (stats.groups == g)
        groups[g] = float(acc[member].mean()) if member.any() else None

    probs = softmax(logits, axis=1)
    confidence = probs[np.arange(labels.size), pred]
    reliability = reliability_bins(confidence, pred == labels, n_bins)
    ece = reliability.pop("ece")
    # abstaining on the least confident (max softmax): risk-coverage curve, AURC (docs/methods.md §13)
    selective = selective_metrics(logits, labels, np.asarray(stats.groups), score=confidence)

    return {
        "all": float(np.mean(pred == labels)),
        "class_mean": float(accs.mean()),
        **groups,
        "worst_class": float(accs.min()),
        "hmean": _hmean(accs),
        "gmean": _gmean(accs),
        "macro_f1": float(
            f1_score(labels, pred, labels=np.flatnonzero(present), average="macro", zero_division=0)
        ),
        "ece": ece,
        "n_bins": int(n_bins),
        "num_test": int(labels.size),
        "num_classes": int(num_classes),
        "num_classes_evaluated": int(present.sum()),
        "absent_test_classes": [names[i] for i in np.flatnonzero(~present)],
        "group_sizes": {g: int((present & (stats.groups == g)).sum()) for g in GROUPS},
        "per_class": [
            {
                "name": names[c],
                "train_count": int(train_counts[c]),
                "group": str(stats.groups[c]),
                "n_test": int(n_test[c]),
                "accuracy": float(acc[c]) if present[c] else None,
            }
            for c in range(num_classes)
        ],
        "reliability": reliability,
        "selective": selective,
        # where the errors go (eval.confusion): per-class precision / recall / F1, confused pairs, ...
        **failure_metrics(pred, labels, confidence, np.asarray(stats.groups), names),
    }


# The one list of what a run is summarised by; the others derive from it.
# SHOT_GROUPS: accuracy overall, balanced (class mean) and per shot group: the columns of every
# comparison table, the bars of the report's group plot and the first fields of every summary line.
SHOT_GROUPS = ("all", "class_mean", "many", "medium", "few")
# a row of a comparison table (soup --eval, MonoSoup, LT-Soups' comparison.json): + the training
# set's head-tail ratio, the LT-Soups axis along which ingredients differ
COMPARISON_KEYS = (*SHOT_GROUPS, "head_tail_ratio")
# the `--json` contract of every command (`summary`)
SUMMARY_KEYS = (*SHOT_GROUPS, "worst_class", "hmean", "gmean", "macro_f1", "ece", "aurc", "fit_seconds")


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The `--json` contract of every command: all, many, medium, few, ece (+ a few more),
    fractions or None (fit_seconds in seconds, None when the metrics come from re-evaluation)."""
    flat = {**metrics, "aurc": (metrics.get("selective") or {}).get("aurc")}
    return {k: flat.get(k) for k in SUMMARY_KEYS}
