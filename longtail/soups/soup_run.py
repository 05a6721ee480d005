"""`longtail soup` as a library call: merge per a recipe into a new run folder (kind "soup").

A soup of fit runs is itself in the fit layout (model.safetensors, model_config.json with the
ingredients' FitConfig, classes.json): `longtail eval`, `longtail report`, `load_finetuned` and further soups read it
like a fit run. Such soups are always evaluated (metrics.json, per_class.csv, report.html);
with --eval each ingredient is evaluated too and compared side by side.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from longtail.config import coerce_field
from longtail.errors import ConfigError
from longtail.eval.metrics import COMPARISON_KEYS, SHOT_GROUPS
from longtail.soups import greedy
from longtail.soups.merge import MERGE_METHODS, merge, save_state_dict, source_name, weights_file
from longtail.soups.recipe import SoupRecipe

# soup methods that are procedures over evaluated ingredients rather than merge coefficients
# (`longtail list merges` lists them after MERGE_METHODS, described by their module's docstring)
PROCEDURES = {"greedy": greedy}
SOUP_METHODS = (*MERGE_METHODS.names(), *PROCEDURES)
SIDE_FILES = ("classes.json", "data_stats.json")  # copied; model_config.json is written (save_weights_like)


def row(name: str, metrics: dict[str, Any], stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """One line of a comparison table."""
    out = {"name": name, **{k: metrics.get(k) for k in COMPARISON_KEYS}}
    if out["head_tail_ratio"] is None and stats:
        out["head_tail_ratio"] = stats.get("head_tail_ratio")
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text comparison (accuracies in %)."""
    short = {"class_mean": "bal", "medium": "med"}
    head = f"{'model':28s} " + " ".join(f"{short.get(k, k):>6s}" for k in SHOT_GROUPS)
    lines = [head]
    for r in rows:
        cells = [f"{100 * r[k]:6.2f}" if isinstance(r.get(k), float) else f"{'-':>6s}" for k in SHOT_GROUPS]
        lines.append(f"{r['name'][:28]:28s} " + " ".join(cells))
    eta = next((r["head_tail_ratio"] for r in rows if r.get("head_tail_ratio") is not None), None)
    if eta is not None:
        lines.append(f"head-tail ratio of the training set: {eta:.3f}")
    return "\n".join(lines)


