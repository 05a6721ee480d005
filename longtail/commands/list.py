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
EXTRA_NAMES: dict[str, tuple[str, ...]] = {"merges": ("greedy",)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", nargs="?", choices=sorted(REGISTRIES), metavar="KIND",
                   help=f"one of: {', '.join(sorted(REGISTRIES))} (default: all)")


def describe(obj: Any) -> str:
    """First line of an object's docstring ('' for plain values such as preset dicts)."""
    if isinstance(obj, (dict, tuple, list, str)):
        return ""
    doc = getattr(obj, "__doc__", None) or ""
    if getattr(obj, "func", None) is not None:  # functools.partial
        doc = getattr(obj.func, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


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
    out = [(name, describe(registry.get(name))) for name in registry.names()]
    return out + [(name, "") for name in EXTRA_NAMES.get(kind, ())]


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
