"""A mergekit-like YAML soup recipe: which checkpoints, which method, which parameters.

    method: recursive            # uniform | weighted | recursive | wise | greedy
    base: zero-shot              # optional: a checkpoint, or 'zero-shot' (rebuilt from the runs)
    ingredients:                 # merge order (ascending balance factor for LT-Soups)
      - runs/lts/ingredients/e0_b0
      - {path: runs/ft2, weight: 2.0}     # weights: method 'weighted' only
    parameters: {lam: 0.7}       # method parameters (wise: alpha, a number or a list = sweep)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longtail.config import coerce_field
from longtail.errors import ConfigError
from longtail.io import read_yaml

KEYS = ("method", "base", "ingredients", "parameters")


@dataclass
class SoupRecipe:
    """A parsed recipe; relative paths are resolved against the recipe file's folder."""

    method: str = "uniform"
    ingredients: list[str] = field(default_factory=list)
    weights: list[float] | None = None
    base: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def _resolve(path: str, here: Path) -> str:
    if path == "zero-shot":
        return path
    p = Path(path)
    return str(p if p.is_absolute() else here / p)


def load_recipe(path: str | Path) -> SoupRecipe:
    """Read and check a recipe file (unknown keys and malformed ingredients are errors)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe is a mapping with keys {', '.join(KEYS)}")
    unknown = sorted(str(k) for k in raw if k not in KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown recipe keys {', '.join(unknown)}; valid: {', '.join(KEYS)}")
    for key in ("method", "base"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise ConfigError(f"{path}: '{key}' must be a name or path, got {raw[key]!r}")
    items = raw.get("ingredients") or []
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: 'ingredients' must be a non-empty list")
    paths, weights = [], []
    for item in items:
        if isinstance(item, str):
            paths.append(item)
            weights.append(None)
        elif (isinstance(item, dict) and isinstance(item.get("path"), str)
              and all(k in ("path", "weight") for k in item)):
            paths.append(item["path"])
            weight = item.get("weight")
            weights.append(None if weight is None else coerce_field(f"{path}: weight", weight, float))
        else:
            raise ConfigError(f"{path}: ingredient {item!r} must be a path or {{path: ..., weight: ...}}")
    given = [w for w in weights if w is not None]
    if given and len(given) != len(weights):
        raise ConfigError(f"{path}: give a weight for every ingredient or for none")
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: 'parameters' must be a mapping")
    here = path.parent
    return SoupRecipe(
        method=str(raw.get("method", "uniform")),
        ingredients=[_resolve(p, here) for p in paths],
        weights=given or None,
        base=_resolve(raw["base"], here) if raw.get("base") else None,
        parameters={str(k): v for k, v in params.items()},
    )
