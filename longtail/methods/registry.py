"""Registries of probe methods and losses; method modules register themselves on import."""

from __future__ import annotations

import importlib

from longtail.registry import Registry

PROBE_METHODS: Registry = Registry("probe method")
LOSSES: Registry = Registry("loss")

# Modules whose import registers probe methods / losses (see load_builtin_methods).
_BUILTIN_MODULES = (
    "longtail.methods.losses",
    "longtail.methods.probe",
    "longtail.methods.latent",
    "longtail.methods.prototypes",
)


def load_builtin_methods() -> None:
    """Import every built-in method module so that its registrations take effect."""
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
