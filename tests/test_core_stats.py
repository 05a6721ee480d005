"""Class statistics: imbalance ratio, head-tail ratio and shot groups on hand cases."""

import math

import numpy as np
import pytest

from longtail.data.stats import assign_groups, class_stats, require_nonempty
from longtail.errors import DataError


def test_groups_follow_the_thresholds_exactly():
    counts = np.array([500, 101, 100, 20, 19, 1])
    assert assign_groups(counts).tolist() == ["many", "many", "medium", "medium", "few", "few"]


def test_head_tail_ratio_hand_case():
    # 3 classes with > 100 images, 5 with <= 100: eta = 3 / 5
    stats = class_stats([400, 300, 150, 100, 60, 30, 10, 4])
    assert stats.head_tail_ratio == pytest.approx(0.6)
    assert stats.imbalance_ratio == pytest.approx(100.0)
    assert stats.group_sizes() == {"many": 3, "medium": 3, "few": 2}
    assert stats.total == 1054


def test_cifar100_lt_reference_head_tail_ratio():
    counts = np.floor(500 * 100.0 ** (-np.arange(100) / 99)).astype(int)
    assert class_stats(counts).head_tail_ratio == pytest.approx(35 / 65)


def test_no_tail_and_empty_groups_do_not_crash():
    stats = class_stats([500, 200, 150])
    assert math.isinf(stats.head_tail_ratio)
    assert stats.group_sizes() == {"many": 3, "medium": 0, "few": 0}
    assert any("(empty)" in line for line in stats.summary_lines())
    assert stats.to_dict()["group_sizes"]["few"] == 0


def test_group_override_uses_reference_counts():
    counts = np.array([500, 120, 60])  # e.g. an IR-10 split
    stats = class_stats(counts, group_counts=np.array([500, 50, 5]))
    assert stats.groups.tolist() == ["many", "medium", "few"]
    assert stats.to_dict()["group_counts"] == [500, 50, 5]
    with pytest.raises(DataError, match="group_counts"):
        class_stats(counts, group_counts=np.array([1, 2]))


def test_empty_class_is_reported_and_refused():
    stats = class_stats([10, 0, 3], ["a", "b", "c"])
    assert stats.empty_classes == ["b"]
    assert math.isinf(stats.imbalance_ratio)
    with pytest.raises(DataError, match="class 'b' has no training samples"):
        require_nonempty(stats.counts, list(stats.class_names))


def test_name_count_mismatch():
    with pytest.raises(DataError, match="2 class names given for 3 classes"):
        class_stats([1, 2, 3], ["a", "b"])
