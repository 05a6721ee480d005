"""Latent-space synthetic features (arXiv 2509.15859): vMF toolkit, oversamplers and the
`vmf-kde` / `gaussian-kde` / `smote` probe methods (registered on import)."""

from longtail.methods.latent import methods  # noqa: F401  (registers the probe methods)
from longtail.methods.latent.oversample import OVERSAMPLERS, make_oversampler
from longtail.methods.latent.vmf import log_vmf_normalizer, mean_resultant_length, sample_vmf

__all__ = ["OVERSAMPLERS", "log_vmf_normalizer", "make_oversampler", "mean_resultant_length", "sample_vmf"]
