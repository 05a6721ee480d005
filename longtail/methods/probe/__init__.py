"""Probes on frozen features: a classifier head trained on feature files, evaluated per shot group.

Modules, one job each:
  config     ProbeConfig, validated on construction (names, options, ranges)
  registry   PROBE_METHODS (`method=`), below every method so the config can check names
  solvers    SOLVERS (`solver=`): full-batch L-BFGS and minibatch AdamW, explicit options
  model      Probe: the trained head -> logits, save/load (safetensors + JSON)
  train      train_head (explicit options) and fit_probe (a whole ProbeConfig)
  select     post-hoc interpolation alpha / tau / temperature chosen on validation
  prototypes class prototypes as a zero-shot head and as a head init
  methods    the built-in methods linear, cosine, zero-shot
  decoupling ncm, crt, tau-norm, lws (Kang et al. 2020; docs/methods.md §10)
  oversampling vmf-kde, gaussian-kde, smote, distribution-calibration (the `latent` oversamplers)
  auto       method=auto: selection on validation or k-fold CV, refit of the winner
  estimator  LongTailClassifier: the probe as a scikit-learn estimator
  run        a probe run: write a run folder, re-evaluate it

Importing the package imports every method module below, which registers the methods.
"""

# the built-in method modules: each registers its methods in PROBE_METHODS when imported
from longtail.methods.probe import auto, decoupling, methods, oversampling  # noqa: F401
from longtail.methods.probe.config import ProbeConfig
from longtail.methods.probe.estimator import LongTailClassifier
from longtail.methods.probe.model import Probe, log_prior
from longtail.methods.probe.registry import PROBE_METHODS, load_methods, probe_method
from longtail.methods.probe.run import evaluate_probe_run, run_probe
from longtail.methods.probe.select import (
    ALPHA_GRID,
    TAU_GRID,
    calibrate_temperature,
    select_adjustments,
)
from longtail.methods.probe.solvers import SOLVERS
from longtail.methods.probe.train import fit_probe, train_head, train_head_with

__all__ = [
    "ALPHA_GRID", "PROBE_METHODS", "LongTailClassifier", "SOLVERS", "TAU_GRID", "Probe", "ProbeConfig", "calibrate_temperature",
    "evaluate_probe_run", "fit_probe", "load_methods", "log_prior", "probe_method", "run_probe",
    "select_adjustments", "train_head", "train_head_with",
]
