"""Paired comparison of two models scored on the same test images (docs/methods.md §7.7).

Two runs evaluated on the same images are not independent samples: they agree on most images,
so the unpaired yardstick (each run's own binomial SE, `metrics.balanced_accuracy_se`, added in
quadrature) is far too wide and calls real differences noise, and a difference read off two
tables without any yardstick calls noise a result. Here everything is computed from the
per-image difference d_i = [B right on i] - [A right on i] in {-1, 0, 1}:

- the difference of a class-weighted mean D = sum_c w_c dbar_c (balanced accuracy: w_c = 1/C
  over the C classes with test images; overall accuracy: w_c = n_c / N; a shot group: 1/C_g on
  its classes), dbar_c the mean of d_i over the n_c test images of class c;
- its paired standard error over images, the classes held fixed (what "scored on these test
  images" means): SE = sqrt(sum_c w_c^2 s_c^2 / n_c), s_c^2 the unbiased (n_c - 1) variance of
  d_i within class c (a class with one test image takes the pooled within-class variance); for
  balanced accuracy SE = sqrt(sum_c s_c^2 / n_c) / C;
- its between-class SE, the classes treated as a sample from a population of classes (what a
  re-run on another long tail of the same kind would vary by, image noise included):
  SE_between = sqrt(C / (C - 1) * sum_c w_c^2 (dbar_c - D)^2), for balanced accuracy
  sd(dbar_c) / sqrt(C);
- a paired bootstrap over images stratified by class (each class's n_c image pairs drawn with
  replacement; seeded, so one seed gives one answer), with a percentile confidence interval;
- a verdict, written once (`verdict`): better / worse only when |D| clears z (= 2) SE beyond a
  margin, else "equal within noise".

Pure numpy on predictions, labels and shot groups: the runs' logits come from the caller
(`commands.eval --against`, `commands.report --paired` use `methods.predictor.Predictor`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from longtail.data.stats import GROUPS
from longtail.errors import DataError

N_BOOT = 2000
LEVEL = 0.95
Z = 2.0  # standard errors a difference must clear to count (about a two-sided 95 % test)
_CHUNK = 250  # bootstrap replicates drawn per block (bounds memory; part of what a seed reproduces)
BETTER, WORSE, EQUAL = "better", "worse", "equal within noise"


def verdict(diff: float | None, se: float | None, margin: float = 0.0, z: float = Z) -> str:
    """The one rule for calling a difference B - A: "better" when diff > margin + z * se,
    "worse" when diff < -(margin + z * se), else "equal within noise" (a difference exactly on
    the boundary is noise; so is one without a finite SE). `margin` (same units as diff, e.g.
    0.005 for half a point) asks for a difference that also matters, not only one that is real."""
    if diff is None or se is None or not np.isfinite(diff) or not np.isfinite(se) or se < 0:
        return EQUAL
    bar = margin + z * se
    if diff > bar:
        return BETTER
    if diff < -bar:
        return WORSE
    return EQUAL


def _predictions(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x.argmax(axis=1) if x.ndim == 2 else x.astype(np.int64)


def _inputs(pred_a, pred_b, labels, num_classes: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(correct_a, correct_b, labels, num_classes), checked."""
    a, b = _predictions(pred_a), _predictions(pred_b)
    labels = np.asarray(labels).astype(np.int64)
    if a.shape != labels.shape or b.shape != labels.shape or labels.ndim != 1:
        raise DataError(f"paired comparison needs predictions of the same {labels.size} test images "
                        f"(got {a.shape[0] if a.ndim else a.size} and {b.shape[0] if b.ndim else b.size})")
    if labels.size == 0:
        raise DataError("the test set holds no samples")
    widths = [np.asarray(x).shape[1] for x in (pred_a, pred_b) if np.asarray(x).ndim == 2]
    num_classes = num_classes or (widths[0] if widths else int(max(labels.max(), a.max(), b.max())) + 1)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"test label out of range for {num_classes} classes")
    return a == labels, b == labels, labels, num_classes


