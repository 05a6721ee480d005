"""The probe-method registry: `method=NAME` picks a `ProbeMethod` (how to fit, which options).

Methods register themselves when their module is imported, and the package `__init__`
imports every built-in method module explicitly (`methods`, `decoupling`, `oversampling`,
`auto`), as peft's and timm's package inits do. Importing any module of the probe package runs
that `__init__` first, so the registry is full before a `ProbeConfig` is built; this module sits
below every method so the config can validate `method` / `method_options` without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from longtail.errors import ConfigError
from longtail.registry import Registry


@dataclass(frozen=True)
class ProbeMethod:
    """One probe method.

    fit: `fit(train: FeatureSet, cfg: ProbeConfig, val: FeatureSet | None) -> Probe`.
    check_options: raises ConfigError on bad `cfg.method_options` (None: the method takes none);
      called when the config is built, before any data is read.
    check_config: raises ConfigError on other fields of the whole ProbeConfig that the method
      cannot take (e.g. `auto` chooses the loss itself); also called when the config is built.
    trains: False for methods without a trained head (zero-shot), which cannot interpolate.
    needs_validation: the options in `method_options` that choose something on a validation
      set, in words (e.g. ["method_options.tau='auto'"]); None: none do.
    stochastic: True for methods whose fit draws random numbers beyond the seeded split
      (oversampling, sampling from fitted densities): their results vary with `seed`, so
      benchmarks repeat them over seeds; the convex fits of the others are deterministic.
    """

    fit: Callable[..., Any]
    check_options: Callable[[dict[str, Any]], None] | None = None
    trains: bool = True
    needs_validation: Callable[[dict[str, Any]], list[str]] | None = None
    check_config: Callable[[Any], None] | None = None
    stochastic: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "__doc__", self.fit.__doc__)  # `longtail list` shows the method's own doc

    def validate(self, cfg: Any) -> None:
        """cfg.method_options, then the method's own check of the whole config (cfg: a ProbeConfig)."""
        if self.check_options is not None:
            self.check_options(cfg.method_options)
        elif cfg.method_options:
            raise ConfigError(f"method '{cfg.method}' takes no method_options (got {', '.join(sorted(cfg.method_options))})")
        if self.check_config is not None:
            self.check_config(cfg)

    def validation_needs(self, options: dict[str, Any]) -> list[str]:
        """The method options that need a validation set (empty when none)."""
        return [] if self.needs_validation is None else list(self.needs_validation(options))


PROBE_METHODS: Registry[ProbeMethod] = Registry("probe method")


def probe_method(
    name: str, *, check_options: Callable[[dict[str, Any]], None] | None = None, trains: bool = True,
    needs_validation: Callable[[dict[str, Any]], list[str]] | None = None,
    check_config: Callable[[Any], None] | None = None, stochastic: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register `fit` as probe method `name` (returns `fit` unchanged)."""

    def register(fit: Callable[..., Any]) -> Callable[..., Any]:
        PROBE_METHODS.register(name, ProbeMethod(fit, check_options, trains, needs_validation, check_config, stochastic))
        return fit

    return register


def load_methods() -> Registry[ProbeMethod]:
    """The method registry (full once `longtail.methods.probe` is imported, which any import
    of this module implies)."""
    return PROBE_METHODS


def get_method(name: str) -> ProbeMethod:
    """The registered method `name` (UnknownNameError listing every method otherwise)."""
    return PROBE_METHODS.get(name)
