"""`synthetic_features`: an offline long-tailed feature benchmark with a known Bayes limit.

Each class is a mixture of a few von Mises-Fisher components on the unit sphere S^(d-1).
Classes come in "superclasses" whose centres are close, so tail classes overlap with their
(possibly head) siblings. Train counts follow the exponential profile (IR 100 by default); val
and test are balanced. Because the densities are known, the Bayes rule for the balanced error,
argmax_c log p(x | c) (uniform priors), is computed exactly and its balanced accuracy is
estimated on a large independent Monte-Carlo sample (reported with its standard error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from longtail.data.features import FeatureSet, save_features
from longtail.data.profiles import exponential_profile
from longtail.errors import ConfigError, DataError
from longtail.io import write_json
from longtail.maths.vmf import log_vmf_normalizer, sample_vmf

NAME = "synthetic_features"


@dataclass
class VMFMixtures:
    """Per class c: K components with mean directions means[c, k], kappas[c, k], weights[c, k]."""

    means: Tensor  # (C, K, d) float64, unit rows
    kappas: Tensor  # (C, K) float64
    log_weights: Tensor  # (C, K) float64

    @property
    def num_classes(self) -> int:
        return int(self.means.shape[0])

    def log_density(self, x: Tensor | np.ndarray) -> Tensor:
        """log p(x | c) for every row x and class c -> (N, C), float64 (logsumexp over components)."""
        x = torch.as_tensor(x, dtype=torch.float64)
        c, k, d = self.means.shape
        log_norm = log_vmf_normalizer(d, self.kappas.reshape(-1)).reshape(c, k)
        dots = (x @ self.means.reshape(c * k, d).T).reshape(-1, c, k)
        return torch.logsumexp(self.log_weights + log_norm + self.kappas * dots, dim=2)

    def bayes_predict(self, x: Tensor | np.ndarray) -> np.ndarray:
        """Bayes-optimal prediction for the balanced error (uniform class priors)."""
        return self.log_density(x).argmax(dim=1).numpy()

    def sample(self, labels: np.ndarray, generator: torch.Generator) -> np.ndarray:
        """One draw per label: pick a component by its weight, then x ~ vMF(mean, kappa)."""
        y = torch.as_tensor(labels, dtype=torch.long)
        probs = self.log_weights.exp()[y]  # (N, K)
        comp = torch.multinomial(probs, 1, generator=generator)[:, 0]
        return sample_vmf(self.means[y, comp].float(), self.kappas[y, comp], generator).numpy()


@dataclass
class SyntheticBenchmark:
    """Train/val/test FeatureSets of `synthetic_features` and the Bayes limit on its test law."""

    train: FeatureSet
    val: FeatureSet
    test: FeatureSet
    mixtures: VMFMixtures
    bayes_balanced_accuracy: float
    bayes_standard_error: float
    bayes_samples: int
    params: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "name": NAME,
            **self.params,
            "train_counts": self.train.class_counts().tolist(),
            "bayes_balanced_accuracy": self.bayes_balanced_accuracy,
            "bayes_standard_error": self.bayes_standard_error,
            "bayes_samples": self.bayes_samples,
        }

    def save(self, folder: str | Path) -> Path:
        """Write train/val/test.npz and benchmark.json (params, counts, Bayes limit) to a new folder."""
        folder = Path(folder)
        if folder.exists() and any(folder.iterdir()):
            raise DataError(f"{folder}: folder exists and is not empty (not overwriting)")
        for split in ("train", "val", "test"):
            save_features(getattr(self, split), folder / f"{split}.npz")
        write_json(folder / "benchmark.json", self.summary())
        return folder


def _around(center: Tensor, kappa: float, count: int, generator: torch.Generator) -> Tensor:
    """`count` vMF draws around each row of `center` -> (rows, count, d)."""
    mu = center.repeat_interleave(count, dim=0)
    return sample_vmf(mu, kappa, generator).reshape(center.shape[0], count, -1)


def _make_mixtures(num_classes: int, dim: int, components: int, superclass_size: int,
                   kappa_class: float, kappa_component: float, kappa_range: tuple[float, float],
                   generator: torch.Generator) -> tuple[VMFMixtures, Tensor]:
    num_super = -(-num_classes // superclass_size)
    super_centers = torch.nn.functional.normalize(
        torch.randn(num_super, dim, dtype=torch.float64, generator=generator), dim=1)
    # Random superclass of each class, so head and tail classes share superclasses.
    assign = torch.randperm(num_super * superclass_size, generator=generator)[:num_classes] % num_super
    class_centers = _around(super_centers[assign], kappa_class, 1, generator)[:, 0]
    means = _around(class_centers, kappa_component, components, generator)
    lo, hi = kappa_range
    kappas = lo + (hi - lo) * torch.rand(num_classes, components, dtype=torch.float64, generator=generator)
    weights = torch._standard_gamma(torch.full((num_classes, components), 2.0, dtype=torch.float64),
                                    generator=generator)  # Dirichlet(2, ..., 2)
    log_weights = (weights / weights.sum(1, keepdim=True)).log()
    return VMFMixtures(means, kappas, log_weights), class_centers


def make_synthetic_benchmark(
    seed: int = 0,
    num_classes: int = 40,
    dim: int = 64,
    n_max: int = 500,
    imbalance_ratio: float = 100.0,
    n_val: int = 20,
    n_test: int = 100,
    components: int = 3,
    superclass_size: int = 5,
    kappa_class: float = 1500.0,
    kappa_component: float = 500.0,
    kappa_range: tuple[float, float] = (60.0, 120.0),
    prototype_kappa: float = 3000.0,
    bayes_per_class: int = 2000,
) -> SyntheticBenchmark:
    """Build the benchmark deterministically from `seed` (about a second on a CPU).

    Prototypes (unit vectors, vMF(prototype_kappa) around each class centre) play the role of
    noisy text embeddings for zero-shot / prototype-initialised probes.
    """
    if num_classes < 2 or dim < 2 or components < 1 or superclass_size < 1:
        raise ConfigError("synthetic_features needs num_classes >= 2, dim >= 2, components >= 1")
    if min(n_val, n_test, bayes_per_class) < 1:
        raise ConfigError("synthetic_features needs n_val, n_test and bayes_per_class >= 1")
    generator = torch.Generator().manual_seed(seed)
    mixtures, centers = _make_mixtures(num_classes, dim, components, superclass_size, kappa_class,
                                       kappa_component, kappa_range, generator)
    prototypes = sample_vmf(centers, prototype_kappa, generator).numpy().astype(np.float32)
    counts = exponential_profile(n_max, num_classes, imbalance_ratio)
    names = [f"class_{c:02d}" for c in range(num_classes)]
    params = {"seed": seed, "num_classes": num_classes, "dim": dim, "n_max": n_max,
              "imbalance_ratio": imbalance_ratio, "components": components,
              "superclass_size": superclass_size, "kappa_class": kappa_class,
              "kappa_component": kappa_component, "kappa_range": list(kappa_range),
              "prototype_kappa": prototype_kappa}

    def split(per_class: np.ndarray, name: str) -> FeatureSet:
        labels = np.repeat(np.arange(num_classes), per_class)
        x = mixtures.sample(labels, generator).astype(np.float32)
        return FeatureSet(x, labels, class_names=names, prototypes=prototypes,
                          meta={"benchmark": NAME, "split": name, **params}, source=f"{NAME}:{name}")

    train = split(counts, "train")
    val = split(np.full(num_classes, n_val), "val")
    test = split(np.full(num_classes, n_test), "test")

    # Bayes limit on an independent balanced Monte-Carlo sample.
    mc_labels = np.repeat(np.arange(num_classes), bayes_per_class)
    mc_x = mixtures.sample(mc_labels, generator)
    correct = mixtures.bayes_predict(mc_x) == mc_labels
    per_class = correct.reshape(num_classes, bayes_per_class).mean(axis=1)
    se = float(np.sqrt(np.sum(per_class * (1 - per_class) / bayes_per_class)) / num_classes)
    return SyntheticBenchmark(train, val, test, mixtures, float(per_class.mean()), se,
                              int(mc_labels.size), params)