def _per_class(d: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n_c, mean of d over class c, unbiased variance of d within class c) for every class;
    mean NaN where n_c = 0; a class with n_c = 1 takes the pooled within-class variance of the
    classes with n_c >= 2 (d_i^2, an upper bound in expectation, when there are none)."""
    n = np.bincount(labels, minlength=num_classes).astype(np.float64)
    s1 = np.bincount(labels, weights=d, minlength=num_classes)
    s2 = np.bincount(labels, weights=d * d, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / n
        var = (s2 - n * mean**2) / (n - 1)
    var = np.where(n >= 2, np.maximum(var, 0.0), np.nan)
    several = n >= 2
    if several.any():
        pooled = float(np.sum((n[several] - 1) * var[several]) / np.sum(n[several] - 1))
        var = np.where(n == 1, pooled, var)
    else:
        var = np.where(n == 1, s2, var)
    return n, mean, var


def paired_balanced_accuracy_se(pred_a: np.ndarray, pred_b: np.ndarray, labels: np.ndarray,
                                num_classes: int | None = None) -> tuple[float, float]:
    """(balanced accuracy of B minus that of A, its paired SE over images within classes):
    SE = sqrt(sum_c s_c^2 / n_c) / C over the C classes with test images (module docstring).
    Predictions, or logits (argmax)."""
    ca, cb, labels, k = _inputs(pred_a, pred_b, labels, num_classes)
    n, mean, var = _per_class(cb.astype(np.float64) - ca, labels, k)
    present = n > 0
    c = present.sum()
    return float(mean[present].mean()), float(np.sqrt(np.sum(var[present] / n[present])) / c)


def between_class_se(pred_a: np.ndarray, pred_b: np.ndarray, labels: np.ndarray,
                     num_classes: int | None = None) -> float | None:
    """The between-class SE of the balanced-accuracy difference, sd(dbar_c) / sqrt(C): the
    classes as a sample of classes (None for fewer than two classes with test images)."""
    ca, cb, labels, k = _inputs(pred_a, pred_b, labels, num_classes)
    n, mean, _ = _per_class(cb.astype(np.float64) - ca, labels, k)
    m = mean[n > 0]
    return None if m.size < 2 else float(m.std(ddof=1) / np.sqrt(m.size))


def _bootstrap(d: np.ndarray, labels: np.ndarray, num_classes: int, weights: np.ndarray,
               n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, W) replicates of weights @ dbar*: each class's image pairs resampled with
    replacement. Only how many of a class's pairs have d = -1, 0, +1 matters, so a replicate
    draws those counts (a multinomial over the class's three outcome frequencies), exactly the
    distribution of resampling its images; O(n_boot C), whatever the test-set size."""
    n = np.bincount(labels, minlength=num_classes)
    present = np.flatnonzero(n > 0)
    counts = np.stack([np.bincount(labels[d == v], minlength=num_classes)[present] for v in (-1, 0, 1)], axis=1)
    nc = n[present]
    p = counts / nc[:, None]
    w = weights[:, present]
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n_boot, _CHUNK):
        size = min(_CHUNK, n_boot - start)
        draw = rng.multinomial(nc, p, size=(size, present.size))
        dbar = (draw[..., 2] - draw[..., 0]) / nc
        out.append(dbar @ w.T)
    return np.concatenate(out, axis=0)


