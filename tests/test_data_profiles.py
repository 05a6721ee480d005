"""Count profiles, sampling_strategy and the CIFAR-LT subsamplers (docs/methods.md §0, §2.2, §7.1)."""

import numpy as np
import pytest

from longtail.data.profiles import (
    exponential_profile,
    make_profile,
    resolve_sampling_strategy,
    step_profile,
    subsample_per_class,
)
from longtail.data.stats import class_stats
from longtail.errors import ConfigError, DataError, UnknownNameError


@pytest.mark.parametrize(
    "ir, total, n_min, groups",
    [(100, 10847, 5, (35, 35, 30)), (50, 12608, 10, (41, 41, 18)), (10, 19573, 50, (69, 31, 0))],
)
def test_cifar100_lt_totals_and_groups(ir, total, n_min, groups):
    counts = exponential_profile(500, 100, ir)
    assert counts.sum() == total and counts[0] == 500 and counts[-1] == n_min
    assert np.all(np.diff(counts) <= 0)
    stats = class_stats(counts)
    assert tuple(stats.group_sizes().values()) == groups
    assert stats.imbalance_ratio == pytest.approx(ir)
    # LIFT's rule: groups from the IR-100 counts whatever the IR
    lift = class_stats(counts, group_counts=exponential_profile(500, 100, 100))
    assert tuple(lift.group_sizes().values()) == (35, 35, 30)
    assert lift.total == total  # the override changes groups, not counts


@pytest.mark.parametrize("ir", [100, 50, 10, 20, 200, 37.5])
def test_exponential_matches_ldam_float_expression(ir):
    ldam = [int(500 * ((1 / ir) ** (i / (100 - 1.0)))) for i in range(100)]
    assert exponential_profile(500, 100, ir).tolist() == ldam


def test_naive_power_form_misses_literature_totals():
    """Why the LDAM expression is used: (IR^(-1/99))^i floors just below integers."""
    naive = sum(int(500 * (50 ** (-1 / 99)) ** i) for i in range(100))
    assert naive == 12607 and exponential_profile(500, 100, 50).sum() == 12608


def test_cifar10_lt_counts():
    assert exponential_profile(5000, 10, 10).tolist() == [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500]
    assert exponential_profile(5000, 10, 50).tolist() == [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]
    assert exponential_profile(5000, 10, 100).tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert exponential_profile(5000, 10, 100).sum() == 12406


def test_step_profile():
    assert step_profile(500, 10, 100).tolist() == [500] * 5 + [5] * 5
    assert step_profile(500, 10, 10, head_fraction=0.3).tolist() == [500] * 3 + [50] * 7
    assert make_profile("step", 100, 4, 4).tolist() == [100, 100, 25, 25]
    assert step_profile(100, 7, 10).tolist() == [100] * 3 + [10] * 4  # C // 2 head classes
    assert (step_profile(100, 100, 10, head_fraction=0.29) == 100).sum() == 29
    with pytest.raises(UnknownNameError, match="exp, step"):
        make_profile("pareto", 100, 4, 4)


def test_profile_rejects_bad_ratios():
    with pytest.raises(ConfigError, match="must be >= 1"):
        exponential_profile(500, 10, 0.5)
    with pytest.raises(ConfigError, match="would be empty"):
        exponential_profile(50, 10, 100)
    assert exponential_profile(7, 1, 3).tolist() == [7]


