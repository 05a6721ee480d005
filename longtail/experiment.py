"""One probe experiment on feature files: fit, evaluate, and write a complete run folder.

Shared by `longtail probe` and `longtail demo`.
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from longtail.data.features import FeatureSet, check_compatible
from longtail.data.stats import ClassStats, class_stats, require_nonempty
from longtail.io import atomic_path
from longtail.runs import create_run


def train_stats(train: FeatureSet, many: int = 100, few: int = 20) -> ClassStats:
    """Class statistics of a training feature set (groups may be overridden by meta.group_counts)."""
    counts = train.class_counts()
    require_nonempty(counts, train.names())
    group_counts = train.meta.get("group_counts")
    return class_stats(
        counts,
        train.names(),
        group_counts=None if group_counts is None else np.asarray(group_counts),
        many_threshold=many,
        few_threshold=few,
    )


def write_per_class_csv(path: Path, per_class: list[dict[str, Any]]) -> None:
    """per_class.csv: one row per class (name, train count, group, test count, accuracy)."""
    if not per_class:
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(per_class[0]))
        writer.writeheader()
        writer.writerows(per_class)


def run_probe(
    train: FeatureSet,
    test: FeatureSet,
    cfg: Any,
    *,
    val: FeatureSet | None = None,
    out: str | Path | None = None,
    label: str | None = None,
    many: int = 100,
    few: int = 20,
    report: bool = True,
    extra_config: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Fit `cfg` (a ProbeConfig) on `train`, evaluate on `test`, write the run; return (folder, metrics)."""
    from longtail.eval.metrics import evaluate
    from longtail.methods.probe import fit_probe

    check_compatible(train, test)  # val is checked by fit_probe
    stats = train_stats(train, many, few)
    config = {
        "label": label or getattr(cfg, "method", "probe"),
        "probe": asdict(cfg),
        "train": train.source,
        "test": test.source,
        "val": None if val is None else val.source,
        "feature_dim": train.dim,
        "num_classes": train.num_classes,
        "many_threshold": many,
        "few_threshold": few,
        **(extra_config or {}),
    }
    run = create_run(out, "probe", config, seed=getattr(cfg, "seed", None), device=getattr(cfg, "device", None))
    with run:
        run.write_json("data_stats.json", stats.to_dict())
        start = time.perf_counter()
        probe = fit_probe(train, cfg, val)
        fit_seconds = time.perf_counter() - start
        logits = probe.logits(test.features)
        metrics = evaluate(
            logits,
            test.labels,
            stats.counts,
            group_counts=train.meta.get("group_counts"),
            class_names=train.names(),
            many_threshold=many,
            few_threshold=few,
        )
        metrics["fit_seconds"] = fit_seconds
        metrics["label"] = config["label"]
        probe.save(run.path("head"))
        write_per_class_csv(run.path("per_class.csv"), metrics.get("per_class", []))
        if hasattr(probe, "write_figures"):
            probe.write_figures(run.path("figures"), test=test)
        folder = run.finish(metrics)
    if report:
        from longtail.eval.report import write_report

        write_report(folder)
    return folder, metrics


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The `--json` contract: all, many, medium, few, ece (+ a few more), fractions or null."""
    keys = ("all", "class_mean", "many", "medium", "few", "worst_class", "hmean", "gmean", "macro_f1", "ece", "fit_seconds")
    return {k: metrics.get(k) for k in keys}
