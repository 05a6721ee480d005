"""Label-shift correction for deployment (docs/methods.md §13.1–13.4).

A classifier trained on a long-tailed set learns p_s(y|x) under the training ("source")
prior p_s(y). When only the class prior changes at deployment (label shift: p(x|y) is the
same), the Bayes posterior under a target prior q is p_s(y|x) q_y / p_s(y), renormalised; in
logit space: z_y + log q_y - log p_s(y). This module corrects logits for a known target prior
(`correct_logits`, read from a file by `read_prior_file`) and estimates an unknown one from
unlabelled test data: EM on calibrated posteriors (`em_prior`, Saerens et al. 2002) or
black-box shift estimation from hard predictions (`bbse_prior`, Lipton et al. 2018).
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from longtail.errors import DataError

PRIOR_FLOOR = 1e-12  # a zero prior weight becomes this, so log q stays finite (§13.1)
ILL_CONDITIONED = 1e3  # BBSE: confusion matrices with a larger condition number are flagged


def check_prior(prior: Any, num_classes: int | None = None, name: str = "prior") -> np.ndarray:
    """A class prior as a normalised float64 (C,) vector, each entry at least PRIOR_FLOOR.

    Accepts unnormalised non-negative weights (counts, percentages); raises DataError on a
    wrong shape, a NaN / infinite / negative entry or an all-zero vector."""
    p = np.asarray(prior, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise DataError(f"{name} must be a non-empty 1-D vector of class weights, got shape {p.shape}")
    if num_classes is not None and p.size != num_classes:
        raise DataError(f"{name} has {p.size} entries, the model has {num_classes} classes")
    if not np.isfinite(p).all():
        raise DataError(f"{name} has a NaN or infinite entry (class {int(np.flatnonzero(~np.isfinite(p))[0])})")
    if (p < 0).any():
        raise DataError(f"{name} has a negative entry (class {int(np.flatnonzero(p < 0)[0])})")
    if p.sum() <= 0:
        raise DataError(f"{name} is all zero")
    p = np.maximum(p / p.sum(), PRIOR_FLOOR)
    return p / p.sum()


def prior_from_counts(counts: Any) -> np.ndarray:
    """The empirical prior n_c / N of per-class counts (e.g. the training counts = source prior)."""
    return check_prior(counts, name="class counts")


def correct_logits(logits: Any, target_prior: Any, source_prior: Any) -> np.ndarray:
    """Logits for the target prior: z + log q - log p_s, per class (§13.1).

    `logits` is (N, C) or (C,); both priors are (C,) weights, normalised here. A zero weight
    is clipped to PRIOR_FLOOR (1e-12, i.e. -27.6 in logit space) rather than -inf, so the
    class becomes very unlikely but its scores stay finite and ordered."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim not in (1, 2) or z.shape[-1] == 0:
        raise DataError(f"logits must be (N, C) or (C,), got shape {z.shape}")
    if not np.isfinite(z).all():
        raise DataError("logits contain NaN or infinite values")
    c = z.shape[-1]
    q = check_prior(target_prior, c, "target prior")
    p = check_prior(source_prior, c, "source prior")
    return z + (np.log(q) - np.log(p))


