"""Every kind of run folder the package writes, and how `longtail eval` re-evaluates each.

A run folder records its kind in config.yaml (`runs.create_run(out, kind, config)`). The kinds
are one explicit table, not a registry filled as a side effect of imports: the writers are
known (`methods/probe/run.py` writes "probe", `methods/finetune/runner.py` "fit",
`soups/soup_run.py` "soup" and "monosoup"), and no user picks a kind by name, so
`evaluate_run` is one dictionary lookup that a reader (and `tests/test_architecture.py`) can
follow. A new kind of run adds one row to `RUN_KINDS`.

This module sits in the methods layer because every evaluator does: a soup or MonoSoup edit of
fit runs is in the fit layout and is rebuilt and scored exactly like a fit run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longtail.errors import DataError, UnknownNameError
from longtail.methods.finetune.loading import evaluate_fit_run, is_fit_layout
from longtail.methods.probe.run import evaluate_probe_run
from longtail.runs import load_run

Evaluate = Callable[[dict[str, Any], str | None], dict[str, Any]]


@dataclass(frozen=True)
class RunKind:
    """How to re-evaluate one kind of run folder, and one line for `longtail list run-kinds`.

    evaluate(run, test) gets `runs.load_run(folder)` and an optional other test set and returns
    a metrics dict (`longtail.eval.metrics.evaluate`'s keys)."""

    evaluate: Evaluate
    description: str


def evaluate_merged_run(run: dict[str, Any], test: str | None = None) -> dict[str, Any]:
    """A soup / MonoSoup run: the fit-layout weights, rebuilt and evaluated as a fit run; a merge
    of bare safetensors files has no model to evaluate (one-line DataError)."""
    if not is_fit_layout(Path(run["folder"])):
        raise DataError(f"{run['folder']}: a merge of bare weight files has no model to evaluate; "
                        "merge fit run folders instead")
    return evaluate_fit_run(run, test)


RUN_KINDS: dict[str, RunKind] = {
    "probe": RunKind(evaluate_probe_run, "A classifier head trained on frozen features (longtail probe): "
                                         "head/, metrics, report."),
    "fit": RunKind(evaluate_fit_run, "A fine-tuned backbone + head (longtail fit, LT-Soups ingredients): "
                                     "weights, classes, curves."),
    "soup": RunKind(evaluate_merged_run, "A weight-space merge of runs (longtail soup -m "
                                         "uniform|weighted|wise|recursive|greedy, LT-Soups)."),
    "monosoup": RunKind(evaluate_merged_run, "MonoSoup: a data-free, layer-wise SVD edit of one fine-tuned "
                                             "checkpoint (longtail monosoup)."),
}


def evaluate_run(folder: str | Path, test: str | None = None) -> dict[str, Any]:
    """Re-evaluate a finished run of any kind on its own test data, or on `test` (a feature
    file for probe runs, a dataset spec for image runs); an unknown kind lists the known ones."""
    run = load_run(folder)
    kind = run["config"]["kind"]
    if kind not in RUN_KINDS:
        raise UnknownNameError(f"unknown run kind '{kind}'; choose from: {', '.join(sorted(RUN_KINDS))}")
    return RUN_KINDS[kind].evaluate(run, test)
