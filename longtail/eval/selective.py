"""Abstaining at deployment: confidence scores, per-group thresholds and selective-classification
metrics (docs/methods.md §13.5–13.8).

A prediction is accepted when its confidence reaches the threshold of its *predicted* class
(the true class is unknown at deployment). One global threshold rejects the tail first, since
tail classes get less confident scores; `fit_thresholds` therefore picks one threshold per shot
group (or per class, shrunk toward its group) so that each group meets the target on its own.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import logsumexp, softmax
from sklearn.metrics import roc_auc_score, roc_curve

from longtail.errors import ConfigError, DataError

CURVE_POINTS = 101  # at most this many (coverage, risk) points in a metrics dict


def _logits(logits: Any) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise DataError(f"logits must be a non-empty (N, C) array, got shape {z.shape}")
    if not np.isfinite(z).all():
        raise DataError("logits contain NaN or infinite values")
    return z


def _vector(x: Any, name: str, n: int | None = None) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1 or a.size == 0:
        raise DataError(f"{name} must be a non-empty 1-D array, got shape {a.shape}")
    if n is not None and a.size != n:
        raise DataError(f"{name} has {a.size} entries, expected {n}")
    return a


def _scores(score: Any, n: int | None = None) -> np.ndarray:
    s = _vector(score, "score", n).astype(np.float64)
    if np.isnan(s).any():
        raise DataError("score contains NaN")
    return s


def _classes(x: Any, num_classes: int, n: int, name: str) -> np.ndarray:
    a = _vector(x, name, n)
    if not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{name} must be integer class indices, got dtype {a.dtype}")
    if a.min() < 0 or a.max() >= num_classes:
        raise DataError(f"{name} has a class index outside 0..{num_classes - 1}")
    return a.astype(np.int64)


def confidence(logits: Any, kind: str = "msp", temperature: float = 1.0) -> np.ndarray:
    """Per-sample confidence, higher = more confident (§13.5).

    "msp": max softmax probability of z / T (Hendrycks & Gimpel 2017; T = 1 is the plain MSP);
    "energy": the negative free energy T logsumexp(z / T) (Liu et al. 2020)."""
    z = _logits(logits)
    if not temperature > 0 or not np.isfinite(temperature):
        raise ConfigError(f"temperature must be a positive number, got {temperature}")
    if kind == "msp":
        return softmax(z / temperature, axis=1).max(axis=1)
    if kind == "energy":
        return temperature * logsumexp(z / temperature, axis=1)
    raise ConfigError(f"unknown confidence kind {kind!r}; choose msp or energy")


def cosine_confidence(features: Any, prototypes: Any) -> np.ndarray:
    """max_c cos(f_i, prototype_c): the cosine of each feature row to its nearest prototype."""
    f = np.asarray(features, dtype=np.float64)
    p = np.asarray(prototypes, dtype=np.float64)
    if f.ndim != 2 or p.ndim != 2 or f.shape[1] != p.shape[1] or 0 in f.shape or 0 in p.shape:
        raise DataError(f"features (N, d) and prototypes (C, d) must share d, got {f.shape} and {p.shape}")
    if not (np.isfinite(f).all() and np.isfinite(p).all()):
        raise DataError("features or prototypes contain NaN or infinite values")
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    return (f @ p.T).max(axis=1)


def _threshold(score: np.ndarray, correct: np.ndarray, coverage: float | None, risk: float | None) -> float:
    """One set's threshold (accept score >= t): the k-th largest score, k = ceil(coverage n), for a
    coverage target; for a risk target the lowest tie-block score whose accepted error is <= risk
    (+inf when none is). Ties are never split: a block of equal scores is accepted or not."""
    s = np.sort(score)[::-1]
    if coverage is not None:
        k = max(1, int(np.ceil(coverage * s.size - 1e-9)))
        return float(s[k - 1])
    order = np.argsort(-score, kind="stable")
    s, wrong = score[order], ~correct[order]
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of each tie block
    err = np.cumsum(wrong)[ends] / (ends + 1)
    ok = np.flatnonzero(err <= risk + 1e-12)
    return float(s[ends[ok[-1]]]) if ok.size else float("inf")


def _finite(t: float, score: np.ndarray) -> float:
    """An infinite threshold as the smallest finite one that still rejects every score of the set."""
    return t if np.isfinite(t) else float(np.nextafter(score.max(), np.inf))


def fit_thresholds(
    score: Any,
    correct: Any,
    cls: Any,
    group_of_class: Sequence[Any],
    *,
    coverage: float | None = None,
    risk: float | None = None,
    per: str = "group",
    shrinkage: float = 20.0,
) -> np.ndarray:
    """Per-class acceptance thresholds (C,) chosen on validation data (§13.6).

    `cls` is each sample's PREDICTED class: at deployment the threshold is looked up by the
    predicted class (`accept`), so it is fitted under the same rule. `group_of_class` (C,) names
    each class's group (e.g. many / medium / few). Exactly one target: `coverage` (accept this
    share of each group) or `risk` (largest coverage whose error among accepted is <= risk in
    each group; a group that cannot reach it gets +inf: all rejected, with a warning).
    per="group": each class gets its group's threshold. per="class": t_c = (n_c t_class +
    k t_group) / (n_c + k), k = `shrinkage`, n_c = validation samples predicted as c (an
    infinite t enters as just above the set's highest score). A group with no validation
    sample falls back to the threshold of all samples pooled."""
    if (coverage is None) == (risk is None):
        raise ConfigError("give exactly one of coverage or risk")
    target = coverage if coverage is not None else risk
    if not 0 < target <= 1:
        raise ConfigError(f"{'coverage' if coverage is not None else 'risk'} must be in (0, 1], got {target}")
    if per not in ("group", "class"):
        raise ConfigError(f"per must be 'group' or 'class', got {per!r}")
    if not shrinkage >= 0:
        raise ConfigError(f"shrinkage must be >= 0, got {shrinkage}")
    s = _scores(score)
    ok = _vector(correct, "correct", s.size).astype(bool)
    group_of_class = np.asarray(group_of_class)
    num_classes = group_of_class.size
    c = _classes(cls, num_classes, s.size, "cls (predicted class)")
    names, group_idx = np.unique(group_of_class, return_inverse=True)
    sample_group = group_idx[c]
    pooled = _threshold(s, ok, coverage, risk)
    t_group = np.full(names.size, pooled)
    for g in range(names.size):  # loops over groups / classes, never over samples
        sel = sample_group == g
        if sel.any():
            t_group[g] = _threshold(s[sel], ok[sel], coverage, risk)
        elif (group_idx == g).any():
            warnings.warn(f"no validation sample predicted in group {str(names[g])!r}; using the pooled threshold",
                          stacklevel=2)
    for g in np.flatnonzero(np.isinf(t_group)):
        warnings.warn(f"group {str(names[g])!r} cannot reach risk {risk} on validation: all its predictions rejected",
                      stacklevel=2)
    thresholds = t_group[group_idx]
    if per == "class":
        n_c = np.bincount(c, minlength=num_classes)
        for k in np.flatnonzero(n_c):
            sel = c == k
            grp = sample_group == group_idx[k]
            t_cls = _finite(_threshold(s[sel], ok[sel], coverage, risk), s[sel])
            t_grp = _finite(t_group[group_idx[k]], s[grp])
            thresholds[k] = (n_c[k] * t_cls + shrinkage * t_grp) / (n_c[k] + shrinkage)
    return thresholds


def accept(score: Any, pred: Any, thresholds: Any) -> np.ndarray:
    """Boolean mask: score_i >= thresholds[pred_i], the threshold of the PREDICTED class."""
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 1 or t.size == 0 or np.isnan(t).any():
        raise DataError(f"thresholds must be a (C,) vector without NaN, got shape {t.shape}")
    s = _scores(score)
    return s >= t[_classes(pred, t.size, s.size, "pred")]


def risk_coverage(score: Any, correct: Any) -> dict[str, Any]:
    """Risk-coverage curve and AURC / E-AURC (Geifman & El-Yaniv 2017; Geifman et al. 2019; §13.7).

    Samples sorted by descending score; equal scores form one block (accepted together), and
    the curve has one point per block: coverage = accepted / N, risk = error among accepted,
    threshold = the block's score. AURC = (1/N) sum over the N sorted positions of the risk, a
    position inside a tie block taking the block's risk (without ties: the usual AURC).
    E-AURC = AURC - the AURC of a perfect ordering with the same number of errors."""
    s = _scores(score)
    wrong = ~_vector(correct, "correct", s.size).astype(bool)
    n = s.size
    order = np.argsort(-s, kind="stable")
    s, wrong = s[order], wrong[order]
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    accepted = ends + 1
    risk = np.cumsum(wrong)[ends] / accepted
    sizes = np.diff(np.r_[0, accepted])
    aurc = float(np.sum(sizes * risk) / n)
    e = int(wrong.sum())
    i = np.arange(n - e + 1, n + 1)
    optimal = float(np.sum((i - (n - e)) / i) / n)
    return {"coverage": accepted / n, "risk": risk, "threshold": s[ends], "aurc": aurc,
            "eaurc": aurc - optimal, "aurc_optimal": optimal}


def _downsample(coverage: np.ndarray, risk: np.ndarray, points: int = CURVE_POINTS) -> dict[str, list[float]]:
    """At most `points` curve points: the first point reaching each coverage 0, 1/(points-1), ..., 1."""
    if coverage.size > points:
        idx = np.unique(np.searchsorted(coverage, np.linspace(0.0, 1.0, points) - 1e-12))
        idx = idx[idx < coverage.size]
        coverage, risk = coverage[idx], risk[idx]
    return {"coverage": [float(x) for x in coverage], "risk": [float(x) for x in risk]}


def _rate(mask: np.ndarray, sel: np.ndarray) -> float | None:
    return float(mask[sel].mean()) if sel.any() else None


def selective_metrics(
    logits: Any,
    labels: Any,
    group_of_class: Sequence[Any],
    groups: Sequence[str] = ("many", "medium", "few"),
    thresholds: Any | None = None,
    *,
    score: Any | None = None,
) -> dict[str, Any]:
    """JSON-ready selective-classification metrics of one evaluation (§13.8).

    `score` defaults to the MSP of `logits`; pass `confidence(logits, "energy")` or another score
    to evaluate that (the thresholds must be on the same scale). With `thresholds` (C,), also
    the operating point: coverage, risk (error among accepted), error_accepted (share of all
    samples accepted and wrong), error_all (error without rejection) and rejection rates per
    group of the TRUE class and of the predicted class (None for a group with no sample)."""
    z = _logits(logits)
    n, num_classes = z.shape
    y = _classes(labels, num_classes, n, "labels")
    group_of_class = np.asarray(group_of_class)
    if group_of_class.shape != (num_classes,):
        raise DataError(f"group_of_class has {group_of_class.size} entries, the logits have {num_classes} classes")
    s = confidence(z) if score is None else _scores(score, n)
    pred = z.argmax(axis=1)
    correct = pred == y
    rc = risk_coverage(s, correct)
    out: dict[str, Any] = {"n": int(n), "aurc": rc["aurc"], "eaurc": rc["eaurc"],
                           "error_all": float(1.0 - correct.mean()),
                           "curve": _downsample(rc["coverage"], rc["risk"])}
    if thresholds is None:
        return out
    acc = accept(s, pred, thresholds)
    rejected = ~acc
    out.update({
        "coverage": float(acc.mean()),
        "risk": float((~correct[acc]).mean()) if acc.any() else None,
        "error_accepted": float((acc & ~correct).mean()),
        "rejection_rate": float(rejected.mean()),
        "rejection_rate_per_group": {g: _rate(rejected, group_of_class[y] == g) for g in groups},
        "rejection_rate_per_predicted_group": {g: _rate(rejected, group_of_class[pred] == g) for g in groups},
    })
    return out


def open_set_metrics(score_known: Any, score_unknown: Any) -> dict[str, float]:
    """Separation of known-class from unknown inputs by a confidence score (known = positive):
    AUROC, and the FPR at the first ROC threshold whose TPR is >= 0.95 (§13.8)."""
    k = _scores(score_known)
    u = _scores(score_unknown)
    y = np.r_[np.ones(k.size), np.zeros(u.size)]
    s = np.r_[k, u]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {"auroc": float(roc_auc_score(y, s)), "fpr_at_95_tpr": float(fpr[np.argmax(tpr >= 0.95 - 1e-12)])}
