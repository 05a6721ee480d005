"""LT-Soups' controlled CIFAR-100 benchmark: choose the imbalance rho and head-tail ratio eta.

docs/methods.md §2.2: the first H labels are head classes with counts decaying exponentially from
500 to just above 100, the other T = C - H classes decay from 100 to n_min = 500 / rho.
Unlike the public constructor (which hard-codes rho = 100), rho is a real parameter here.
The images of each class are drawn as the LT-Soups code draws them (`default_rng(seed)`,
per-class shuffle, first n). The dataset preset is `cifar100_controlled` (data/presets.py).
"""

from __future__ import annotations

import numpy as np

from longtail.data.profiles import subsample_per_class
from longtail.errors import ConfigError

HEAD_CHOICES = (95, 90, 80, 70, 60, 50, 40, 30, 20, 10, 5)  # the paper's grid of H
RHO_CHOICES = (50, 100, 250)


def _decay(k: np.ndarray, n: int, a: float, b: float) -> np.ndarray:
    """g(u; a, b) = b + (a - b) exp(-5u) with u = k / (n - 1) (u = 0 for a single class)."""
    u = k / (n - 1) if n > 1 else np.zeros_like(k, dtype=np.float64)
    return b + (a - b) * np.exp(-5.0 * u)


def controlled_counts(
    num_head: int, rho: float, n_max: int = 500, num_classes: int = 100, head_min: int = 101,
    tail_max: int = 100,
) -> np.ndarray:
    """Per-class training counts (head classes first) for H = num_head and imbalance rho."""
    if not 0 <= num_head <= num_classes:
        raise ConfigError(f"number of head classes must be in [0, {num_classes}], got {num_head}")
    n_min = n_max / float(rho)
    if not 1.0 <= n_min <= tail_max:
        raise ConfigError(f"rho={rho} gives n_min={n_min:.3g}; need 1 <= n_min <= {tail_max}")
    head = np.floor(_decay(np.arange(num_head, dtype=np.float64), num_head, n_max, head_min))
    n_tail = num_classes - num_head
    tail = np.floor(_decay(np.arange(n_tail, dtype=np.float64), n_tail, tail_max, n_min))
    return np.concatenate([head, tail]).astype(np.int64)


def head_tail_ratio(num_head: int, num_classes: int = 100) -> float:
    """eta = H / T of the controlled split (inf when every class is a head class)."""
    tail = num_classes - num_head
    return float(num_head / tail) if tail else float("inf")


def controlled_indices(
    labels: np.ndarray, counts: np.ndarray, seed: int = 0, selection: str = "lt_soups"
) -> np.ndarray:
    """Indices with counts[c] samples of class c (class by class), drawn as the LT-Soups code."""
    return subsample_per_class(labels, counts, seed, selection)


def build_controlled(dataset, num_head: int, rho: float, seed: int = 0, selection: str = "lt_soups"):
    """Controlled long-tailed subset of a balanced dataset (e.g. CIFAR-100 train, 500/class).

    `dataset` is any object with `labels` and `subset(indices)` (e.g. `ImageDataset`).
    """
    num_classes = int(np.max(dataset.labels)) + 1
    n_max = int(np.bincount(dataset.labels, minlength=num_classes).min())
    counts = controlled_counts(num_head, rho, n_max=n_max, num_classes=num_classes)
    return dataset.subset(controlled_indices(dataset.labels, counts, seed, selection))