def paired_bootstrap(pred_a: np.ndarray, pred_b: np.ndarray, labels: np.ndarray, num_classes: int | None = None,
                     n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict[str, float]:
    """Bootstrap of the balanced-accuracy difference B - A, images resampled within each class:
    {"se": sd of the replicates, "low", "high": the percentile interval at `level`}."""
    ca, cb, labels, k = _inputs(pred_a, pred_b, labels, num_classes)
    d = cb.astype(np.int64) - ca
    n = np.bincount(labels, minlength=k)
    w = (n > 0) / (n > 0).sum()
    reps = _bootstrap(d, labels, k, w[None, :], n_boot, seed)[:, 0]
    low, high = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return {"se": float(reps.std(ddof=1)), "low": float(low), "high": float(high)}


MET, MISSED, NEAR = "met", "missed", "equal within noise"


def goal_verdict(diff: float | None, se: float | None, goal: float = 0.0, z: float = Z) -> str:
    """The one rule for a goal "B - A >= goal" (e.g. goal 0.03: three points better): "met" when
    the whole 2-SE band of the difference clears it (diff - z * se > goal), "missed" when the
    band lies below it (diff + z * se < goal), else "equal within noise" (of the goal): a goal is
    met only when the data show it, never by a difference inside the noise. The same rule as
    `verdict` applied to diff - goal."""
    said = verdict(None if diff is None else diff - goal, se, 0.0, z)
    return {BETTER: MET, WORSE: MISSED}.get(said, NEAR)


def paired_difference(pred_a: np.ndarray, pred_b: np.ndarray, labels: np.ndarray,
                      groups: Sequence[str] | np.ndarray | None = None, *, num_classes: int | None = None,
                      n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL, z: float = Z,
                      margin: float = 0.0) -> dict[str, Any]:
    """B vs A on the same test images (predictions, or logits): for overall accuracy ("all"),
    balanced accuracy ("class_mean") and each shot group of `groups` (many / medium / few of
    each class; None for a group without test images): a, b, diff = b - a, the paired SE, the
    between-class SE, the bootstrap SE and percentile interval, and the verdict on the paired SE.
    JSON-ready; fractions in [0, 1]."""
    ca, cb, labels, k = _inputs(pred_a, pred_b, labels, num_classes)
    if groups is not None and len(groups) != k:
        raise DataError(f"groups name {len(groups)} classes, the predictions {k}")
    d = cb.astype(np.int64) - ca
    n, dbar, var = _per_class(d.astype(np.float64), labels, k)
    present = n > 0
    acc_a = np.bincount(labels, weights=ca, minlength=k)
    acc_b = np.bincount(labels, weights=cb, minlength=k)
    masks = {"all": present, "class_mean": present}
    group_of = np.asarray(groups if groups is not None else [""] * k, dtype=object)
    for g in GROUPS if groups is not None else ():
        masks[g] = present & (group_of == g)
    names = [m for m in masks if masks[m].any()]
    weights = np.zeros((len(names), k))
    for row, name in enumerate(names):
        mask = masks[name]
        weights[row] = np.where(mask, n / n[mask].sum(), 0.0) if name == "all" else mask / mask.sum()
    reps = _bootstrap(d, labels, k, weights, n_boot, seed)
    lows, highs = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2], axis=0)
    out: dict[str, Any] = {g: None for g in masks}
    mean_a = np.where(present, acc_a / np.maximum(n, 1), 0.0)
    mean_b = np.where(present, acc_b / np.maximum(n, 1), 0.0)
    for row, name in enumerate(names):
        w, mask = weights[row], masks[name]
        diff = float(w[mask] @ dbar[mask])
        se = float(np.sqrt(np.sum(w[mask] ** 2 * var[mask] / n[mask])))
        c = int(mask.sum())
        between = (float(np.sqrt(c / (c - 1) * np.sum(w[mask] ** 2 * (dbar[mask] - diff) ** 2)))
                   if c >= 2 else None)
        out[name] = {"a": float(w[mask] @ mean_a[mask]), "b": float(w[mask] @ mean_b[mask]), "diff": diff,
                     "se": se, "se_between_classes": between, "bootstrap_se": float(reps[:, row].std(ddof=1)),
                     "ci": [float(lows[row]), float(highs[row])], "classes": c, "images": int(n[mask].sum()),
                     "verdict": verdict(diff, se, margin, z)}
    return {"metrics": out, "num_test": int(labels.size), "num_classes_evaluated": int(present.sum()),
            "agreement": float(np.mean(_predictions(pred_a) == _predictions(pred_b))),
            "n_boot": int(n_boot), "seed": int(seed), "level": float(level), "z": float(z), "margin": float(margin)}


# ------------------------------------------------------------------------------- saved runs


def recorded_test_fingerprint(run: dict[str, Any]) -> str | None:
    """The fingerprint of the test data a loaded run (`runs.load_run`) was scored on: the image
    dataset's (fit layout: metrics' `test_data`) or the feature file's content hash (probe)."""
    metrics, config = run.get("metrics") or {}, run.get("config") or {}
    return (metrics.get("test_data") or {}).get("fingerprint") or (
        ((config.get("fingerprints") or {}).get("test") or {}).get("sha256"))


