"""Controlled CIFAR-100 (rho, eta) counts of LT-Soups (docs/methods.md §2.2 and §2.7)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from longtail.data.controlled_cifar import (
    controlled_counts,
    controlled_indices,
    head_tail_ratio,
)
from longtail.data.splits import first_per_class
from longtail.data.stats import class_stats
from longtail.errors import ConfigError, DataError


def test_h80_rho100_by_hand():
    counts = controlled_counts(80, 100)
    head, tail = counts[:80], counts[80:]
    assert counts.size == 100 and head_tail_ratio(80) == 4.0
    assert head[0] == 500 and head[-1] == 103  # 101 + 399 e^-5 = 103.69
    assert (np.diff(head) <= 0).all() and (head > 100).all()
    # tail: floor(5 + 95 exp(-5 k / 19)), k = 0..19
    assert tail.tolist() == [100, 78, 61, 48, 38, 30, 24, 20, 16, 13, 11, 10, 9, 8, 7, 6, 6, 6, 5, 5]
    by_formula = sum(math.floor(101 + 399 * math.exp(-5 * k / 79)) for k in range(80))
    assert head.sum() == by_formula == 14500 and counts.sum() == 15001
    stats = class_stats(counts)
    assert stats.head_tail_ratio == 4.0 and stats.imbalance_ratio == 100.0


@pytest.mark.parametrize("rho,n_min", [(50, 10), (100, 5), (250, 2)])
def test_rho_is_a_real_parameter(rho, n_min):
    counts = controlled_counts(50, rho)
    assert counts.min() == n_min and counts.max() == 500
    assert counts.max() / counts.min() == rho


def test_bad_parameters():
    with pytest.raises(ConfigError, match="head classes"):
        controlled_counts(101, 100)
    with pytest.raises(ConfigError, match="n_min"):
        controlled_counts(50, 1000)


def test_indices_and_first_per_class_validation():
    labels = np.repeat(np.arange(3), 20)
    np.random.default_rng(1).shuffle(labels)
    idx = controlled_indices(labels, np.array([20, 7, 2]), seed=3)
    np.testing.assert_array_equal(np.bincount(labels[idx]), [20, 7, 2])
    np.testing.assert_array_equal(idx, controlled_indices(labels, np.array([20, 7, 2]), seed=3))
    with pytest.raises(DataError, match="class 1"):
        controlled_indices(labels, np.array([1, 21, 1]))
    val, test = first_per_class(labels, per_class=4)
    assert val.size == 12 and test.size == 48 and np.intersect1d(val, test).size == 0
    for c in range(3):  # the first 4 of each class in file order
        np.testing.assert_array_equal(val[labels[val] == c], np.flatnonzero(labels == c)[:4])
