"""Where the errors go: per-class precision / recall / F1, the most-confused class pairs, the
confusion matrix of small label sets, the shot-group flow of errors and a capped list of the
tail's misclassified test images (what the report's failure views draw).

Everything is computed from predicted labels with bincounts and a sparse count of the errors
(`np.unique` over `true * C + pred` of the misclassified images only), never a dense C x C
matrix except for C <= DENSE_MAX: at iNaturalist's 8,142 classes that matrix would hold 66 M
cells, while the errors are at most the test set.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DENSE_MAX = 100  # classes up to which the full confusion matrix is stored (and drawn)
TOP_PAIRS = 20  # most-confused pairs kept (overall, and among the tail's classes)
GALLERY_MAX = 48  # misclassified tail images recorded for the report's error gallery
GALLERY_PER_CLASS = 3  # of them at most this many per true class (so one class cannot fill it)
GROUP_ORDER = ("many", "medium", "few")


def precision_recall_f1(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, list]:
    """Per-class precision, recall and F1 with scikit-learn's `precision_recall_fscore_support`
    semantics (`labels=range(C)`, `zero_division=0`): precision = TP / predicted (0 for a class
    never predicted), recall = TP / true (0 for a class without test images), F1 = 2 TP / (true +
    predicted) (0 when both are 0); plus how often each class was predicted."""
    pred, labels = np.asarray(pred, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    tp = np.bincount(labels[pred == labels], minlength=num_classes).astype(np.float64)
    n_true = np.bincount(labels, minlength=num_classes)
    n_pred = np.bincount(pred, minlength=num_classes)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros(num_classes), where=den > 0)

    return {
        "n_predicted": n_pred.tolist(),
        "precision": ratio(tp, n_pred).tolist(),
        "recall": ratio(tp, n_true).tolist(),
        "f1": ratio(2 * tp, n_true + n_pred).tolist(),
    }


def confused_pairs(pred: np.ndarray, labels: np.ndarray, num_classes: int, names: list[str],
                   top: int = TOP_PAIRS, true_mask: np.ndarray | None = None) -> list[dict[str, Any]]:
    """The `top` largest off-diagonal confusion counts (true class, predicted class), largest
    first (ties: lower class indices first), counted sparsely over the misclassified images;
    `true_mask` (C booleans) keeps only errors of those true classes. `share` is the count over
    the true class's test images."""
    pred, labels = np.asarray(pred, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    wrong = pred != labels
    if true_mask is not None:
        wrong &= np.asarray(true_mask, dtype=bool)[labels]
    codes, counts = np.unique(labels[wrong] * num_classes + pred[wrong], return_counts=True)
    order = np.lexsort((codes, -counts))[:top]
    n_true = np.bincount(labels, minlength=num_classes)
    out = []
    for code, count in zip(codes[order], counts[order]):
        t, p = divmod(int(code), num_classes)
        out.append({"true": t, "pred": p, "true_name": names[t], "pred_name": names[p],
                    "count": int(count), "share": float(count / n_true[t])})
    return out


def confusion_counts(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> list[list[int]] | None:
    """The dense C x C count matrix (rows: true class, columns: predicted) for C <= DENSE_MAX, else None."""
    if num_classes > DENSE_MAX:
        return None
    codes = np.asarray(labels, dtype=np.int64) * num_classes + np.asarray(pred, dtype=np.int64)
    return np.bincount(codes, minlength=num_classes * num_classes).reshape(num_classes, num_classes).tolist()


def error_flow(pred: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, dict[str, int]]:
    """For each shot group of the true class: its test images, how many were right, and how many
    of the wrong ones went to a class of each group (where the tail's errors go)."""
    groups = np.asarray(groups)
    true_g, pred_g = groups[labels], groups[pred]
    out: dict[str, dict[str, int]] = {}
    for g in GROUP_ORDER:
        member = true_g == g
        wrong = member & (pred != labels)
        out[g] = {"test": int(member.sum()), "correct": int((member & (pred == labels)).sum()),
                  **{f"to_{h}": int((wrong & (pred_g == h)).sum()) for h in GROUP_ORDER}}
    return out


def tail_errors(pred: np.ndarray, labels: np.ndarray, confidence: np.ndarray, groups: np.ndarray,
                cap: int = GALLERY_MAX, per_class: int = GALLERY_PER_CLASS) -> dict[str, Any]:
    """Misclassified test images of the tail for the error gallery: the few-shot group (or the
    lowest populated group when no class is few-shot), most confident mistakes first, at most
    `per_class` per true class and `cap` in all; `index` is the image's position in the test set."""
    groups = np.asarray(groups)
    present = np.unique(groups[labels]) if labels.size else np.array([])
    group = next((g for g in reversed(GROUP_ORDER) if g in present), None)
    if group is None:
        return {"group": None, "errors": 0, "shown": []}
    wrong = np.flatnonzero((pred != labels) & (groups[labels] == group))
    order = wrong[np.lexsort((wrong, -confidence[wrong]))]
    taken: dict[int, int] = {}
    shown = []
    for i in order:
        t = int(labels[i])
        if taken.get(t, 0) >= per_class:
            continue
        taken[t] = taken.get(t, 0) + 1
        shown.append({"index": int(i), "true": t, "pred": int(pred[i]), "confidence": float(confidence[i])})
        if len(shown) >= cap:
            break
    return {"group": group, "errors": int(wrong.size), "shown": shown}


def failure_metrics(pred: np.ndarray, labels: np.ndarray, confidence: np.ndarray, groups: np.ndarray,
                    names: list[str]) -> dict[str, Any]:
    """The metrics-dict keys of this module: class_scores, confused_pairs, tail_confused_pairs,
    confusion (C <= DENSE_MAX, else None), error_flow, tail_errors."""
    num_classes = len(names)
    groups = np.asarray(groups)
    tail = tail_errors(pred, labels, confidence, groups)
    tail_mask = groups == tail["group"] if tail["group"] else np.zeros(num_classes, dtype=bool)
    return {
        "class_scores": precision_recall_f1(pred, labels, num_classes),
        "confused_pairs": confused_pairs(pred, labels, num_classes, names),
        "tail_confused_pairs": confused_pairs(pred, labels, num_classes, names, true_mask=tail_mask),
        "confusion": confusion_counts(pred, labels, num_classes),
        "error_flow": error_flow(pred, labels, groups),
        "tail_errors": tail,
    }
