"""Latent-space synthetic features (arXiv 2509.15859): the oversamplers (`oversample`;
distribution calibration's maths in `calibration`) and the same as imbalanced-learn samplers
(`samplers`). The `vmf-kde` / `gaussian-kde` / `smote` / `distribution-calibration` probe
methods built on them live in `longtail.methods.probe.oversampling`; the vMF maths lives in
`longtail.maths.vmf`."""

from longtail.methods.latent.oversample import OVERSAMPLERS, make_oversampler

__all__ = ["OVERSAMPLERS", "make_oversampler"]
SAMPLER_NAMES = ("VMFKDESampler", "GaussianKDESampler", "SMOTESampler", "DistributionCalibrationSampler")


def __getattr__(name: str):  # the imbalanced-learn samplers load on first use (optional dependency)
    if name in SAMPLER_NAMES:
        from longtail.methods.latent import samplers

        return getattr(samplers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