def pairing_problem(run_a: dict[str, Any], run_b: dict[str, Any]) -> str | None:
    """Why two loaded runs cannot be compared image by image on their own test sets (different
    recorded test-data fingerprints, test-set sizes or class names), or None when they can."""
    fa, fb = recorded_test_fingerprint(run_a), recorded_test_fingerprint(run_b)
    if fa and fb and fa != fb:
        return f"their test data differ (fingerprints {str(fa)[:12]} and {str(fb)[:12]})"
    ma, mb = run_a.get("metrics") or {}, run_b.get("metrics") or {}
    if ma.get("num_test") is not None and mb.get("num_test") is not None and ma["num_test"] != mb["num_test"]:
        return f"their test sets differ in size ({ma['num_test']:,} and {mb['num_test']:,} images)"
    na = [r.get("name") for r in ma.get("per_class") or []]
    nb = [r.get("name") for r in mb.get("per_class") or []]
    if na and nb and na != nb:
        return "their classes differ (names or order)"
    return None


def check_same_images(labels_a: np.ndarray, labels_b: np.ndarray, what: str = "the two runs") -> None:
    """DataError unless both label arrays are the same (same images, same order, as far as the
    labels can tell): the last check before pairing predictions image by image."""
    if np.asarray(labels_a).shape != np.asarray(labels_b).shape or not np.array_equal(labels_a, labels_b):
        raise DataError(f"cannot pair {what}: their test labels differ (not the same images in the same order)")


def compare_runs(run_a: dict[str, Any], run_b: dict[str, Any],
                 test_logits: Callable[[Path], tuple[np.ndarray, np.ndarray]], **options: Any) -> dict[str, Any]:
    """B vs A (loaded runs) on their own, shared test set: `test_logits(folder)` gives a run's
    (logits, labels) (the caller's loader, e.g. `Predictor.from_run(folder).test()`), called only
    after the saved records agree; shot groups from B's saved per-class table. DataError when the
    runs cannot be paired."""
    problem = pairing_problem(run_a, run_b)
    if problem:
        raise DataError(f"cannot pair {run_b['folder']} with {run_a['folder']}: {problem}")
    logits_a, labels_a = test_logits(Path(run_a["folder"]))
    logits_b, labels_b = test_logits(Path(run_b["folder"]))
    check_same_images(labels_a, labels_b, f"{run_b['folder']} with {run_a['folder']}")
    per_class = (run_b.get("metrics") or {}).get("per_class") or []
    groups = [r.get("group") for r in per_class] if len(per_class) == np.asarray(logits_b).shape[1] else None
    return paired_difference(logits_a, logits_b, labels_b, groups, **options)


# ------------------------------------------------------------------------------- printing

ROWS = ("all", "class_mean", *GROUPS)


def _pct(x: float | None, sign: bool = False) -> str:
    return "n/a" if x is None else f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}"


def paired_rows(result: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
    """(metric, its entry or None) in printing order."""
    return [(name, result["metrics"].get(name)) for name in ROWS if name in result["metrics"]]


def paired_lines(result: dict[str, Any], label_b: str = "B", label_a: str = "A") -> list[str]:
    """A plain-text table of `paired_difference` (points, i.e. percent): what `eval --against` prints."""
    level = round(100 * result["level"])
    lines = [f"paired: {label_b} vs {label_a} on the same {result['num_test']:,} test images "
             f"({result['num_classes_evaluated']} classes; predictions agree on {100 * result['agreement']:.1f} %)",
             f"{'metric':<11} {'A':>7} {'B':>7} {'B-A':>7} {'SE':>6} {'SE cls':>6} {f'{level}% CI (bootstrap)':>21}  verdict"]
    for name, e in paired_rows(result):
        if e is None:
            lines.append(f"{name:<11} {'n/a':>7}")
            continue
        ci = f"[{_pct(e['ci'][0], True)}, {_pct(e['ci'][1], True)}]"
        lines.append(f"{name:<11} {_pct(e['a']):>7} {_pct(e['b']):>7} {_pct(e['diff'], True):>7} "
                     f"{_pct(e['se']):>6} {_pct(e['se_between_classes']):>6} {ci:>21}  {e['verdict']}")
    margin = f" beyond a margin of {_pct(result['margin'])}" if result["margin"] else ""
    lines.append(f"(points; SE paired over images within classes, SE cls between classes; verdict: |B-A| > "
                 f"{result['z']:g} SE{margin}; bootstrap {result['n_boot']} draws stratified by class, seed {result['seed']})")
    return lines
