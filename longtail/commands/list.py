"""`longtail list`: every name a user can choose from, by kind, with a one-line description."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

HELP = "list the registered names: probe methods, losses, adapters, merges, datasets, backbones, ..."
DESCRIPTION = """\
Print every registry a user can choose from, or one of them: the names that configs and
command-line options accept (an unknown name anywhere is an error listing these same names).

examples:
  longtail list               # everything
  longtail list losses
  longtail list datasets
"""

# kind -> what the names are used for; `tables()` holds the names themselves
REGISTRIES: dict[str, str] = {
    "probe-methods": "longtail probe method=NAME",
    "probe-solvers": "longtail probe solver=NAME",
    "losses": "probe / fit / lt-soups loss=NAME",
    "heads": "probe head (method=linear|cosine)",
    "oversamplers": "latent oversampling probe methods",
    "fit-methods": "longtail fit -m NAME",
    "adapters": "fit adapter=NAME",
    "merges": "longtail soup -m NAME (LT-Soups: longtail lt-soups)",
    "datasets": "-d / --data / DATA NAME (or a folder, list file, CSV, zip, hf:ID)",
    "backbones": "-b / --backbone NAME (or a Hugging Face id or folder)",
    "run-kinds": "what longtail eval / report read",
}
# entries whose registered object carries no description of its own: method presets are plain
# dicts of FitConfig fields, and the EfficientNet-Lite variants share one constructor
DESCRIPTIONS: dict[str, dict[str, str]] = {
    "fit-methods": {
        "lift": "LIFT: AdaptFormer adapters, text-initialised cosine head, LA loss, 10 epochs SGD.",
        "lift_plus": "LIFT+: LIFT with lr 0.02, 5 epochs, bicubic resizing and a convex crop schedule.",
        "sage": "Sage: SG-Adapter, CF loss and feature interchange (per-dataset settings of Sage Table 8).",
        "zero_shot": "No training: the text-prototype head of the pre-trained model, evaluated as is.",
        "linear_probe": "Classifier only on the frozen backbone (text-initialised head, LA loss, 10 epochs).",
        "full_ft": "Full fine-tuning of every backbone weight (LIFT's heavy baseline), LA loss.",
        "partial_ft": "The last block and the top fine-tuned, LA loss; the frozen prefix is cached (2 flip views).",
        "lt_soups": "LT-Soups' ingredient recipe: full fine-tuning, AdamW 3e-5, per-step cosine, EMA, best-of-5, LA loss.",
    },
    "backbones": {
        "efficientnet_lite0": "EfficientNet-Lite0 (ImageNet weights, 224 px native): 1280-d features, BatchNorm kept in eval.",
        "efficientnet_lite2": "EfficientNet-Lite2 (ImageNet weights, width 1.1 / depth 1.2, 260 px native): 1280-d features.",
    },
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", nargs="?", choices=sorted(REGISTRIES), metavar="KIND",
                   help=f"one of: {', '.join(sorted(REGISTRIES))} (default: all)")


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, its lines joined: it ends at '. '
    outside brackets before a capital letter, so 'Kang et al. 2020' or a formula is not cut."""
    text = " ".join(doc.strip().split("\n\n")[0].split())
    depth = 0
    for i, char in enumerate(text):
        depth += (char in "([{") - (char in ")]}")
        if char == "." and depth == 0 and text[i + 1:i + 3].startswith(" ") and text[i + 2:i + 3].isupper():
            return text[: i + 1]
    return text


def describe(obj: Any) -> str:
    """One line about a registered object: its `description` (run kinds), else the first
    sentence of its docstring (a functools.partial: its function's, with the bound arguments
    that name what it loads, e.g. a hub id); '' for plain values such as preset dicts."""
    if isinstance(obj, (dict, tuple, list, str)):
        return ""
    if getattr(obj, "description", None):
        return str(obj.description)
    func = getattr(obj, "func", None)  # functools.partial
    text = first_sentence(getattr(func if func is not None else obj, "__doc__", None) or "")
    bound = [a for a in getattr(obj, "args", ()) if isinstance(a, str)] if func is not None else []
    return f"{text.rstrip('.')}: {', '.join(bound)}." if bound and text else text


def table(kind: str) -> Any:
    """The registry behind `kind` (for run kinds, the fixed table), imported explicitly and only
    for the kind asked for: `longtail --help` loads no torch, `longtail list losses` no soups."""
    if kind == "probe-methods":
        from longtail.methods.probe import PROBE_METHODS
        return PROBE_METHODS
    if kind == "probe-solvers":
        from longtail.methods.probe import SOLVERS
        return SOLVERS
    if kind == "losses":
        from longtail.methods.losses import LOSSES
        return LOSSES
    if kind == "heads":
        from longtail.methods.heads import HEADS
        return HEADS
    if kind == "oversamplers":
        from longtail.methods.latent.oversample import OVERSAMPLERS
        return OVERSAMPLERS
    if kind == "fit-methods":
        from longtail.methods.finetune.presets import METHOD_PRESETS
        return METHOD_PRESETS
    if kind == "adapters":
        from longtail.models.adapters import ADAPTERS
        return ADAPTERS
    if kind == "merges":
        from longtail.soups.merge import MERGE_METHODS
        return MERGE_METHODS
    if kind == "datasets":
        from longtail.data.presets import DATASETS
        return DATASETS
    if kind == "backbones":
        from longtail.models.backbone import BACKBONES
        return BACKBONES
    if kind == "run-kinds":
        from longtail.methods.run_kinds import RUN_KINDS
        return RUN_KINDS
    raise KeyError(kind)  # argparse's choices keep users from getting here


def extra_names(kind: str) -> dict[str, Any]:
    """Names a command accepts beyond its registry, with the object whose docstring describes
    them, read where they are declared: `longtail soup -m greedy` is a procedure
    (`soups.soup_run.PROCEDURES`), not a merge coefficient."""
    if kind != "merges":
        return {}
    from longtail.soups.soup_run import PROCEDURES

    return PROCEDURES


def entries(kind: str) -> list[tuple[str, str]]:
    """(name, one-line description) of every name registered under `kind`."""
    registry = table(kind)
    written = DESCRIPTIONS.get(kind, {})
    out = [(name, written.get(name) or describe(registry.get(name))) for name in sorted(registry)]
    return out + [(name, describe(obj)) for name, obj in extra_names(kind).items()]


def run(args: argparse.Namespace) -> int:
    kinds = [args.kind] if args.kind else sorted(REGISTRIES)
    printer: Callable[[str], None] = print
    for kind in kinds:
        rows = entries(kind)
        printer(f"{kind}  ({REGISTRIES[kind]})")
        width = max((len(n) for n, _ in rows), default=0)
        for name, text in rows:
            printer(f"  {name:<{width}}  {text}".rstrip())
        if kind != kinds[-1]:
            printer("")
    return 0
