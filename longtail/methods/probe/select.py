"""Post-hoc choices on the validation set: interpolation alpha, post-hoc logit adjustment tau
and calibration temperature (docs/methods.md §1.2 for LA, Guo et al. 2017 for temperature).

Each option is None (off), a fixed value, or "auto" (chosen on `val`); "auto" without a
validation set is a ConfigError. The choices are stored on the Probe (and in its info).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from longtail.data.features import FeatureSet
from longtail.errors import ConfigError
from longtail.eval.metrics import balanced_accuracy
from longtail.methods.probe.model import Probe

TAU_GRID = np.round(np.arange(0.0, 2.0001, 0.1), 2)  # post-hoc tau candidates for "auto"
ALPHA_GRID = np.round(np.arange(0.0, 1.0001, 0.1), 2)  # interpolation candidates for "auto"


def _grid(option: str | float | None, grid: np.ndarray, default: float) -> np.ndarray:
    if option is None:
        return np.array([default])
    return grid if option == "auto" else np.array([float(option)])


def select_adjustments(
    probe: Probe, val: FeatureSet | None, *, interpolate: str | float | None = None,
    posthoc_tau: str | float | None = None,
) -> Probe:
    """Set probe.alpha and probe.posthoc_tau; "auto" values maximise val balanced accuracy.

    alpha applies only when the probe has a zero-shot head (else 1). Both "auto": joint grid
    search; ties go to the first grid point (smaller tau, smaller alpha).
    """
    alpha_grid = _grid(interpolate if probe.zero_shot is not None else None, ALPHA_GRID, 1.0)
    tau_grid = _grid(posthoc_tau, TAU_GRID, 0.0)
    if alpha_grid.size == 1 and tau_grid.size == 1:
        probe.alpha, probe.posthoc_tau = float(alpha_grid[0]), float(tau_grid[0])
        return probe
    if val is None:
        raise ConfigError("posthoc_tau/interpolate 'auto' needs a validation set (val)")
    trained, zs = probe.parts(val.features)
    scores = np.array([[balanced_accuracy(probe.combine(trained, zs, a, t).numpy(), val.labels,
                                          probe.num_classes) for t in tau_grid] for a in alpha_grid])
    i, j = np.unravel_index(np.argmax(scores), scores.shape)
    probe.alpha, probe.posthoc_tau = float(alpha_grid[i]), float(tau_grid[j])
    probe.info["selection"] = {"metric": "val balanced accuracy", "alpha_grid": alpha_grid,
                               "tau_grid": tau_grid, "scores": scores, "best": float(scores[i, j])}
    return probe


def calibrate_temperature(probe: Probe, val: FeatureSet | None) -> Probe:
    """Temperature scaling: the T > 0 minimising validation NLL of logits / T (predictions unchanged)."""
    if val is None:
        raise ConfigError("calibrate='temperature' needs a validation set (val)")
    probe.temperature = 1.0
    probe.temperature, nll = fit_temperature(probe.logits(val.features), val.labels)
    probe.info["calibration"] = {"method": "temperature", "temperature": probe.temperature, "val_nll": nll}
    return probe


def fit_temperature(logits, labels) -> tuple[float, float]:
    """(T > 0 minimising the NLL of softmax(logits / T) on labelled validation rows, that NLL)."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    temperature = float(log_t.detach().exp())
    return temperature, float(F.cross_entropy(z / temperature, y))

