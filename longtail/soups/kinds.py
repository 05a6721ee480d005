"""Run kinds of this package: "soup" and "monosoup" (LT-Soups writes fit runs and a soup run).

A soup or MonoSoup edit of fit runs is in the fit layout, so it is re-evaluated exactly like a
fit run; one of bare safetensors files has no model to evaluate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longtail.errors import DataError
from longtail.runs import RunKind, register_kind


def evaluate_soup_run(run: dict[str, Any], test: str | None = None) -> dict[str, Any]:
    """`longtail eval` of a soup / MonoSoup run: the fit-layout weights, rebuilt and evaluated."""
    from longtail.methods.finetune import evaluate_fit_run, is_fit_layout

    if not is_fit_layout(Path(run["folder"])):
        raise DataError(f"{run['folder']}: a merge of bare weight files has no model to evaluate; "
                        "merge fit run folders instead")
    return evaluate_fit_run(run, test)


def _config(config: dict[str, Any]) -> dict[str, Any]:
    """Soup configs are plain records (recipe and coefficients), not dataclasses."""
    return {k: v for k, v in config.items() if k not in ("kind", "format_version")}


_DESCRIPTIONS = {
    "soup": "A weight-space merge of runs (longtail soup -m uniform|weighted|wise|recursive|greedy, LT-Soups).",
    "monosoup": "MonoSoup: a data-free, layer-wise SVD edit of one fine-tuned checkpoint (longtail monosoup).",
}
for _kind, _text in _DESCRIPTIONS.items():
    register_kind(RunKind(_kind, evaluate=evaluate_soup_run, load_config=_config, description=_text))
