"""The probe methods as a scikit-learn classifier: `LongTailClassifier(method=..., loss=...)`.

It drops into `Pipeline`, `cross_val_score`, `GridSearchCV` and imbalanced-learn's pipeline.
The constructor only stores parameters (scikit-learn's rule, so `clone` and `set_params`
work); `fit` builds and validates the `ProbeConfig` (bad values: one-line ConfigError, a
ValueError), maps the labels (any values, strings included) to 0..C-1 and calls `fit_probe`.
The CLI and run folders are built on the same `fit_probe`; nothing here writes files.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit, log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from longtail.data.features import FeatureSet
from longtail.data.splits import split_features
from longtail.errors import DataError
from longtail.methods.probe.config import ProbeConfig
from longtail.methods.probe.model import Probe
from longtail.methods.probe.train import fit_probe

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    def validate_data(estimator, X="no_validation", y="no_validation", **kwargs):  # noqa: N803
        return estimator._validate_data(X, y, **kwargs)

# Constructor parameter -> ProbeConfig field (all of them share the field's name and meaning).
CONFIG_PARAMS = (
    "method", "loss", "loss_options", "method_options", "head", "scale", "solver", "max_iter", "tol",
    "l2", "epochs", "lr", "batch_size", "normalize", "init", "l2_target", "posthoc_tau", "calibrate",
    "interpolate", "val_split", "val_per_class", "val_rule", "seed", "device",
)


class LongTailClassifier(ClassifierMixin, BaseEstimator):
    """A probe (docs/methods.md) trained on feature rows X with labels y, scikit-learn style.

    Parameters are the `ProbeConfig` fields of the same names (defaults: cosine head, logit-
    adjusted loss; `method="linear", loss="ce"` is LogisticRegression(C=1)). Dict options
    (`loss_options`, `method_options`) default to None (= {}). Methods that choose on
    validation (`posthoc_tau="auto"`, `interpolate="auto"`, `calibrate="temperature"`, ...)
    draw it from the training rows: set `val_split` or `val_per_class` (and `val_rule`).
    `prototypes` (C, d) and `prototype_bias` (C,), rows in the order of the sorted labels
    (`classes_`), feed `init="prototypes"`, `interpolate` and `method="zero-shot"`; give them
    to the constructor or to `fit` (fit's win).

    Fitted attributes: `classes_`, `n_features_in_` (and `feature_names_in_` for data frames),
    `probe_` (the trained `Probe`), `config_` (the validated `ProbeConfig`), `n_iter_` (solver
    iterations or steps; 0 for methods without training). Predictions use the probe's logits
    (`Probe.logits`) computed in float64, so they do not depend on the batch.
    """

    def __init__(
        self, method: str = "cosine", loss: str = "la", *, loss_options: dict | None = None,
        method_options: dict | None = None, head: str = "linear", scale: float = 25.0, solver: str = "lbfgs",
        max_iter: int = 1000, tol: float = 1e-4, l2: float | None = None, epochs: int = 30,
        lr: float | None = None, batch_size: int = 256, normalize: bool = True, init: str = "random",
        l2_target: str = "zero", posthoc_tau: float | str | None = None, calibrate: str | None = None,
        interpolate: float | str | None = None, val_split: float | None = None, val_per_class: int = 0,
        val_rule: str = "stratified", seed: int = 0, device: str = "auto", prototypes: np.ndarray | None = None,
        prototype_bias: np.ndarray | None = None,
    ) -> None:
        self.method = method
        self.loss = loss
        self.loss_options = loss_options
        self.method_options = method_options
        self.head = head
        self.scale = scale
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.l2 = l2
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.normalize = normalize
        self.init = init
        self.l2_target = l2_target
        self.posthoc_tau = posthoc_tau
        self.calibrate = calibrate
        self.interpolate = interpolate
        self.val_split = val_split
        self.val_per_class = val_per_class
        self.val_rule = val_rule
        self.seed = seed
        self.device = device
        self.prototypes = prototypes
        self.prototype_bias = prototype_bias

    def make_config(self) -> ProbeConfig:
        """The validated ProbeConfig of the current parameters (ConfigError on a bad one)."""
        values: dict[str, Any] = {name: getattr(self, name) for name in CONFIG_PARAMS}
        values["loss_options"] = dict(self.loss_options or {})
        values["method_options"] = dict(self.method_options or {})
        return ProbeConfig(**values)

    def fit(self, X, y, prototypes=None, prototype_bias=None) -> LongTailClassifier:  # noqa: N803
        """Train the probe on rows X (n, d) with labels y (n,); returns self."""
        cfg = self.make_config()  # before touching the data: a typo fails first
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if self.classes_.size < 2:
            raise DataError(f"{type(self).__name__} needs samples of at least 2 classes, got 1 class")
        protos = self.prototypes if prototypes is None else prototypes
        bias = self.prototype_bias if prototype_bias is None else prototype_bias
        train = FeatureSet(
            np.array(X, dtype=np.float32), codes.astype(np.int64), class_names=[str(c) for c in self.classes_],
            prototypes=None if protos is None else np.array(protos, dtype=np.float32),
            prototype_bias=None if bias is None else np.array(bias, dtype=np.float32), source="<fit X>",
        )
        val = None
        if cfg.needs_validation():
            if not cfg.validation_rule().active:
                raise DataError(f"{', '.join(cfg.needs_validation())} needs validation rows: set val_split "
                                f"or val_per_class")
            train, val, _ = split_features(train, cfg.validation_rule())
        self.config_ = cfg
        self.probe_: Probe = fit_probe(train, cfg, val)
        train_info = self.probe_.info.get("train", {})
        self.n_iter_ = int(train_info.get("iterations", train_info.get("steps", 0)))
        # float64 copies for inference: float32 matmuls round differently with the batch size
        self.heads64_ = tuple(None if h is None else copy.deepcopy(h).double()
                              for h in (self.probe_.head, self.probe_.zero_shot))
        return self

    def decision_function(self, X) -> np.ndarray:  # noqa: N803
        """The probe's logits (n, C); for two classes logit_1 - logit_0 (n,), as scikit-learn expects."""
        logits = self._logits(X)
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict_proba(self, X) -> np.ndarray:  # noqa: N803
        """Softmax of the logits (rows sum to 1), columns in the order of `classes_`."""
        logits = self._logits(X)
        if logits.shape[1] == 2:  # same ranks as decision_function, exactly
            p1 = expit(logits[:, 1] - logits[:, 0])
            return np.stack([1.0 - p1, p1], axis=1)
        return softmax(logits, axis=1)

    def predict_log_proba(self, X) -> np.ndarray:  # noqa: N803
        """Log-softmax of the logits."""
        return log_softmax(self._logits(X), axis=1)

    def predict(self, X) -> np.ndarray:  # noqa: N803
        """The class (a value of `classes_`) with the largest logit per row."""
        best = self._logits(X).argmax(axis=1)
        return self.classes_[best]

    def _logits(self, X) -> np.ndarray:  # noqa: N803
        check_is_fitted(self, "probe_")
        X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        probe, (head, zero_shot) = self.probe_, self.heads64_
        x = torch.as_tensor(np.array(X, dtype=np.float64))
        if probe.normalize:
            x = F.normalize(x, dim=-1)
        with torch.no_grad():
            zs = None if zero_shot is None else zero_shot(x)
            z = probe.combine(head(x), zs, probe.alpha, probe.posthoc_tau) / probe.temperature
        return z.numpy()
