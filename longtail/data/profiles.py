"""Long-tailed class-count profiles and the seeded per-class subsampler of the CIFAR-LT builders.

Exponential profile (CIFAR-LT, docs/methods.md §7.1): n_i = floor(n_max * IR^(-i/(C-1))), computed
exactly as LDAM/LIFT do, `int(n_max * (1/IR) ** (i / (C - 1)))`. That float expression gives
the literature totals (CIFAR-100-LT: 10,847 / 12,608 / 19,573 for IR 100 / 50 / 10), whereas
the algebraically equal `(IR^(-1/(C-1)))^i` lands just below integers and loses one image at
IR 50 and IR 10 (12,607 / 19,572). Step profile (LDAM "step"): the first classes keep n_max,
the rest n_max/IR.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from longtail.errors import ConfigError, DataError
from longtail.registry import Registry

PROFILES: Registry = Registry("count profile")

SamplingStrategy = Mapping | Callable[[np.ndarray], Mapping] | Sequence[int] | np.ndarray


def _check(n_max: int, num_classes: int, imbalance_ratio: float) -> None:
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    if n_max < 1:
        raise ConfigError(f"n_max must be >= 1, got {n_max}")
    if not imbalance_ratio >= 1:  # also rejects NaN
        raise ConfigError(f"imbalance ratio must be >= 1, got {imbalance_ratio}")
    if imbalance_ratio > n_max:
        raise ConfigError(
            f"imbalance ratio {imbalance_ratio} exceeds n_max {n_max}: the smallest class would be empty"
        )


@PROFILES.register("exp")
def exponential_profile(n_max: int, num_classes: int, imbalance_ratio: float) -> np.ndarray:
    """Counts floor(n_max * (1/IR)^(i/(C-1))), i = 0..C-1, with LDAM's exact float expression."""
    _check(n_max, num_classes, imbalance_ratio)
    if num_classes == 1:
        return np.array([n_max], dtype=np.int64)
    exponent = np.arange(num_classes) / (num_classes - 1.0)
    return np.floor(n_max * (1.0 / float(imbalance_ratio)) ** exponent).astype(np.int64)


@PROFILES.register("step")
def step_profile(
    n_max: int, num_classes: int, imbalance_ratio: float, head_fraction: float = 0.5
) -> np.ndarray:
    """The first floor(head_fraction*C) classes keep n_max (C//2 by default, as LDAM), the rest
    int(n_max / IR)."""
    _check(n_max, num_classes, imbalance_ratio)
    if not 0.0 <= head_fraction <= 1.0:
        raise ConfigError(f"head_fraction must be in [0, 1], got {head_fraction}")
    n_head = int(head_fraction * num_classes + 1e-9)  # tolerance: 0.29 * 100 = 28.999...
    counts = np.full(num_classes, int(n_max * (1.0 / float(imbalance_ratio))), np.int64)
    counts[:n_head] = n_max
    return counts


def make_profile(
    kind: str, n_max: int, num_classes: int, imbalance_ratio: float, **kwargs
) -> np.ndarray:
    """Counts from the profile registered as `kind` ('exp' or 'step')."""
    return PROFILES.get(kind)(n_max, num_classes, imbalance_ratio, **kwargs)


def strategy_targets(
    strategy: SamplingStrategy, counts: np.ndarray, class_names: Sequence[str] | None = None
) -> np.ndarray:
    """Target count per class from an imbalanced-learn-style `sampling_strategy` (no direction check).

    `strategy` is a dict class -> count (class index or name; classes not named keep their
    count, as in imbalanced-learn), a callable counts -> such a dict, or a full sequence of
    C counts. Shared by under-sampling (here) and latent over-sampling.
    """
    counts = np.asarray(counts, dtype=np.int64)
    names = list(class_names) if class_names is not None else None
    if callable(strategy):
        strategy = strategy(counts.copy())
    if isinstance(strategy, Mapping):
        targets = counts.copy()
        for key, value in strategy.items():
            targets[_class_index(key, counts.size, names)] = _count(value, key)
        return targets
    targets = np.asarray(strategy)
    if targets.shape != counts.shape:
        raise ConfigError(f"sampling_strategy gives {targets.size} counts for {counts.size} classes")
    return np.array([_count(v, i) for i, v in enumerate(targets.tolist())], np.int64)


def resolve_sampling_strategy(
    strategy: SamplingStrategy, counts: np.ndarray, class_names: Sequence[str] | None = None
) -> np.ndarray:
    """Under-sampling targets (see `strategy_targets`); a target above a class's count is an error."""
    counts = np.asarray(counts, dtype=np.int64)
    targets = strategy_targets(strategy, counts, class_names)
    over = np.flatnonzero(targets > counts)
    if over.size:
        c = int(over[0])
        label = class_names[c] if class_names is not None else c
        raise DataError(
            f"sampling_strategy asks for {int(targets[c])} samples of class '{label}', "
            f"which has only {int(counts[c])} (only under-sampling is possible)"
        )
    return targets


