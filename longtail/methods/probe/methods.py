"""The built-in probe methods `linear`, `cosine` and `zero-shot` (the oversampling methods
`vmf-kde`, `gaussian-kde`, `smote` live in `longtail.methods.probe.oversampling`).

A method is `fit(train, cfg, val) -> Probe`, registered with `@probe_method(NAME)`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from longtail.data.features import FeatureSet
from longtail.data.stats import require_nonempty
from longtail.methods.probe import prototypes
from longtail.methods.probe.config import ProbeConfig
from longtail.methods.probe.model import Probe
from longtail.methods.probe.registry import probe_method
from longtail.methods.probe.select import select_adjustments
from longtail.methods.probe.train import train_head_with


def add_zero_shot(probe: Probe, train: FeatureSet, cfg: ProbeConfig) -> Probe:
    """Attach the prototypes' zero-shot head when cfg.interpolate asks for interpolation."""
    if cfg.interpolate is not None:
        probe.zero_shot = prototypes.interpolation_head(train, cfg.scale, probe.normalize)
        probe.info["zero_shot_rule"] = prototypes.zero_shot_rule(probe.zero_shot, probe.normalize)
    return probe


def initial_weights(train: FeatureSet, cfg: ProbeConfig) -> dict[str, Any] | None:
    """The head's starting weights: the prototypes' (init="prototypes") or None (random)."""
    if cfg.init != "prototypes":
        return None
    return prototypes.prototype_init(train, cfg.head, cfg.scale, normalize=cfg.normalize)


def adjust(probe: Probe, cfg: ProbeConfig, val: FeatureSet | None) -> Probe:
    """The post-hoc choices of cfg (interpolation alpha, post-hoc tau) on `val`."""
    return select_adjustments(probe, val, interpolate=cfg.interpolate, posthoc_tau=cfg.posthoc_tau)


@probe_method("linear")
def fit_linear(train: FeatureSet, cfg: ProbeConfig, val: FeatureSet | None = None) -> Probe:
    """Train cfg.head (linear by default) with cfg.loss; optional prototype init/interpolation."""
    counts = train.class_counts()
    require_nonempty(counts, train.names())
    probe = train_head_with(cfg, train.features, train.labels, counts, init=initial_weights(train, cfg),
                            class_names=train.names())
    return adjust(add_zero_shot(probe, train, cfg), cfg, val)


@probe_method("cosine")
def fit_cosine(train: FeatureSet, cfg: ProbeConfig, val: FeatureSet | None = None) -> Probe:
    """The linear method with a cosine head z = s * cos(w_c, f) (LIFT's classifier)."""
    return fit_linear(train, replace(cfg, head="cosine"), val)


@probe_method("zero-shot", trains=False)
def fit_zero_shot(train: FeatureSet, cfg: ProbeConfig, val: FeatureSet | None = None) -> Probe:
    """No training: classify with the file's prototypes (+ optional post-hoc adjustment).

    The prototype source decides the rule (`longtail.methods.probe.prototypes`): classifier
    rows (meta prototype_kind "classifier") give z = W f + b on raw features whatever
    cfg.normalize says, i.e. exactly the backbone's own head restricted to the dataset's
    classes; text embeddings a cosine head (cfg.normalize changes nothing); files without
    the key the earlier rule (cosine for unit prototypes, else linear on features
    L2-normalised when cfg.normalize).
    """
    head = prototypes.zero_shot_head(train, cfg.scale)
    normalize = prototypes.zero_shot_normalize(train, cfg.normalize)
    info = {"zero_shot_rule": prototypes.zero_shot_rule(head, normalize),
            "prototype_kind": prototypes.prototype_kind(train)}
    probe = Probe(head, train.class_counts(), normalize=normalize, class_names=train.names(),
                  config=cfg.to_dict(), info=info)
    return adjust(probe, cfg, val)
