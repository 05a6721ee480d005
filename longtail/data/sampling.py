"""Which training images an epoch visits: a uniform shuffle or class-aware resampling (docs/methods.md §14).

`SAMPLERS` maps the names of `fit sampler=NAME` to `EpochSampler` classes:

- random: every image once per epoch, shuffled (the default; what `fit` always did);
- balanced: each draw picks a class uniformly, then an image of it uniformly (p_c = 1 / C);
- sqrt: as balanced with p_c proportional to n_c^(1/2) (square-root sampling);
- repeat_factor: image i is repeated r_c = max(1, sqrt(t / f_c)) times per pass, f_c = n_c / N
  (LVIS / detectron2's `RepeatFactorTrainingSampler`; mmpretrain's `ClassBalancedDataset`).

A sampler's epoch list depends only on (seed, epoch) and is drawn with vectorised torch ops
(no Python loop over samples), so a run restarted at any step sees the lists an uninterrupted
run sees, and every process of a DDP run draws the same list (accelerate then gives each
process its share of every batch). Names and options are checked by `check_sampler` before
any data is read.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from longtail.errors import ConfigError, DataError
from longtail.registry import Registry

DEFAULT = "random"
ROUNDINGS = ("stochastic", "ceil")


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of epoch `epoch`: the seed formula `fit` has always shuffled with."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


class EpochSampler:
    """Base class: `draw(epoch, size)` is the index list of epoch `epoch` (a function of the
    seed, the labels and `epoch` only); `epoch_length` is its natural length."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ()  # the names `sampler_options.*` accepts

    def __init__(self, labels: np.ndarray | torch.Tensor, seed: int = 0, **options: Any) -> None:
        check_options(type(self), options)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        if self.labels.ndim != 1 or self.labels.numel() == 0:
            raise DataError("a sampler needs a non-empty 1-D array of training labels")
        if int(self.labels.min()) < 0:
            raise DataError("training labels must be >= 0")
        self.seed = int(seed)
        self.counts = torch.bincount(self.labels)

    @property
    def n(self) -> int:
        return int(self.labels.numel())

    @property
    def epoch_length(self) -> int:
        """Draws per epoch (the training set's size unless the sampler repeats images)."""
        return self.n

    def draw(self, epoch: int, size: int) -> torch.Tensor:
        """`size` image indices (int64) of epoch `epoch`."""
        raise NotImplementedError

    def class_probabilities(self) -> np.ndarray:
        """The expected share of each class among the draws (float64, sums to 1)."""
        raise NotImplementedError


SAMPLERS: Registry[type[EpochSampler]] = Registry("sampler")


def _register(name: str, description: str):
    def add(cls: type[EpochSampler]) -> type[EpochSampler]:
        cls.name, cls.description = name, description
        SAMPLERS.register(name, cls)
        return cls

    return add


@_register("random", "every image once per epoch, in a shuffled order (plain instance-balanced sampling)")
class RandomSampler(EpochSampler):
    def draw(self, epoch: int, size: int) -> torch.Tensor:
        g = epoch_generator(self.seed, epoch)
        if size == self.n:
            return torch.randperm(self.n, generator=g)
        return torch.randint(self.n, (size,), generator=g)  # a set smaller than one batch (drop_last)

    def class_probabilities(self) -> np.ndarray:
        return (self.counts.double() / self.n).numpy()


class ClassPowerSampler(EpochSampler):
    """Draws with replacement: a class with p_c proportional to n_c^q, then one of its images
    uniformly (two vectorised stages, so no per-image weight table limits the set's size)."""

    power: ClassVar[float] = 0.0

    def __init__(self, labels: np.ndarray | torch.Tensor, seed: int = 0, **options: Any) -> None:
        super().__init__(labels, seed, **options)
        self.order = torch.argsort(self.labels, stable=True)  # image indices grouped by class
        self.starts = torch.cumsum(self.counts, 0) - self.counts

    def class_probabilities(self) -> np.ndarray:
        counts = self.counts.double()
        weights = torch.where(counts > 0, counts.pow(self.power), torch.zeros_like(counts))
        return (weights / weights.sum()).numpy()

    def draw(self, epoch: int, size: int) -> torch.Tensor:
        g = epoch_generator(self.seed, epoch)
        probs = torch.from_numpy(self.class_probabilities())
        classes = torch.multinomial(probs, size, replacement=True, generator=g)
        within = (torch.rand(size, generator=g, dtype=torch.float64) * self.counts[classes]).long()
        within = torch.minimum(within, self.counts[classes] - 1)  # rand < 1, but guard the rounding
        return self.order[self.starts[classes] + within]


@_register("balanced", "class-balanced: each draw picks a class with probability 1/C, then one of its images")
class BalancedSampler(ClassPowerSampler):
    power = 0.0


@_register("sqrt", "square-root: each draw picks class c with probability proportional to sqrt(n_c)")
class SqrtSampler(ClassPowerSampler):
    power = 0.5


@_register("repeat_factor", "repeat factor (LVIS): image of class c repeated max(1, sqrt(t / f_c)) "
                            "times per pass (options: threshold, rounding)")
