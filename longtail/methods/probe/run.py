"""The probe run kind: fit + evaluate + write a complete run folder, and re-evaluate one later.

A probe run folder holds config.yaml (kind "probe": the ProbeConfig under `probe`, the feature
files as given, as absolute paths and as `fingerprints` (samples, dim, file size, content hash:
`data.features.feature_record`), the shot-group thresholds), env.json, data_stats.json,
metrics.json, per_class.csv, head/ (head.safetensors [+ zero_shot.safetensors] + head.json) and report.html; a
`method=auto` run also selection.csv (the candidate table, best first) and, in metrics.json,
`auto` (the choice, how it was validated, the cost); with `log_with`, tracking/ and tracking.json
(`methods.tracking`: the config, the solver's summary and the test metrics by shot group, logged
once the folder is published, since the probe is one convex fit without a curve to watch live).
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import numpy as np

from longtail.data.features import (
    FeatureSet,
    check_compatible,
    feature_record,
    match_classes,
    record_change,
)
from longtail.data.open_features import open_features
from longtail.data.stats import ClassStats, class_stats, require_nonempty
from longtail.errors import DataError
from longtail.eval.metrics import evaluate
from longtail.io import write_text
from longtail.methods.probe.auto import selection_rows
from longtail.methods.probe.config import ProbeConfig, upgrade_saved
from longtail.methods.probe.model import Probe
from longtail.methods.probe.train import fit_probe
from longtail.methods.tracking import RunTracker, require_tracker
from longtail.runs import create_run

KIND = "probe"
SPLITS = ("train", "test", "val")


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


def _absolute(source: str) -> str | None:
    """The absolute path of a feature file source, or None (built-in preset, in-memory data)."""
    path = Path(source)
    return str(path.resolve()) if path.suffix and path.exists() else None


def run_probe(
    train: FeatureSet,
    test: FeatureSet,
    cfg: ProbeConfig,
    *,
    val: FeatureSet | None = None,
    out: str | Path | None = None,
    label: str | None = None,
    many: int = 100,
    few: int = 20,
    report: bool = True,
    extra_config: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Fit `cfg` on `train`, evaluate on `test`, write the run folder; return (folder, metrics).

    metrics = `eval.metrics.evaluate` + fit_seconds, label and `post_hoc` (the interpolation
    alpha, post-hoc tau and temperature in use, chosen on `val` where cfg says "auto").
    """
    require_tracker(cfg.log_with)  # a missing tracker package fails before the fit
    scored = match_classes(train.class_names, test)  # labels indexed by the training classes
    check_compatible(train, scored)  # val is checked by fit_probe
    stats = train_stats(train, many, few)
    sets = {"train": train, "test": test, "val": val}
    config = {
        "label": label,  # None unless --label: comparison reports label runs by what differs
        "probe": cfg.to_dict(),
        **{split: None if data is None else data.source for split, data in sets.items()},
        "absolute_paths": {split: None if data is None else _absolute(data.source) for split, data in sets.items()},
        "fingerprints": {split: None if data is None else feature_record(data) for split, data in sets.items()},
        "feature_dim": train.dim,
        "num_classes": train.num_classes,
        "many_threshold": many,
        "few_threshold": few,
        **(extra_config or {}),
    }
    with create_run(out, KIND, config, seed=cfg.seed, device=cfg.device) as run:
        run.write_json("data_stats.json", stats.to_dict())
        start = time.perf_counter()
        probe = fit_probe(train, cfg, val)
        fit_seconds = time.perf_counter() - start
        metrics = evaluate(
            probe.logits(scored.features),
            scored.labels,
            stats.counts,
            group_counts=stats.group_counts,
            class_names=list(stats.class_names),
            many_threshold=many,
            few_threshold=few,
        )
        metrics["fit_seconds"] = fit_seconds
        metrics["label"] = config["label"]
        metrics["post_hoc"] = {"alpha": probe.alpha, "posthoc_tau": probe.posthoc_tau,
                               "temperature": probe.temperature}
        if "auto" in probe.info:
            metrics["auto"] = write_selection(run.path("selection.csv"), probe.info["auto"])
        probe.save(run.path("head"))
        if hasattr(probe, "write_figures"):  # oversampling methods: real vs synthetic projection
            probe.write_figures(run.path("figures"), test=scored)
        folder = run.finish(metrics)
    track_probe(cfg, folder, config, probe, metrics)
    if report:
        from longtail.eval.report import write_report

        write_report(folder)
    return folder, metrics


