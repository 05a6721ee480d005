"""The latent oversamplers as imbalanced-learn samplers, for `imblearn.pipeline.Pipeline`.

`VMFKDESampler`, `GaussianKDESampler`, `SMOTESampler` and `DistributionCalibrationSampler`
wrap the oversamplers of `oversample` (OVERSAMPLERS, one implementation each) behind
imbalanced-learn's `BaseOverSampler`: its `sampling_strategy` semantics ('auto', 'minority',
'not minority', 'not majority', 'all', a float for two classes, a dict, a callable), its input
checks (lists, data frames, sparse matrices, made dense for sampling; one-vs-all targets) and
`random_state`. Labels may be any values.
Resampled data = the real rows, unchanged and first, then the synthetic rows.

Needs the optional `imbalanced-learn` package (`pip install imbalanced-learn`).
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from imblearn.over_sampling.base import BaseOverSampler
from scipy import sparse
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from longtail.methods.latent.oversample import make_oversampler

_DEVICE = [str]  # "auto", "cpu", "cuda", "cuda:N": checked by longtail.device


class LatentOverSampler(BaseOverSampler):
    """Base: `oversampler` names the OVERSAMPLERS entry; subclasses declare its parameters."""

    oversampler = ""
    _parameter_constraints: dict = {**BaseOverSampler._parameter_constraints, "device": _DEVICE}

    def _options(self) -> dict[str, Any]:
        """The oversampler's own parameters (everything but sampling_strategy, random_state, device)."""
        return {k: v for k, v in self.get_params(deep=False).items()
                if k not in ("sampling_strategy", "random_state", "device")}

    def _seed(self) -> int:
        """An int random_state is the seed itself; None / a RandomState draws one from it."""
        if isinstance(self.random_state, numbers.Integral):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def _fit_resample(self, X, y):  # noqa: N803
        classes, codes = np.unique(y, return_inverse=True)
        counts = np.bincount(codes, minlength=classes.size)
        wanted = np.array([self.sampling_strategy_.get(c, 0) for c in classes.tolist()], dtype=np.int64)
        sampler = make_oversampler(self.oversampler, sampling_strategy=counts + wanted, seed=self._seed(),
                                   device=self.device, **self._options())
        dense = X.toarray() if sparse.issparse(X) else np.require(X, requirements="W")  # dense, writable
        synth = sampler.sample(dense, codes, num_classes=classes.size)
        self.sampler_info_ = synth.info
        x_new = synth.features.cpu().numpy().astype(X.dtype, copy=False)
        y_new = classes[synth.labels.cpu().numpy()].astype(y.dtype, copy=False)
        x_res = sparse.vstack([X, x_new], format=X.format) if sparse.issparse(X) else np.concatenate([X, x_new])
        return x_res, np.concatenate([y, y_new])


class VMFKDESampler(LatentOverSampler):
    """vMF kernel around each seed row with its local concentration (docs/methods.md §4.4)."""

    oversampler = "vmf-kde"
    _parameter_constraints: dict = {
        **LatentOverSampler._parameter_constraints,
        "k_neighbors": [Interval(numbers.Integral, 1, None, closed="left")],
        "min_kappa": [Interval(numbers.Real, 0, None, closed="neither")],
        "max_kappa": [Interval(numbers.Real, 0, None, closed="neither")],
    }

    def __init__(self, *, sampling_strategy="auto", random_state=None, k_neighbors: int = 1,
                 min_kappa: float = 1e-3, max_kappa: float = 1e7, device: str = "auto") -> None:
        super().__init__(sampling_strategy=sampling_strategy)
        self.random_state = random_state
        self.k_neighbors = k_neighbors
        self.min_kappa = min_kappa
        self.max_kappa = max_kappa
        self.device = device


class GaussianKDESampler(LatentOverSampler):
    """Isotropic Gaussian kernel per class (bandwidth 'scott', 'silverman' or a number)."""

    oversampler = "gaussian-kde"
    _parameter_constraints: dict = {
        **LatentOverSampler._parameter_constraints,
        "bandwidth": [StrOptions({"scott", "silverman"}), Interval(numbers.Real, 0, None, closed="neither")],
        "project": ["boolean"],
    }

    def __init__(self, *, sampling_strategy="auto", random_state=None, bandwidth: str | float = "scott",
                 project: bool = True, device: str = "auto") -> None:
        super().__init__(sampling_strategy=sampling_strategy)
        self.random_state = random_state
        self.bandwidth = bandwidth
        self.project = project
        self.device = device


class SMOTESampler(LatentOverSampler):
    """SMOTE with cosine in-class neighbours, batched in torch (GPU-ready)."""

    oversampler = "smote"
    _parameter_constraints: dict = {
        **LatentOverSampler._parameter_constraints,
        "k_neighbors": [Interval(numbers.Integral, 1, None, closed="left")],
        "project": ["boolean"],
    }

    def __init__(self, *, sampling_strategy="auto", random_state=None, k_neighbors: int = 5,
                 project: bool = False, device: str = "auto") -> None:
        super().__init__(sampling_strategy=sampling_strategy)
        self.random_state = random_state
        self.k_neighbors = k_neighbors
        self.project = project
        self.device = device


class DistributionCalibrationSampler(LatentOverSampler):
    """Distribution calibration (Yang et al. 2021, docs/methods.md §11).

    Head (base) classes, n_c > head_threshold, lend their statistics and get no synthetic
    rows, whatever `sampling_strategy` asks for them. `head_threshold`: a count (None: the
    many-shot threshold, 100), or a float in (0, 1): that fraction of the largest class.
    """

    oversampler = "distribution-calibration"
    _parameter_constraints: dict = {
        **LatentOverSampler._parameter_constraints,
        "k": [Interval(numbers.Integral, 1, None, closed="left")],
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
        "tukey_lambda": [Interval(numbers.Real, 0, None, closed="neither")],
        "head_threshold": [Interval(numbers.Integral, 1, None, closed="left"),
                           Interval(numbers.Real, 0, 1, closed="neither"), None],
        "calibrate": [StrOptions({"sample", "class"})],
        "alpha_relative": ["boolean"],
        "signed_tukey": ["boolean"],
    }

    def __init__(self, *, sampling_strategy="auto", random_state=None, k: int = 2, alpha: float = 0.21,
                 tukey_lambda: float = 0.5, head_threshold: int | float | None = None, calibrate: str = "sample",
                 alpha_relative: bool = True, signed_tukey: bool = False, device: str = "auto") -> None:
        super().__init__(sampling_strategy=sampling_strategy)
        self.random_state = random_state
        self.k = k
        self.alpha = alpha
        self.tukey_lambda = tukey_lambda
        self.head_threshold = head_threshold
        self.calibrate = calibrate
        self.alpha_relative = alpha_relative
        self.signed_tukey = signed_tukey
        self.device = device

    def _fit_resample(self, X, y):  # noqa: N803
        self._largest = int(np.unique(y, return_counts=True)[1].max())
        return super()._fit_resample(X, y)

    def _options(self) -> dict[str, Any]:
        options = super()._options()
        threshold = options["head_threshold"]
        if isinstance(threshold, float):  # a fraction of the largest class
            options["head_threshold"] = max(1, int(threshold * self._largest))
        return options


SAMPLERS = {cls.oversampler: cls for cls in (VMFKDESampler, GaussianKDESampler, SMOTESampler,
                                             DistributionCalibrationSampler)}