def test_sampling_strategy_dict_callable_sequence():
    counts = np.array([50, 40, 30])
    names = ["cat", "dog", "eel"]
    assert resolve_sampling_strategy({0: 10, "eel": 5}, counts, names).tolist() == [10, 40, 5]
    halve = lambda c: {i: int(n) // 2 for i, n in enumerate(c)}  # noqa: E731
    assert resolve_sampling_strategy(halve, counts).tolist() == [25, 20, 15]
    assert resolve_sampling_strategy([1, 2, 3], counts).tolist() == [1, 2, 3]
    with pytest.raises(DataError, match="class 'dog', which has only 40"):
        resolve_sampling_strategy({"dog": 41}, counts, names)
    with pytest.raises(ConfigError, match="unknown class 'fox'"):
        resolve_sampling_strategy({"fox": 1}, counts, names)
    with pytest.raises(ConfigError, match="out of range"):
        resolve_sampling_strategy({3: 1}, counts, names)
    with pytest.raises(ConfigError, match="non-negative integer"):
        resolve_sampling_strategy({0: 2.5}, counts, names)
    with pytest.raises(ConfigError, match="2 counts for 3 classes"):
        resolve_sampling_strategy([1, 2], counts)


def _ldam_reference(targets_list, img_num_per_cls, seed=0):
    """Literal LDAM/LIFT gen_imbalanced_data (global NumPy RNG)."""
    np.random.seed(seed)
    targets_np = np.array(targets_list, dtype=np.int64)
    out = []
    for the_class, the_img_num in zip(np.unique(targets_np), img_num_per_cls):
        idx = np.where(targets_np == the_class)[0]
        np.random.shuffle(idx)
        out.append(idx[:the_img_num])
    return np.concatenate(out)


def _lt_soups_reference(targets_list, img_num_per_cls, seed=0):
    """The LT-Soups authors' draw: one default_rng(seed); per class, shuffle its indices, keep a prefix."""
    rng = np.random.default_rng(seed)
    targets_np = np.array(targets_list, dtype=np.int64)
    out = []
    for c, n in zip(np.unique(targets_np), img_num_per_cls):
        idx = np.where(targets_np == c)[0]
        rng.shuffle(idx)
        out.append(idx[:n])
    return np.concatenate(out)


def test_lt_soups_selection_same_counts_other_images_deterministic():
    rng = np.random.default_rng(3)
    labels = rng.permutation(np.repeat(np.arange(10), 50))
    targets = exponential_profile(50, 10, 10)
    ldam = subsample_per_class(labels, targets, seed=0)
    soups = subsample_per_class(labels, targets, seed=0, selection="lt_soups")
    assert np.array_equal(soups, _lt_soups_reference(labels.tolist(), targets.tolist()))
    assert np.array_equal(soups, subsample_per_class(labels, targets, seed=0, selection="lt_soups"))
    assert np.bincount(labels[soups], minlength=10).tolist() == np.bincount(labels[ldam], minlength=10).tolist()
    assert not np.array_equal(np.sort(soups), np.sort(ldam))
    with pytest.raises(ConfigError, match="selection must be one of ldam, lt_soups"):
        subsample_per_class(labels, targets, selection="numpy")


def test_cifar100_lt_ir100_draws_overlap_in_5585_of_10847_images():
    """The draw depends only on each class's size (500) and the stream, not on the label order,
    so CIFAR-100's real label order is not needed: any 500-per-class labels give the same count."""
    labels = np.random.default_rng(4).permutation(np.repeat(np.arange(100), 500))
    targets = exponential_profile(500, 100, 100)
    ldam = subsample_per_class(labels, targets)
    soups = subsample_per_class(labels, targets, selection="lt_soups")
    assert ldam.size == soups.size == 10847
    assert np.intersect1d(ldam, soups).size == 5585


def test_subsampler_reproduces_ldam_exactly_and_is_deterministic():
    rng = np.random.default_rng(1)
    labels = rng.permutation(np.repeat(np.arange(10), 50))  # interleaved, like the CIFAR batches
    targets = exponential_profile(50, 10, 10)
    ours = subsample_per_class(labels, targets, seed=0)
    assert np.array_equal(ours, _ldam_reference(labels.tolist(), targets.tolist()))
    assert np.array_equal(ours, subsample_per_class(labels, targets, seed=0))
    assert np.bincount(labels[ours], minlength=10).tolist() == targets.tolist()
    assert len(set(ours.tolist())) == ours.size  # no duplicates
    assert not np.array_equal(ours, subsample_per_class(labels, targets, seed=1))


def test_selection_depends_only_on_within_class_order():
    """The same images are chosen whether data is interleaved (pickles) or class-sorted (zip)."""
    rng = np.random.default_rng(2)
    labels = rng.permutation(np.repeat(np.arange(5), 30))
    targets = np.array([30, 20, 12, 7, 3])
    rank = np.empty_like(labels)  # within-class position of each sample
    for c in range(5):
        rank[labels == c] = np.arange(30)
    interleaved = subsample_per_class(labels, targets)
    sorted_labels = np.repeat(np.arange(5), 30)
    class_sorted = subsample_per_class(sorted_labels, targets)
    assert rank[interleaved].tolist() == (class_sorted % 30).tolist()


def test_subsampler_rejects_too_large_target():
    with pytest.raises(DataError, match="class 1 has 2 samples"):
        subsample_per_class(np.array([0, 0, 1, 1]), np.array([1, 3]))


def test_head_tail_ratio_hand_case():
    stats = class_stats(np.array([500, 200, 101, 100, 50, 5]))
    assert stats.head_tail_ratio == pytest.approx(3 / 3)
    assert class_stats(exponential_profile(500, 100, 100)).head_tail_ratio == pytest.approx(35 / 65)
