"""`key=value` overrides for dataclass configs (CLI), with errors that list the valid keys."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable
from typing import Any, TypeVar

import yaml

from longtail.errors import ConfigError

T = TypeVar("T")


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """Parse ['epochs=1', 'lr=0.02', 'on-corrupt=skip'] into typed values (YAML scalars);
    dashes in keys become underscores."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got '{pair}'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and value.lower() == "none":  # Python spelling of null
            value = None
        out[key.strip().replace("-", "_")] = value
    return out


def update_dataclass(cfg: T, overrides: dict[str, Any]) -> T:
    """A copy of dataclass `cfg` with `overrides`; unknown keys raise ConfigError listing valid ones."""
    valid = [f.name for f in dataclasses.fields(cfg)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"valid keys: {', '.join(valid)}"
        )
    return dataclasses.replace(cfg, **overrides)


def call_with_options(fn: Any, what: str, *args: Any, **options: Any) -> Any:
    """fn(*args, **options); an option fn does not accept is a ConfigError listing valid ones."""
    params = list(inspect.signature(fn).parameters.values())
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        valid = [p.name for p in params[len(args):]]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ConfigError(
                f"{what}: unknown option '{unknown[0]}' (options: {', '.join(valid) or 'none'})"
            )
    return fn(*args, **options)
