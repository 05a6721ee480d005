"""The one configuration grammar: `KEY=VALUE` overrides for dataclass configs.

Every command takes positional `KEY=VALUE` pairs; dict-valued fields take dotted sub-keys
(`loss_options.tau=0.5`); values are YAML scalars coerced to the field's annotated type, and
a bad key or value is a one-line ConfigError naming it (unknown keys list the valid ones).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import types
import typing
from collections.abc import Iterable
from typing import Any, TypeVar, Union

import yaml

from longtail.errors import ConfigError
from longtail.io import safe_load_yaml

T = TypeVar("T")
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # 1e-3, 2.5E4


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """Parse ['epochs=1', 'lr=0.02', 'on-corrupt=skip'] into typed values (YAML scalars);
    dashes in keys become underscores."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got '{pair}'")
        try:
            value = safe_load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:  # not a YAML scalar: the text itself (the field's type decides)
            value = raw
        if isinstance(value, str) and value.lower() == "none":  # Python spelling of null
            value = None
        out[key.strip().replace("-", "_")] = value
    return out


def apply_overrides(cfg: T, overrides: dict[str, Any]) -> T:
    """A copy of dataclass `cfg` with `overrides` applied (the config's `__post_init__` validates).

    'name.sub' keys update one entry of a dict field; plain keys replace a field's value; every
    value is coerced to the field's annotated type (`coerce_field`). A config's `OPTIONS_OF`
    (name field -> its options field, e.g. loss -> loss_options) ties options to a choice:
    overrides that change the choice without giving its options start them empty, so the
    options of a preset's loss never reach another loss (`loss=ce` after a preset's
    `loss_options.tau`); options given in the same overrides apply on top.
    """
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    hints = _type_hints(type(cfg))
    plain: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        head, dot, sub = key.partition(".")
        if head not in fields:
            raise ConfigError(f"unknown config key '{key}'; valid keys: {', '.join(fields)}")
        if dot:
            if _base_type(hints[head]) is not dict:
                dicts = [n for n in fields if _base_type(hints[n]) is dict]
                raise ConfigError(f"'{key}': '{head}' is not a dict field; only "
                                  f"{', '.join(dicts) or 'none'} take dotted sub-keys")
            nested.setdefault(head, {})[sub] = value
        else:
            plain[key] = coerce_field(key, value, hints[key])
    for choice, options in getattr(type(cfg), "OPTIONS_OF", {}).items():
        if choice in plain and plain[choice] != getattr(cfg, choice) and options not in plain:
            plain[options] = {}  # issue 22 item 4: a new loss / adapter / method starts without the old one's options
    for name, entries in nested.items():  # sub-keys update the (possibly just replaced) dict
        plain[name] = {**(plain.get(name, getattr(cfg, name)) or {}), **entries}
    return dataclasses.replace(cfg, **plain)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """A config class's resolved field types (resolving the string annotations costs ~1 ms a call)."""
    return typing.get_type_hints(cls)


def _base_type(hint: Any) -> Any:
    """The non-None type of a hint (`dict[str, Any] | None` -> dict, `list[int]` -> list)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else hint
    return origin or hint


def coerce_field(key: str, value: Any, hint: Any) -> Any:
    """`value` as the type `hint` asks for (YAML gives 1 for '1'; a float field gets 1.0)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        exact = [a for a in args if isinstance(a, type) and isinstance(value, a)
                 and not (isinstance(value, bool) and a is not bool)]
        if exact:  # 0.5 for `str | float` stays a float
            return value
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce_field(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r}: expected {_type_name(hint)}")
    base = origin or hint
    if base is Any or base is typing.Any:
        return value
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):  # 1e9 (YAML 1.1: a string)
            value = float(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):  # YAML 1.1 reads 1e-3 as a string
            return float(value)
    elif base is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif base in (list, tuple):
        items = value if isinstance(value, (list, tuple)) else [value]
        item_hints = typing.get_args(hint)
        if item_hints and item_hints[-1] is not Ellipsis and base is list:
            items = [coerce_field(key, v, item_hints[0]) for v in items]
        elif item_hints and item_hints[-1] is Ellipsis:
            items = [coerce_field(key, v, item_hints[0]) for v in items]
        elif item_hints and len(item_hints) == len(items):
            items = [coerce_field(key, v, h) for v, h in zip(items, item_hints)]
        return base(items)
    elif base is dict:
        if isinstance(value, dict):
            return dict(value)
    elif isinstance(base, type):
        if isinstance(value, base):
            return value
    else:
        return value
    raise ConfigError(f"{key}={value!r}: expected {_type_name(hint)}")


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "none"
    base = typing.get_origin(hint) or hint
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(base, getattr(base, "__name__", str(base)))


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


def add_override_arguments(parser: Any, example: str = "lr=0.01 loss_options.tau=0.5") -> None:
    """The positional `KEY=VALUE` overrides every command takes, and `--option` (dataset options)."""
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help=f"config overrides, dotted keys for dict fields (e.g. {example})")


def add_option_argument(parser: Any, target: str = "data_options", help: str | None = None) -> None:
    """`--option K=V`, one pair per flag, repeatable: sugar for the override `TARGET.K=V`."""
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help=help or f"dataset option (= {target}.KEY=VALUE; repeatable), e.g. ir=100")


def command_overrides(positional: Iterable[str], sugar: dict[str, Any] | None = None,
                      options: dict[str, Iterable[str]] | None = None) -> dict[str, Any]:
    """One overrides dict from a command line: flag values given (`sugar`, None = not given),
    `--option`-style pairs under their dict field (`options`: field -> pairs), then the
    positional KEY=VALUE pairs, which win."""
    out = {k: v for k, v in (sugar or {}).items() if v is not None}
    for field_name, pairs in (options or {}).items():
        out.update({f"{field_name}.{k}": v for k, v in parse_overrides(pairs).items()})
    out.update(parse_overrides(positional))
    return out
