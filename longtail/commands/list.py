"""`longtail list`: every name a user can choose from, by kind, with a one-line description."""

from __future__ import annotations

import argparse
import importlib
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

# kind -> (module, attribute, what the names are used for)
REGISTRIES: dict[str, tuple[str, str, str]] = {
    "probe-methods": ("longtail.methods.probe", "PROBE_METHODS", "longtail probe method=NAME"),
    "probe-solvers": ("longtail.methods.probe", "SOLVERS", "longtail probe solver=NAME"),
    "losses": ("longtail.methods.losses", "LOSSES", "probe / fit / lt-soups loss=NAME"),
    "heads": ("longtail.methods.heads", "HEADS", "probe head (method=linear|cosine)"),
    "oversamplers": ("longtail.methods.latent.oversample", "OVERSAMPLERS", "latent oversampling probe methods"),
    "fit-methods": ("longtail.methods.finetune.presets", "METHOD_PRESETS", "longtail fit -m NAME"),
    "adapters": ("longtail.models.adapters", "ADAPTERS", "fit adapter=NAME"),
    "merges": ("longtail.soups.merge", "MERGE_METHODS", "longtail soup -m NAME (also greedy; LT-Soups: longtail lt-soups)"),
    "datasets": ("longtail.data.presets", "DATASETS", "-d / --data / DATA NAME (or a folder, list file, CSV, zip, hf:ID)"),
    "backbones": ("longtail.models.backbone", "BACKBONES", "-b / --backbone NAME (or a Hugging Face id or folder)"),
    "run-kinds": ("longtail.runs", "RUN_KINDS", "what longtail eval / report read"),
}
# names a command accepts beyond its registry, with the module whose docstring describes them
EXTRA_NAMES: dict[str, dict[str, str]] = {"merges": {"greedy": "longtail.soups.greedy"}}
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


def entries(kind: str) -> list[tuple[str, str]]:
    """(name, one-line description) of every name registered under `kind`."""
    module_name, attribute, _ = REGISTRIES[kind]
    module = importlib.import_module(module_name)
    registry = getattr(module, attribute)
    if kind == "run-kinds":
        from longtail.runs import get_kind

        get_kind("probe")  # imports the modules that register the built-in kinds
    if kind == "backbones":
        from longtail.models.backbone import backbone_names

        backbone_names()  # imports the modules that register the presets
    table = DESCRIPTIONS.get(kind, {})
    out = [(name, table.get(name) or describe(registry.get(name))) for name in registry.names()]
    return out + [(name, describe(importlib.import_module(module)))
                  for name, module in EXTRA_NAMES.get(kind, {}).items()]


def run(args: argparse.Namespace) -> int:
    kinds = [args.kind] if args.kind else sorted(REGISTRIES)
    printer: Callable[[str], None] = print
    for kind in kinds:
        rows = entries(kind)
        printer(f"{kind}  ({REGISTRIES[kind][2]})")
        width = max((len(n) for n, _ in rows), default=0)
        for name, text in rows:
            printer(f"  {name:<{width}}  {text}".rstrip())
        if kind != kinds[-1]:
            printer("")
    return 0