def _class_index(key, num_classes: int, names: list[str] | None) -> int:
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        if not 0 <= int(key) < num_classes:
            raise ConfigError(f"sampling_strategy class {key} out of range for {num_classes} classes")
        return int(key)
    if names is not None and str(key) in names:
        return names.index(str(key))
    raise ConfigError(f"sampling_strategy names unknown class '{key}'")


def _count(value, key) -> int:
    if isinstance(value, bool) or not float(value).is_integer() or value < 0:
        raise ConfigError(f"sampling_strategy count for class '{key}' must be a non-negative integer, got {value}")
    return int(value)


SELECTIONS = ("ldam", "lt_soups")  # which generator draws the long-tailed subset


def check_selection(selection: str) -> str:
    """The selection name, checked before any data is read."""
    if selection not in SELECTIONS:
        raise ConfigError(f"selection must be one of {', '.join(SELECTIONS)}, got '{selection}'")
    return selection


def subsample_per_class(
    labels: np.ndarray, targets: np.ndarray, seed: int = 0, selection: str = "ldam"
) -> np.ndarray:
    """Indices keeping targets[c] samples of each class, as the CIFAR-LT builders of the papers.

    One generator seeded once; for each class in label order: its indices in data order,
    shuffled in place, the first targets[c] kept. Output order = class by class, shuffled
    order within a class (as the builders' new data). The generator is
    - `selection="ldam"` (default): the legacy `np.random.RandomState(seed)`, i.e.
      `np.random.seed(seed)` then `np.random.shuffle`, as LDAM-DRW and the LIFT code base
      (LIFT, and Sage which is built on it) build CIFAR-10/100-LT;
    - `selection="lt_soups"`: `np.random.default_rng(seed)`, as the LT-Soups authors' code
      (its CIFAR-100-LT and controlled CIFAR-100). Same counts, other images: for
      CIFAR-100-LT IR 100 only 5,585 of the 10,847 images coincide with the LDAM draw.
    A shuffle's permutation depends only on the length, so any storage with the same
    within-class order (pickles or the class-sorted JPEG zip) selects the same images.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    targets = np.asarray(targets, dtype=np.int64)
    check_selection(selection)
    if labels.size and labels.min() < 0:
        raise DataError(f"negative label {int(labels.min())}")
    counts = np.bincount(labels, minlength=targets.size)[: targets.size]
    short = np.flatnonzero(targets > counts)
    if short.size:
        c = int(short[0])
        raise DataError(f"class {c} has {int(counts[c])} samples, the profile asks for {int(targets[c])}")
    order = np.argsort(labels, kind="stable")  # class by class, data order within a class
    starts = np.cumsum(counts) - counts
    rng = np.random.RandomState(seed) if selection == "ldam" else np.random.default_rng(seed)
    chosen = []
    # One shuffle call per class on the shared stream, in class order (the reference draw).
    for c, n in enumerate(targets.tolist()):
        idx = order[starts[c]: starts[c] + counts[c]].copy()
        rng.shuffle(idx)
        chosen.append(idx[:n])
    return np.concatenate(chosen) if chosen else np.zeros(0, np.int64)


# iNaturalist-2018's training set (Van Horn et al. 2018, as in LIFT's split lists): 8,142
# classes, 437,513 images, 1,000 -> 2 per class; 842 many-shot (> 100), 4,076 medium and
# 3,224 few-shot (< 20) classes. The real per-class counts are not reachable offline.
INAT2018 = {"classes": 8142, "images": 437_513, "largest": 1000, "smallest": 2, "many": 842, "few": 3224}


def inat2018_counts() -> np.ndarray:
    """Counts with iNaturalist-2018's shape, largest first: log-linear in rank between knots at
    the group edges (rank 0: 1,000; the last many-shot class: 101; the last medium: 20; the
    last class: 2) and one knot at rank 100 whose height is bisected so the total is 437,513.
    So classes, total, largest / smallest class and the three group sizes are iNat's."""
    spec = INAT2018
    ranks = [0, 100, spec["many"] - 1, spec["classes"] - spec["few"] - 1, spec["classes"] - 1]

    edges = (spec["many"], spec["classes"] - spec["few"])  # first medium rank, first few-shot rank
    group = np.searchsorted(edges, np.arange(spec["classes"]), side="right")  # 0 many, 1 medium, 2 few
    bounds = np.array([[101, 20, spec["smallest"]], [spec["largest"], 100, 19]])[:, group]  # (2, C): lo, hi

    def counts(knee: float) -> np.ndarray:
        heights = np.log([spec["largest"], knee, 101, 20, spec["smallest"]])
        raw = np.round(np.exp(np.interp(np.arange(spec["classes"]), ranks, heights)))
        return np.clip(raw, bounds[0], bounds[1]).astype(np.int64)  # every class in its group

    lo, hi = 101.0, float(spec["largest"])
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if counts(mid).sum() < spec["images"] else (lo, mid)
    out = counts(lo)
    rest = spec["images"] - int(out.sum())  # rounding: a few head classes (ranks 1..) take +-1 each
    out[1:1 + abs(rest)] += int(np.sign(rest))
    return np.sort(out)[::-1].copy()
