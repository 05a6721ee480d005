"""`open_features(spec)`: a feature file path or a built-in feature preset, as a FeatureSet.

The presets are generated offline: `synthetic_features[:train|val|test]` is the demo's vMF
benchmark (seed 0; default split train). `longtail.data.features.load_features` stays the
pure file reader; this module is the one place that knows the preset names.
"""

from __future__ import annotations

from pathlib import Path

from longtail.data.features import SUFFIXES, FeatureSet, load_features
from longtail.data.synthetic_features import NAME as SYNTHETIC
from longtail.data.synthetic_features import make_synthetic_benchmark
from longtail.errors import DataError

SPLITS = ("train", "val", "test")


def is_feature_spec(spec: str | Path) -> bool:
    """True for a feature file path or the built-in `synthetic_features[:split]` benchmark."""
    return Path(spec).suffix in SUFFIXES or str(spec).split(":")[0] == SYNTHETIC


def open_features(spec: str | Path) -> FeatureSet:
    """The FeatureSet named by `spec`: a `.npz` / `.safetensors` file, or `synthetic_features:<split>`."""
    name, _, split = str(spec).partition(":")
    if name != SYNTHETIC:
        return load_features(spec)
    split = split or "train"
    if split not in SPLITS:
        raise DataError(f"{spec}: unknown split '{split}' (use {SYNTHETIC}:train, :val or :test)")
    # the splits are drawn before the Bayes-limit Monte-Carlo sample, which is not needed here
    return getattr(make_synthetic_benchmark(seed=0, bayes_per_class=1), split)