def _check_probs(probs: Any) -> np.ndarray:
    """(N, C) posteriors: finite, non-negative, rows summing to 1 (within 1e-3), renormalised."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise DataError(f"probs must be a non-empty (N, C) array of posteriors, got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise DataError("probs must be finite and non-negative (pass softmax probabilities, not logits)")
    sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-3)
    if bad.size:
        raise DataError(f"probs row {int(bad[0])} sums to {sums[bad[0]]:.4g}, not 1 (pass softmax probabilities)")
    return p / sums[:, None]


def em_prior(probs: Any, source_prior: Any, max_iter: int = 1000, tol: float = 1e-8) -> tuple[np.ndarray, dict]:
    """Maximum-likelihood target prior of unlabelled data by EM (Saerens et al. 2002; §13.2).

    `probs` (N, C) are calibrated posteriors p_s(y|x_i) under `source_prior`. Start at
    q = p_s; E step: p'(y|x_i) ∝ p_s(y|x_i) q_y / p_s(y); M step: q = mean_i p'(y|x_i); stop when
    the L1 change of q is below `tol`. info: iterations, converged, log_likelihood (sum_i
    log sum_y p_s(y|x_i) q_y / p_s(y): the test log-likelihood under q minus that under p_s)."""
    p = _check_probs(probs)
    src = check_prior(source_prior, p.shape[1], "source prior")
    if max_iter < 1 or not tol > 0:
        raise DataError(f"em_prior needs max_iter >= 1 and tol > 0, got {max_iter} and {tol}")
    ratio = p / src  # p_s(y|x) / p_s(y): fixed, so each step is one matrix-vector product
    q = src.copy()
    converged = False
    iterations = 0
    while iterations < max_iter and not converged:
        joint = ratio * q
        new = (joint / joint.sum(axis=1, keepdims=True)).mean(axis=0)
        converged = float(np.abs(new - q).sum()) < tol
        q = new
        iterations += 1
    ll = float(np.log(ratio @ q).sum())
    return q, {"iterations": iterations, "converged": converged, "log_likelihood": ll}


def bbse_prior(
    test_pred: Any,
    val_pred: Any,
    val_labels: Any,
    num_classes: int,
    source_prior: Any | None = None,
) -> tuple[np.ndarray, dict]:
    """Target prior from hard predictions by black-box shift estimation (Lipton et al. 2018; §13.3).

    C[i, j] = P_val(pred = i, y = j) (joint, on labelled validation data), mu[i] = P_test(pred = i);
    w = C^-1 mu (least squares, so a singular C still gives an answer), clipped at 0; the
    target prior is q_j = w_j p_val(y = j), renormalised. The validation set's own label
    distribution p_val is the "source" here (uniform for a balanced validation set). q does
    not depend on p_val (C = K diag(p_val) with K the conditional confusion); `source_prior`
    (e.g. the training prior) only sets the reported importance weights q / source_prior.
    info: condition_number, ill_conditioned (> 1e3, also a warning), weights, clipped."""
    test_pred = _labels(test_pred, num_classes, "test predictions")
    val_pred = _labels(val_pred, num_classes, "validation predictions")
    val_labels = _labels(val_labels, num_classes, "validation labels")
    if val_pred.shape != val_labels.shape:
        raise DataError(f"{val_pred.size} validation predictions for {val_labels.size} validation labels")
    n_val = np.bincount(val_labels, minlength=num_classes)
    missing = np.flatnonzero(n_val == 0)
    if missing.size:
        raise DataError(f"BBSE needs validation samples of every class; none of class {int(missing[0])}"
                        + (f" and {missing.size - 1} more" if missing.size > 1 else ""))
    joint = np.zeros((num_classes, num_classes))
    np.add.at(joint, (val_pred, val_labels), 1.0)
    joint /= val_labels.size
    mu = np.bincount(test_pred, minlength=num_classes) / test_pred.size
    cond = float(np.linalg.cond(joint))
    w, *_ = np.linalg.lstsq(joint, mu, rcond=None)
    clipped = int((w < 0).sum())
    w = np.maximum(w, 0.0)
    p_val = n_val / n_val.sum()
    q = w * p_val
    if q.sum() <= 0:
        raise DataError("BBSE found no positive class weight (test predictions unlike any validation class)")
    q = q / q.sum()
    ill = not np.isfinite(cond) or cond > ILL_CONDITIONED
    if ill:
        warnings.warn(f"BBSE confusion matrix is ill-conditioned (condition number {cond:.3g}); "
                      "the estimated prior may be unreliable", stacklevel=2)
    ref = p_val if source_prior is None else check_prior(source_prior, num_classes, "source prior")
    return q, {
        "condition_number": cond,
        "ill_conditioned": bool(ill),
        "weights": (q / ref).tolist(),
        "clipped": clipped,
        "n_val": int(val_labels.size),
        "n_test": int(test_pred.size),
    }


def _labels(x: Any, num_classes: int, name: str) -> np.ndarray:
    """Non-empty 1-D integer class indices in [0, num_classes)."""
    a = np.asarray(x)
    if a.ndim != 1 or a.size == 0:
        raise DataError(f"{name} must be a non-empty 1-D array of class indices, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        if not np.issubdtype(a.dtype, np.floating) or not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise DataError(f"{name} must be integer class indices")
        a = a.astype(np.int64)
    if a.min() < 0 or a.max() >= num_classes:
        raise DataError(f"{name} has class index {int(a.min() if a.min() < 0 else a.max())} "
                        f"outside 0..{num_classes - 1}")
    return a.astype(np.int64)


def read_prior_file(path: str | Path, class_names: list[str]) -> np.ndarray:
    """The normalised target prior in a CSV of `class,weight` rows (a header row is optional).

    Every class of `class_names` must appear exactly once, by name; weights are non-negative
    numbers in any scale (counts, percentages). Raises DataError naming the first problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"cannot read prior file {path}: {exc.strerror or exc}") from None
    rows = [r for r in csv.reader(text.splitlines()) if r and any(f.strip() for f in r)]
    index = {name: i for i, name in enumerate(class_names)}
    if rows and len(rows[0]) == 2 and _number(rows[0][1]) is None and rows[0][0].strip() not in index:
        rows = rows[1:]  # header
    if not rows:
        raise DataError(f"prior file {path} has no class,weight rows")
    weights = np.full(len(class_names), np.nan)
    for line, row in enumerate(rows, start=1):
        if len(row) != 2:
            raise DataError(f"prior file {path}: row {line} has {len(row)} fields, expected class,weight")
        name, value = row[0].strip(), _number(row[1])
        if name not in index:
            raise DataError(f"prior file {path}: unknown class {name!r}")
        if value is None or not np.isfinite(value) or value < 0:
            raise DataError(f"prior file {path}: class {name!r} has weight {row[1].strip()!r}, "
                            "expected a finite number >= 0")
        if not np.isnan(weights[index[name]]):
            raise DataError(f"prior file {path}: class {name!r} is listed twice")
        weights[index[name]] = value
    missing = [class_names[i] for i in np.flatnonzero(np.isnan(weights))]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataError(f"prior file {path}: class {missing[0]!r}{more} missing (list every class)")
    if weights.sum() <= 0:
        raise DataError(f"prior file {path}: all weights are zero")
    return check_prior(weights, len(class_names), f"prior file {path}")


def _number(text: str) -> float | None:
    """The float in a CSV field, None when it is not a number."""
    try:
        return float(text.strip())
    except ValueError:
        return None
