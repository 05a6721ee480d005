"""What the two real-data probe benchmarks (`real_cifar10_lt.py`, `real_tiny100_lt.py`) share:
fitting their rows on the same features, repeating the stochastic ones over seeds, pairing every
row with a reference row on the same test images (`longtail.eval.paired`, docs/methods.md §7.7),
and saving their results."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from longtail.data.splits import ValRule
from longtail.eval.paired import goal_verdict, paired_difference, verdict
from longtail.methods.probe import ProbeConfig, fit_probe
from longtail.methods.probe.registry import PROBE_METHODS

# Probe methods whose fit draws random numbers (oversampling / sampling from fitted densities,
# registered with stochastic=True): their rows are repeated over SEEDS (the config's seed + 0,
# 1, 2). The L-BFGS convex fits are deterministic and fitted once.
STOCHASTIC = frozenset(name for name in PROBE_METHODS.names() if PROBE_METHODS.get(name).stochastic)
SEEDS = 3
PRED = "_pred"  # a row's per-image test predictions while the run is in memory (not saved)


# The decoupling rows of both real probe benchmarks (docs/methods.md §10), in table order.
DECOUPLING_ROWS: tuple[tuple[str, dict], ...] = (
    ("NCM (the authors' rule: centred, L2-normalised, Euclidean)", {"method": "ncm"}),
    ("NCM, cosine to class means", {"method": "ncm", "method_options": {"rule": "cosine"}}),
    ("cRT (class-balanced re-training)", {"method": "crt"}),
    ("tau-norm, CE head (tau on val)", {"method": "tau-norm"}),
    ("tau-norm, CE head (tau 0.9 fixed, the fallback without val)", {"method": "tau-norm", "method_options": {"tau": 0.9}}),
    ("tau-norm, CE head (tau on a 10 % split of train, head refitted on all)", {"method": "tau-norm"}),
    ("LWS, CE head (learnable weight scaling)", {"method": "lws"}),
)
# Rows validated on a split drawn from the LT training set (data.splits.split_features) instead of
# the validation images: tau is chosen on the split, then the head is refitted on all of train.
SPLIT_ROWS = {"tau-norm, CE head (tau on a 10 % split of train, head refitted on all)": ValRule(fraction=0.1)}


def fit_rows(configs: list[tuple[str, ProbeConfig]], train, val, test_features: np.ndarray,
             score: Callable[[str, np.ndarray, float], dict], no_val: set[str] = frozenset(),
             seeds: int = SEEDS) -> list[dict]:
    """Fit every (label, config) on `train` with validation `val` (None for the labels in `no_val`)
    and score its test logits: `score(label, logits, fit seconds)` -> the row; an auto row also
    records what it chose. A row of a STOCHASTIC method is fitted again with seeds cfg.seed + 1 ..
    seeds - 1: the row is seed cfg.seed's, plus `seed_all` (each seed's accuracy), `all_mean` and
    `all_sd` (SD over the seeds, ddof 1)."""
    results = []
    for label, cfg in configs:
        start = time.perf_counter()
        probe = fit_probe(train, cfg, None if label in no_val else val)
        logits = probe.logits(test_features)
        results.append(score(label, logits, time.perf_counter() - start))
        results[-1][PRED] = np.asarray(logits).argmax(axis=1)
        print(f"  {label}: {100 * results[-1]['all']:.2f} ({results[-1]['fit_seconds']:.1f}s)", flush=True)
        if "auto" in probe.info:
            results[-1]["auto_choice"] = probe.info["auto"].get("chosen")
            print(f"    chose {results[-1]['auto_choice']}", flush=True)
        if cfg.method in STOCHASTIC and seeds > 1:
            accs = [results[-1]["all"]]
            for s in range(1, seeds):
                other = fit_probe(train, replace(cfg, seed=cfg.seed + s), None if label in no_val else val)
                accs.append(score(label, other.logits(test_features), 0.0)["all"])
            results[-1].update(seed_all=accs, seeds=[cfg.seed + s for s in range(seeds)],
                               all_mean=float(np.mean(accs)), all_sd=float(np.std(accs, ddof=1)))
            print(f"    seeds {results[-1]['seeds']}: {100 * results[-1]['all_mean']:.2f} "
                  f"± {100 * results[-1]['all_sd']:.2f}", flush=True)
    return results


def add_paired(results: list[dict], labels: np.ndarray, reference: str, num_classes: int,
               claims: tuple[tuple[str, ...], ...] = (), groups: list[str] | None = None) -> list[dict]:
    """Every row against the row labelled `reference` on the same test images: `vs_ref` (balanced
    accuracy of the row minus the reference's), `vs_ref_se` (paired SE over images within
    classes), `vs_ref_ci` (bootstrap 95 %) and `verdict` (`longtail.eval.paired.verdict`, 2 SE).
    `claims`: further (A, B), (A, B, metric) or (A, B, metric, goal) label tuples (rows whose
    labels start with A, B; metric "class_mean" by default, or a shot group of `groups`, the
    classes' many / medium / few; goal: a target for B - A, judged by
    `longtail.eval.paired.goal_verdict`) the text compares, each paired the same way; returned
    as dicts (and printed); a claim on a shot group without test images is left out. The
    per-image predictions are dropped from the rows afterwards."""
    def find(label: str) -> dict:
        return next(r for r in results if r["method"].startswith(label))

    def pair(a: dict, b: dict, metric: str = "class_mean") -> dict | None:
        return paired_difference(a[PRED], b[PRED], labels, groups, num_classes=num_classes)["metrics"].get(metric)

    ref = find(reference)
    for r in results:
        if r is ref:
            r.update(vs_ref=None, vs_ref_se=None, vs_ref_ci=None, verdict="reference")
            continue
        m = pair(ref, r)
        r.update(vs_ref=m["diff"], vs_ref_se=m["se"], vs_ref_ci=m["ci"], verdict=m["verdict"])
    out = []
    for a, b, *rest in claims:
        metric = rest[0] if rest else "class_mean"
        goal = rest[1] if len(rest) > 1 else None
        m = pair(find(a), find(b), metric)
        if m is None:
            continue
        out.append({"a": find(a)["method"], "b": find(b)["method"], "metric": metric, "diff": m["diff"],
                    "se": m["se"], "ci": m["ci"], "verdict": verdict(m["diff"], m["se"])})
        said = ""
        if goal is not None:
            out[-1].update(goal=goal, goal_verdict=goal_verdict(m["diff"], m["se"], goal))
            said = f"; goal B - A >= {100 * goal:+.2f}: {out[-1]['goal_verdict']}"
        print(f"  {out[-1]['b']} vs {out[-1]['a']} ({metric}): {100 * m['diff']:+.2f} ± {100 * m['se']:.2f} "
              f"points (paired SE): {out[-1]['verdict']}{said}", flush=True)
    for r in results:
        r.pop(PRED, None)
    return out


def format_columns(results: list[dict]) -> None:
    """The printed cells: `all` as 'mean ± SD (3 seeds)' for seeded rows, `vs ref ± SE`."""
    for r in results:
        r["all_seeds"] = (f"{100 * r['all_mean']:.2f} ± {100 * r['all_sd']:.2f}" if "all_mean" in r else "")
        r["diff_se"] = ("(reference)" if r.get("verdict") == "reference" else
                        f"{100 * r['vs_ref']:+.2f} ± {100 * r['vs_ref_se']:.2f}" if r.get("vs_ref") is not None else "")


PAIRED_COLUMNS = (("3 seeds (mean ± SD)", "all_seeds", "s"), ("Δ vs ref ± SE", "diff_se", "s"),
                  ("verdict", "verdict", "s"))


def save_results(out: str | Path, info: dict, table: str) -> Path:
    """The results JSON at `out` and the markdown table beside it (.md)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=2, default=str))
    out.with_suffix(".md").write_text(table + "\n")
    return out


def fit_in_order(configs, lt, val, test_features, split_rows: dict, no_val_rows, score) -> list[dict]:
    """`fit_rows` row by row, in order; a `split_rows` row validates on its split of `lt` (its
    `ValRule`) instead of `val`, a `no_val_rows` row is fitted without `val`."""
    from longtail.data.splits import split_features

    results = []
    for label, cfg in configs:
        if label in split_rows:
            part, held, _ = split_features(lt, split_rows[label])
            results += fit_rows([(label, cfg)], part, held, test_features, score)
        else:
            results += fit_rows([(label, cfg)], lt, val, test_features, score, no_val_rows)
    return results
