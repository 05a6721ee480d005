"""Re-evaluating saved runs: one evaluator per run kind (probe, fit, ...), chosen by registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longtail.registry import Registry

# kind -> fn(run: dict from runs.load_run, test: str | None) -> metrics dict
RUN_EVALUATORS: Registry = Registry("run kind")


@RUN_EVALUATORS.register("probe")
def evaluate_probe_run(run: dict[str, Any], test: str | None = None) -> dict[str, Any]:
    """Reload the saved head and evaluate it on `test` (default: the run's own test file)."""
    import numpy as np

    from longtail.data.features import check_compatible, load_features
    from longtail.eval.metrics import evaluate
    from longtail.methods.probe import Probe

    cfg = run["config"]
    folder = Path(run["folder"])
    stats = run["data_stats"] or {}
    test_set = load_features(test or cfg["test"])
    probe = Probe.load(folder / "head")
    counts = np.asarray(stats["counts"])
    if test_set.dim != cfg["feature_dim"]:
        check_compatible(load_features(cfg["train"]), test_set)
    return evaluate(
        probe.logits(test_set.features),
        test_set.labels,
        counts,
        group_counts=stats.get("group_counts"),
        class_names=stats.get("class_names"),
        many_threshold=cfg.get("many_threshold", 100),
        few_threshold=cfg.get("few_threshold", 20),
    )


def evaluate_run(folder: str | Path, test: str | None = None) -> dict[str, Any]:
    """Evaluate a saved run of any registered kind."""
    from longtail.runs import load_run

    run = load_run(folder)
    kind = run["config"].get("kind", "probe")
    _load_kind_modules()
    return RUN_EVALUATORS.get(kind)(run, test)


def _load_kind_modules() -> None:
    """Import the modules that register evaluators for other run kinds (fine-tuning, soups)."""
    import longtail.methods.finetune  # noqa: F401
    import longtail.soups  # noqa: F401
