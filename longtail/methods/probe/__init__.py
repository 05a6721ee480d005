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
  estimator  LongTailClassifier: the probe as a scikit-learn estimator
  run        the probe run kind: write a run folder, re-evaluate it (registered on import)
"""

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

load_methods()  # register the built-in methods (by name: the latent ones import this package)

__all__ = [
    "ALPHA_GRID", "PROBE_METHODS", "LongTailClassifier", "SOLVERS", "TAU_GRID", "Probe", "ProbeConfig", "calibrate_temperature",
    "evaluate_probe_run", "fit_probe", "load_methods", "log_prior", "probe_method", "run_probe",
    "select_adjustments", "train_head", "train_head_with",
]