def save_weights_like(state, out_dir: Path, source: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Save merged/edited weights into `out_dir` in `source`'s layout (a fit-layout folder gets
    its side files and a model_config.json holding the source's FitConfig and input spec, so
    `out_dir` loads like it, its config.yaml being the soup's); bare weights go to model.safetensors."""
    from longtail.methods.finetune import checkpoint as ckpt
    from longtail.methods.finetune import is_fit_layout
    from longtail.methods.finetune.loading import model_config_of

    out_dir.mkdir(parents=True, exist_ok=True)
    if not is_fit_layout(source):
        return save_state_dict(state, out_dir / ckpt.WEIGHTS, metadata)
    for name in SIDE_FILES:
        if (Path(source) / name).exists():
            shutil.copy2(Path(source) / name, out_dir / name)
    cfg, spec = model_config_of(source)
    return ckpt.save_weights(out_dir, state, spec, cfg.to_dict(), {k: str(v) for k, v in (metadata or {}).items()})


def write_soup_run(out: str | Path | None, state, first: str | Path, config: dict[str, Any], device: str = "auto",
                   kind: str = "soup", train_counts: bool = False, extra: dict[str, Any] | None = None,
                   files: dict[str, Any] | None = None, sweep=(), report: bool = True) -> Path:
    """A finished soup-like run folder: weights in `first`'s layout, metrics, per_class.csv,
    report.html (report=False: none, as `--no-report`).

    train_counts: data_stats.json from the full training counts (classes.json) rather than a
    copy of `first`'s (an LT-Soups ingredient's is its subset's). files: name -> JSON object
    (or text for .txt / .jsonl) written into the run; sweep: (sub-folder, weights) pairs.
    """
    from longtail.eval.report import write_report
    from longtail.methods.finetune import RunModel, is_fit_layout
    from longtail.runs import create_run

    with create_run(out, kind, config, device=device) as run:
        save_weights_like(state, run.dir, first, {"soup_method": config.get("method", kind)})
        for name, weights in sweep:
            save_weights_like(weights, run.path(name), first, {"soup_method": config.get("method", kind)})
        for name, obj in (files or {}).items():
            if isinstance(obj, str):
                run.path(name).write_text(obj, encoding="utf-8")
            else:
                run.write_json(name, obj)
        metrics: dict[str, Any] = {"label": config.get("label", kind), **(extra or {})}
        if is_fit_layout(first):
            model = RunModel(first, device)
            metrics = {**model.metrics(state), **metrics}
            if train_counts:
                from longtail.data.stats import class_stats

                run.write_json("data_stats.json", class_stats(model.counts, model.info["class_names"],
                                                              group_counts=model.groups).to_dict())
        folder = run.finish(metrics)
    if report:
        write_report(folder)
    return folder


def make_soup(recipe: SoupRecipe, out: str | Path | None, evaluate: bool = False,
              val_per_class: int | None = None, device: str = "auto", report: bool = True) -> Path:
    """Merge `recipe` into a new run folder (weights, soup_log.json, metrics, comparison;
    report.html unless report=False)."""
    from longtail.methods.finetune import RunModel, is_fit_layout
    from longtail.soups.merge import load_state_dict

    if recipe.method not in SOUP_METHODS:
        raise ConfigError(f"unknown soup method '{recipe.method}'; choose from: {', '.join(SOUP_METHODS)}")
    ingredients = recipe.ingredients
    for src in ingredients:
        weights_file(src)  # fail early on a missing or non-safetensors ingredient
    first = ingredients[0]
    fit_layout = is_fit_layout(first)
    if recipe.method == "greedy" and not val_per_class:
        raise ConfigError("greedy soup selects on validation images: pass --val-per-class N (e.g. 10)")
    if (evaluate or recipe.method == "greedy" or recipe.base == "zero-shot") and not fit_layout:
        raise ConfigError(f"{first}: evaluation, greedy and --base zero-shot need fit run folders")
    model = RunModel(first, device, val_per_class) if fit_layout and (
        evaluate or recipe.method == "greedy" or recipe.base == "zero-shot") else None
    base = model.zero_shot() if recipe.base == "zero-shot" else recipe.base
    names = [source_name(s, i) for i, s in enumerate(ingredients)]
    soups: list[tuple[str, dict, dict]] = []  # (name, state dict, info)
    if recipe.method == "greedy":
        from longtail.soups.greedy import greedy_soup

        res = greedy_soup(ingredients, model.balanced_val_accuracy, None, names)
        soups.append(("soup", res.state_dict, {"members": [names[i] for i in res.members],
                                               "val_class_mean": res.score, "log": res.log}))
    else:
        params = dict(recipe.parameters)
        if recipe.method == "weighted":
            params["weights"] = recipe.weights or params.get("weights") or []
        alphas = params.pop("alpha", None) if recipe.method == "wise" else None
        if alphas is not None:  # one alpha, or a list of them (a sweep)
            alphas = coerce_field("alpha", alphas, float | list[float])
        for alpha in (alphas if isinstance(alphas, list) else [alphas]):
            extra = {} if alpha is None else {"alpha": float(alpha)}
            state, coefs = merge(recipe.method, ingredients, base=base, **params, **extra)
            name = "soup" if alpha is None or not isinstance(alphas, list) else f"wise_alpha_{float(alpha):g}"
            soups.append((name, state, {"weights": list(coefs.ingredients), "base_weight": coefs.base, **extra}))
    rows: list[dict[str, Any]] = []
    if evaluate:
        stats = read_data_stats(first)
        rows += [row(f"ingredient {Path(n).name}", model.metrics(load_state_dict(s)), stats)
                 for n, s in zip(names, ingredients)]
        if base is not None:
            rows.append(row("base (theta_0)", model.metrics(base if isinstance(base, dict) else load_state_dict(base)), stats))
        rows += [row(name, model.metrics(state), stats) for name, state, _ in soups]
    config = {"label": f"soup ({recipe.method})", "method": recipe.method, "ingredients": names,
              "weights": recipe.weights, "base": recipe.base, "parameters": recipe.parameters,
              "val_per_class": val_per_class}
    log: dict[str, Any] = {"method": recipe.method, "ingredients": names,
                           "soups": {n: {k: v for k, v in info.items() if k != "log"} for n, _, info in soups}}
    files: dict[str, Any] = {"soup_log.json": log}
    if rows:
        log["comparison"] = rows
        files.update({"comparison.json": rows, "comparison.txt": format_table(rows) + "\n"})
    if recipe.method == "greedy":
        files["greedy.jsonl"] = "".join(json.dumps(e) + "\n" for e in soups[0][2]["log"])
    main = next((s for s in soups if s[0] == "soup"), soups[-1])
    return write_soup_run(out, main[1], first, config, device, extra={"comparison": rows} if rows else None,
                          files=files, sweep=[(n, s) for n, s, _ in soups if n != "soup"], report=report)


def read_data_stats(folder: str | Path) -> dict[str, Any] | None:
    """A run folder's data_stats.json (None: not a run folder, or a run without one)."""
    p = Path(folder) / "data_stats.json"
    return json.loads(p.read_text()) if p.is_file() else None
