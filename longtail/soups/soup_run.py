"""`longtail soup` as a library call: merge per a recipe into a new run folder, with a log and
(when the ingredients are evaluable runs) each ingredient's and each soup's metrics side by side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from longtail.errors import ConfigError
from longtail.soups.merge import MERGE_METHODS, merge, save_state_dict, source_name, weights_file
from longtail.soups.recipe import SoupRecipe

ROW_KEYS = ("all", "class_mean", "many", "medium", "few", "head_tail_ratio")
SOUP_METHODS = (*MERGE_METHODS.names(), "greedy")


def _row(name: str, metrics: dict[str, Any], stats: dict[str, Any] | None) -> dict[str, Any]:
    row = {"name": name, **{k: metrics.get(k) for k in ROW_KEYS}}
    if row["head_tail_ratio"] is None and stats:
        row["head_tail_ratio"] = stats.get("head_tail_ratio")
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text comparison (accuracies in %)."""
    head = f"{'model':28s} {'all':>6s} {'bal':>6s} {'many':>6s} {'med':>6s} {'few':>6s}"
    lines = [head]
    for r in rows:
        cells = [f"{100 * r[k]:6.2f}" if isinstance(r.get(k), float) else f"{'-':>6s}"
                 for k in ("all", "class_mean", "many", "medium", "few")]
        lines.append(f"{r['name'][:28]:28s} " + " ".join(cells))
    eta = next((r["head_tail_ratio"] for r in rows if r.get("head_tail_ratio") is not None), None)
    if eta is not None:
        lines.append(f"head-tail ratio of the training set: {eta:.3f}")
    return "\n".join(lines)


def make_soup(
    recipe: SoupRecipe,
    out: str | Path | None,
    evaluate: bool = False,
    val_per_class: int | None = None,
    device: str = "auto",
) -> Path:
    """Merge `recipe` into a new run folder (weights as safetensors, soup_log.json, comparison)."""
    from longtail.runs import create_run
    from longtail.soups.formats import detect_format, open_format

    if recipe.method not in SOUP_METHODS:
        raise ConfigError(f"unknown soup method '{recipe.method}'; choose from: {', '.join(SOUP_METHODS)}")
    ingredients = recipe.ingredients
    for src in ingredients:
        weights_file(src)  # fail early on a missing or non-safetensors ingredient
    first = ingredients[0]
    fmt_name = detect_format(first)
    needs_format = evaluate or recipe.method == "greedy" or recipe.base == "zero-shot"
    if recipe.method == "greedy" and not val_per_class:
        raise ConfigError("greedy soup selects on validation images: pass --val-per-class N (e.g. 10)")
    fmt = open_format(first, val_per_class, device) if needs_format else None
    base = None
    if recipe.base == "zero-shot":
        base = fmt.zero_shot()
    elif recipe.base:
        base = recipe.base
    names = [source_name(s, i) for i, s in enumerate(ingredients)]
    config = {"label": f"soup ({recipe.method})", "method": recipe.method, "ingredients": names,
              "weights": recipe.weights, "base": recipe.base, "parameters": recipe.parameters,
              "format": fmt_name, "val_per_class": val_per_class}
    weights_name = weights_file(first).name if fmt_name else "model.safetensors"
    with create_run(out, "soup", config, device=device) as run:
        soups: list[tuple[str, dict, dict]] = []  # (name, state dict, info)
        if recipe.method == "greedy":
            from longtail.soups.greedy import greedy_soup

            res = greedy_soup(ingredients, fmt.balanced_val_accuracy, run.path("greedy.jsonl"), names)
            soups.append(("soup", res.state_dict, {"members": [names[i] for i in res.members],
                                                    "val_class_mean": res.score}))
        else:
            params = dict(recipe.parameters)
            if recipe.method == "weighted":
                params["weights"] = recipe.weights or params.get("weights") or []
            alphas = params.pop("alpha", None) if recipe.method == "wise" else None
            for alpha in (alphas if isinstance(alphas, list) else [alphas]):
                extra = {} if alpha is None else {"alpha": float(alpha)}
                state, coefs = merge(recipe.method, ingredients, base=base, **params, **extra)
                name = "soup" if alpha is None or not isinstance(alphas, list) else f"wise_alpha_{float(alpha):g}"
                soups.append((name, state, {"weights": list(coefs.ingredients), "base_weight": coefs.base, **extra}))
        for name, state, _ in soups:
            folder = run.dir if name == "soup" else run.path(name)
            folder.mkdir(exist_ok=True)
            save_state_dict(state, folder / weights_name, {"soup_method": recipe.method})
            if fmt is not None:
                fmt.publish(folder)
            elif fmt_name:
                open_format(first, None, device).publish(folder)
        log = {"method": recipe.method, "ingredients": names, "soups": {n: info for n, _, info in soups}}
        rows: list[dict[str, Any]] = []
        if evaluate:
            from longtail.soups.merge import load_state_dict

            stats = _stats_of(first)
            for name, src in zip(names, ingredients):
                rows.append(_row(f"ingredient {Path(name).name}", fmt.metrics(load_state_dict(src)), stats))
            if base is not None:
                rows.append(_row("base (theta_0)", fmt.metrics(base if isinstance(base, dict) else load_state_dict(base)), stats))
            for name, state, _ in soups:
                rows.append(_row(name, fmt.metrics(state), stats))
            run.write_json("comparison.json", rows)
            log["comparison"] = rows
            run.path("comparison.txt").write_text(format_table(rows) + "\n", encoding="utf-8")
        run.write_json("soup_log.json", log)
        metrics = next((r for r in rows if r["name"] == "soup"), {}) if rows else {}
        folder = run.finish({**metrics, "comparison": rows} if rows else None)
    return folder


def _stats_of(folder: str | Path) -> dict[str, Any] | None:
    p = Path(folder) / "data_stats.json"
    return json.loads(p.read_text()) if p.is_file() else None
