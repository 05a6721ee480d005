"""Latent-space synthetic features (arXiv 2509.15859): the oversamplers (`oversample`) and the
`vmf-kde` / `gaussian-kde` / `smote` / `distribution-calibration` probe methods (`methods`,
registered on import; distribution calibration's maths in `calibration`). The vMF maths lives
in `longtail.maths.vmf`."""

from longtail.methods.latent import methods  # noqa: F401  (registers the probe methods)
from longtail.methods.latent.oversample import OVERSAMPLERS, make_oversampler

__all__ = ["OVERSAMPLERS", "make_oversampler"]
SAMPLER_NAMES = ("VMFKDESampler", "GaussianKDESampler", "SMOTESampler", "DistributionCalibrationSampler")


def __getattr__(name: str):  # the imbalanced-learn samplers load on first use (optional dependency)
    if name in SAMPLER_NAMES:
        from longtail.methods.latent import samplers

        return getattr(samplers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
