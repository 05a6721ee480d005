"""Probe methods `vmf-kde`, `gaussian-kde`, `smote`, `distribution-calibration`: oversample the (normalised) training
embeddings, then train the probe's head on real + synthetic rows (docs/methods.md §4.4 steps 3-5).
The oversamplers themselves are the library `longtail.methods.latent` (which knows nothing of
the probe); this module is where the probe package turns them into methods.

Options come from `cfg.method_options` (e.g. `method_options.k_neighbors=3`,
`method_options.sampling_strategy=median`): any field of the oversampler except seed / device /
memory (those are the probe's) plus `loss_prior`; they are checked when the ProbeConfig is
built. The probe's `memory` budget caps the synthetic rows (`oversample.cap_targets`: the
largest targets are lowered to one common cap, with a warning; recorded as `budget_cap`).

Priors after resampling: the loss (LA, balanced-softmax, ...) uses the class counts of the
data it is trained on, `loss_prior="resampled"` (default; with the default balanced targets LA
then equals CE, as in the paper: "no logit adjustment, data are balanced"), or the real
counts, `loss_prior="original"` (LA on top of oversampling). The saved Probe keeps the real
counts, so groups and any post-hoc `posthoc_tau` use the real training prior.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from longtail.data.features import FeatureSet
from longtail.errors import ConfigError
from longtail.methods.latent.oversample import OVERSAMPLERS, SyntheticSamples, make_oversampler
from longtail.methods.probe.config import ProbeConfig
from longtail.methods.probe.methods import add_zero_shot, adjust, initial_weights
from longtail.methods.probe.model import Probe
from longtail.methods.probe.registry import probe_method
from longtail.methods.probe.train import train_head_with

LOSS_PRIORS = ("resampled", "original")
PLOT_CLASSES = 4  # tail classes shown in the diagnostic projection
_PROBE_OWNED = ("seed", "device", "memory")  # oversampler fields set from the ProbeConfig, not method_options


def _split_options(name: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(loss_prior, oversampler options) from method_options; ConfigError on a bad one."""
    params = dict(options)
    loss_prior = params.pop("loss_prior", "resampled")
    if loss_prior not in LOSS_PRIORS:
        raise ConfigError(f"loss_prior must be one of {LOSS_PRIORS}, got '{loss_prior}'")
    owned = sorted(set(params) & set(_PROBE_OWNED))
    if owned:
        raise ConfigError(f"method '{name}': set {owned[0]} as the probe's own key ({owned[0]}=...), "
                          "not in method_options")
    valid = ["loss_prior"] + [f.name for f in fields(OVERSAMPLERS.get(name)) if f.name not in _PROBE_OWNED]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(f"method '{name}': unknown method_options key '{unknown[0]}' (valid: {', '.join(valid)})")
    return loss_prior, params


def oversample_features(
    train: FeatureSet, name: str, cfg: ProbeConfig, params: dict[str, Any] | None = None
) -> tuple[torch.Tensor, SyntheticSamples]:
    """(real features as trained on, synthetic samples) for oversampler `name`; cfg gives seed/device."""
    x = torch.as_tensor(np.asarray(train.features, dtype=np.float32))
    if cfg.normalize:
        x = F.normalize(x, dim=1)
    elif name == "vmf-kde" and (x.norm(dim=1) - 1).abs().max() > 1e-3:
        raise ConfigError("vmf-kde samples on the unit sphere: use normalize=True or unit-norm features")
    sampler = make_oversampler(name, seed=cfg.seed, device=cfg.device, memory=cfg.memory, **(params or {}))
    synth = sampler.sample(x, train.labels, num_classes=train.num_classes, class_names=train.names())
    return x, synth


def fit_oversampled(name: str, train: FeatureSet, cfg: ProbeConfig, val: FeatureSet | None = None) -> Probe:
    """Resample with oversampler `name`, train cfg.head with cfg.loss, then optional interpolation/post-hoc."""
    loss_prior, params = _split_options(name, cfg.method_options)
    real_counts = train.class_counts()
    x, synth = oversample_features(train, name, cfg, params)
    device = synth.features.device  # stay on the oversampler's device (GPU) for training
    tail = [int(c) for c in np.argsort(real_counts, kind="stable")[:PLOT_CLASSES]]
    shown = np.isin(np.asarray(train.labels), tail)  # the figure's real rows: the rest is not kept
    real_x, real_y = x[torch.as_tensor(shown)].numpy(), np.asarray(train.labels)[shown]
    features = torch.cat([x.to(device), synth.features.to(x.dtype)])
    del x  # at iNat size each N x d copy is 1.3 GB: `features` is the one kept
    labels = torch.cat([torch.as_tensor(train.labels, device=device).long(), synth.labels])
    resampled_counts = np.bincount(labels.cpu().numpy(), minlength=train.num_classes)
    loss_counts = resampled_counts if loss_prior == "resampled" else real_counts
    probe = train_head_with(cfg, features, labels, loss_counts, init=initial_weights(train, cfg),
                            class_names=train.names(), copy=False)
    probe.class_counts = np.asarray(real_counts, dtype=np.int64)
    probe.info["oversampling"] = {
        **synth.info, "loss_prior": loss_prior, "real_counts": real_counts.tolist(),
        "resampled_counts": resampled_counts.tolist(),
    }
    probe = adjust(add_zero_shot(probe, train, cfg), cfg, val)
    # Not saved with the head: kept on the object for the run report's diagnostic figure.
    probe.synthetic = synth
    probe.write_figures = _figure_writer(real_x, real_y, synth, tail, train.names())
    return probe


def _figure_writer(real_x, real_y, synth: SyntheticSamples, tail: list[int], names) -> Callable[..., list[Path]]:
    def write_figures(folder: str | Path, test: FeatureSet | None = None) -> list[Path]:
        """Write latent_projection.png (real vs synthetic, PCA) for the smallest classes."""
        from longtail.methods.latent.plots import plot_latent_projection

        if synth.labels.numel() == 0:
            return []
        path = Path(folder) / "latent_projection.png"
        plot_latent_projection(real_x, real_y, synth.features.cpu().numpy(), synth.labels.cpu().numpy(),
                               tail, path, class_names=names)
        return [path]

    return write_figures


def _register(name: str, summary: str) -> None:
    def fit(train: FeatureSet, cfg: ProbeConfig, val: FeatureSet | None = None) -> Probe:
        return fit_oversampled(name, train, cfg, val)

    def check_options(options: dict[str, Any]) -> None:
        make_oversampler(name, **_split_options(name, options)[1])  # names and values, before any data

    fit.__doc__ = summary
    fit.__name__ = f"fit_{name.replace('-', '_')}"
    probe_method(name, check_options=check_options, stochastic=True)(fit)


_register("vmf-kde", "Latent vMF-KDE oversampling to the largest class, then the linear probe (arXiv 2509.15859).")
_register("gaussian-kde", "Gaussian-KDE oversampling of the embeddings (Scott bandwidth), then the linear probe.")
_register("smote", "SMOTE interpolation between in-class neighbours, then the linear probe.")
_register("distribution-calibration", "Tail classes sampled from Gaussians calibrated with their k nearest head "
          "classes (Yang et al. 2021, Tukey space), then the linear probe.")