def track_probe(cfg: ProbeConfig, folder: Path, config: dict[str, Any], probe: Probe,
                metrics: dict[str, Any]) -> None:
    """Log a finished probe run to cfg.log_with: config, solver summary, shot-group metrics."""
    tracker = RunTracker(cfg.log_with, folder, config)
    if not tracker.active:
        return
    solver = probe.info.get("train") if isinstance(probe.info.get("train"), dict) else {}
    step = solver.get("iterations", solver.get("steps", 0))
    tracker.log({f"train/{k}": v for k, v in solver.items()} | {"train/fit_seconds": metrics["fit_seconds"]}, step)
    tracker.finish(metrics, step)


def write_selection(path: Path, auto: dict[str, Any]) -> dict[str, Any]:
    """Write an auto run's candidate table to `path` (CSV, best first); return what metrics.json
    keeps of the selection (everything but the table, plus its size)."""
    rows = selection_rows(auto)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())
    return {**{k: v for k, v in auto.items() if k != "candidates"}, "num_candidates": len(rows),
            "table": path.name}


def saved_feature_path(config: dict[str, Any], split: str, folder: Path) -> str:
    """Where a run's `split` features are now: the recorded absolute path if it exists, else the
    path as given (a preset name, an absolute path, relative to the working directory, or
    relative to the run folder, in that order)."""
    given = config.get(split)
    if given is None:
        raise DataError(f"{folder}: the run recorded no {split} features")
    absolute = (config.get("absolute_paths") or {}).get(split)
    if absolute and Path(absolute).exists():
        return absolute
    path = Path(given)
    if not path.suffix or path.is_absolute() or path.exists() or not (folder / path).exists():
        return given
    return str(folder / path)


def _candidates(config: dict[str, Any], split: str, folder: Path) -> list[str]:
    """Every place the run's `split` file may be now: `saved_feature_path`'s choice first, then
    the recorded absolute path, the path as given and the path relative to the run folder."""
    given = str(config.get(split))
    absolute = (config.get("absolute_paths") or {}).get(split)
    out = [saved_feature_path(config, split, folder)]
    for path in (absolute, given, str(folder / given) if not Path(given).is_absolute() else None):
        if path and path not in out and Path(path).is_file():
            out.append(path)
    return out


def own_test_features(config: dict[str, Any], folder: Path) -> FeatureSet:
    """The run's own test features, checked against the fingerprint recorded at write time: the
    first candidate path holding the same arrays, else a one-line DataError naming the file and
    what changed (runs written before fingerprints are not checked)."""
    saved = (config.get("fingerprints") or {}).get("test")
    first, *others = _candidates(config, "test", folder)
    test_set = open_features(first)
    change = None if saved is None else record_change(saved, test_set)
    if change is None:
        return test_set
    for path in others:
        try:
            other = open_features(path)
        except DataError:
            continue
        if record_change(saved, other) is None:
            return other
    raise DataError(f"{first}: the run's test features changed since {folder} was made ({change}); "
                    f"pass --test {first} to evaluate on them anyway")


def evaluate_probe_run(run: dict[str, Any], test: str | None = None) -> dict[str, Any]:
    """Reload the saved head and evaluate it on `test` (default: the run's own test features,
    refused when they changed since the run) with the training statistics of the run; a test
    set of other classes or dimension is a one-line DataError. With `test`, the metrics say
    under `test_set` whether it holds the run's own test features."""
    config, folder = run["config"], Path(run["folder"])
    stats = run.get("data_stats")
    if not stats:
        raise DataError(f"{folder}: missing data_stats.json")
    probe = Probe.load(folder / "head")
    test_set = own_test_features(config, folder) if test is None else open_features(test)
    test_set = match_classes(probe.class_names, test_set)
    probe.check_compatible(test_set)
    metrics = evaluate(
        probe.logits(test_set.features),
        test_set.labels,
        np.asarray(stats["counts"]),
        group_counts=stats.get("group_counts"),
        class_names=stats.get("class_names"),
        many_threshold=config.get("many_threshold", 100),
        few_threshold=config.get("few_threshold", 20),
    )
    if test is not None:
        saved = (config.get("fingerprints") or {}).get("test")
        metrics["test_set"] = {"source": test, "own": saved is not None and record_change(saved, test_set) is None}
    return metrics


def load_probe_config(config: dict[str, Any]) -> ProbeConfig:
    """The validated ProbeConfig of a saved probe run (its config.yaml as a dict)."""
    return ProbeConfig.from_dict(upgrade_saved(config["probe"], config.get("format_version", 0)))