class RepeatFactorSampler(EpochSampler):
    """Passes over the data with each image of class c repeated r_c = max(1, sqrt(t / f_c))
    times, f_c = n_c / N the fraction of images of class c (docs/methods.md §14).

    rounding=stochastic (default, detectron2 / LVIS): pass k repeats image i floor(r_i) times
    plus once more with probability frac(r_i), drawn with pass k's generator, so r_i holds in
    expectation and passes differ in length. rounding=ceil (mmpretrain / mmengine
    `ClassBalancedDataset`): ceil(r_i) times in every pass. The shuffled passes form one stream;
    epoch e is its slice [e L, (e + 1) L) with L = round(sum_i r_i) (stochastic) or
    sum_i ceil(r_i) (ceil), so every epoch has the same length (the LR schedule counts epochs).
    threshold t defaults to 1/C, the frequency every class would have if the set were balanced.
    """

    options = ("threshold", "rounding")

    def __init__(self, labels: np.ndarray | torch.Tensor, seed: int = 0, threshold: float | None = None,
                 rounding: str = "stochastic") -> None:
        super().__init__(labels, seed, threshold=threshold, rounding=rounding)
        present = int((self.counts > 0).sum())
        self.threshold = 1.0 / present if threshold is None else float(threshold)
        self.rounding = rounding
        self.class_factors = repeat_factors(self.counts.numpy(), self.threshold)
        factors = torch.from_numpy(self.class_factors)[self.labels]
        if rounding == "ceil":
            factors = torch.ceil(factors)
        self.whole = torch.floor(factors).long()
        self.fraction = factors - self.whole
        self._lengths: list[int] = []  # lengths of the passes drawn so far (the stream's layout)

    @property
    def epoch_length(self) -> int:
        return max(round(float(self.whole.sum() + self.fraction.sum())), 1)

    def class_probabilities(self) -> np.ndarray:
        factors = self.class_factors if self.rounding == "stochastic" else np.ceil(self.class_factors)
        mass = self.counts.double().numpy() * factors
        return mass / mass.sum()

    def _repeats(self, g: torch.Generator) -> torch.Tensor:
        return self.whole + (torch.rand(self.n, generator=g, dtype=torch.float64) < self.fraction).long()

    def _pass(self, k: int) -> torch.Tensor:
        """Pass k of the stream: the repeated indices, shuffled (one generator per pass)."""
        g = epoch_generator(self.seed, k)
        repeated = torch.repeat_interleave(torch.arange(self.n), self._repeats(g))
        return repeated[torch.randperm(len(repeated), generator=g)]

    def _length(self, k: int) -> int:
        while len(self._lengths) <= k:  # a loop over passes, not samples: cached per sampler
            if self.rounding == "ceil":
                self._lengths.append(int(self.whole.sum()))
            else:
                self._lengths.append(int(self._repeats(epoch_generator(self.seed, len(self._lengths))).sum()))
        return self._lengths[k]

    def draw(self, epoch: int, size: int) -> torch.Tensor:
        start, stop = epoch * size, (epoch + 1) * size
        k, offset = 0, 0
        while offset + self._length(k) <= start:
            offset += self._length(k)
            k += 1
        pieces = []
        while offset < stop:
            block = self._pass(k)
            pieces.append(block[max(start - offset, 0):stop - offset])
            offset += len(block)
            k += 1
        return torch.cat(pieces)


def repeat_factors(counts: np.ndarray, threshold: float) -> np.ndarray:
    """r_c = max(1, sqrt(t / f_c)), f_c = n_c / sum(n) (classes without images: 1)."""
    counts = np.asarray(counts, dtype=np.float64)
    freq = counts / counts.sum()
    with np.errstate(divide="ignore"):
        factors = np.sqrt(threshold / freq)
    return np.where(counts > 0, np.maximum(1.0, factors), 1.0)


def check_options(cls: type[EpochSampler], options: dict[str, Any]) -> None:
    """ConfigError on an option the sampler does not take or a value out of range."""
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        raise ConfigError(f"sampler '{cls.name}' has no option {unknown[0]!r}; "
                          f"it accepts: {', '.join(cls.options) or 'none'}")
    threshold = options.get("threshold")
    if threshold is not None:
        ok = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
        if not ok or not 0 < threshold <= 1 or not math.isfinite(threshold):
            raise ConfigError(f"sampler_options.threshold must be a frequency in (0, 1], got {threshold!r}")
    if options.get("rounding", "stochastic") not in ROUNDINGS:
        raise ConfigError(f"sampler_options.rounding must be one of {', '.join(ROUNDINGS)}, "
                          f"got {options['rounding']!r}")


def check_sampler(name: str, options: dict[str, Any]) -> None:
    """The name (UnknownNameError lists the valid ones) and its options, without any data."""
    check_options(SAMPLERS.get(name), dict(options))


def make_sampler(name: str, labels: np.ndarray | torch.Tensor, seed: int,
                 options: dict[str, Any] | None = None) -> EpochSampler:
    """The sampler `name` over `labels` (one label per training image)."""
    return SAMPLERS.get(name)(labels, seed, **dict(options or {}))
