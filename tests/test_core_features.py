"""Feature-file format: round trips and the bad-input matrix."""

import numpy as np
import pytest

from longtail.data.features import FeatureSet, check_compatible, load_features, save_features
from longtail.errors import DataError


def _fs(n=12, d=4, c=3, **kw):
    rng = np.random.default_rng(0)
    return FeatureSet(rng.normal(size=(n, d)).astype(np.float32), np.arange(n) % c, **kw)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_round_trip_keeps_every_array(tmp_path, suffix):
    fs = _fs(class_names=["a", "b", "c"], prototypes=np.eye(3, 4, dtype=np.float32),
             prototype_bias=np.array([0.1, 0.2, 0.3], np.float32), meta={"backbone": "tiny"})
    back = load_features(save_features(fs, tmp_path / f"f{suffix}"))
    np.testing.assert_array_equal(back.features, fs.features)
    np.testing.assert_array_equal(back.labels, fs.labels)
    np.testing.assert_array_equal(back.prototypes, fs.prototypes)
    np.testing.assert_array_equal(back.prototype_bias, fs.prototype_bias)
    assert back.class_names == ["a", "b", "c"]
    assert back.meta == {"backbone": "tiny"}
    assert back.labels.dtype == np.int64


def test_counts_and_names_without_class_names():
    fs = FeatureSet(np.zeros((5, 2), np.float32), np.array([0, 0, 2, 2, 2]))
    assert fs.num_classes == 3
    np.testing.assert_array_equal(fs.class_counts(), [2, 0, 3])
    assert fs.names() == ["class_0", "class_1", "class_2"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(features=np.zeros((3, 2), np.float32), labels=np.zeros(4, int)), "differ in length"),
        (dict(features=np.array([[np.nan, 0.0]] * 2, np.float32), labels=np.zeros(2, int)), "NaN or inf"),
        (dict(features=np.array([[np.inf, 0.0]] * 2, np.float32), labels=np.zeros(2, int)), "NaN or inf"),
        (dict(features=np.zeros((2, 2), np.float32), labels=np.array([0, 3]), class_names=["a", "b"]), "out of range"),
        (dict(features=np.zeros((2, 2), np.float32), labels=np.array([0, -1])), "negative label"),
        (dict(features=np.zeros(4, np.float32), labels=np.zeros(4, int)), "2-D"),
        (dict(features=np.zeros((2, 2), np.float32), labels=np.array([0.5, 1.0])), "integers"),
        (dict(features=np.zeros((2, 2), np.float32), labels=np.array([0, 1]), prototypes=np.zeros((2, 3))), "prototypes must have shape"),
        (dict(features=np.zeros((2, 2), np.float32), labels=np.array([0, 1]), prototypes=np.zeros((2, 2)), prototype_bias=np.zeros(3)), "prototype_bias"),
    ],
)
def test_bad_arrays_raise_one_line_errors(kwargs, message):
    with pytest.raises(DataError, match=message) as info:
        FeatureSet(**kwargs)
    assert "\n" not in str(info.value)


def test_missing_corrupt_and_incomplete_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_features(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.npz"):
        load_features(bad)
    partial = tmp_path / "partial.npz"
    np.savez(partial, features=np.zeros((2, 2), np.float32))
    with pytest.raises(DataError, match="missing array 'labels'"):
        load_features(partial)
    text = tmp_path / "x.txt"
    text.write_text("1")
    with pytest.raises(DataError, match="unsupported"):
        load_features(text)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    import os

    path = save_features(_fs(), tmp_path / "f.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npz"]
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600


def test_check_compatible():
    train = _fs(class_names=["a", "b", "c"])
    check_compatible(train, _fs(class_names=["a", "b", "c"]))
    with pytest.raises(DataError, match="dimension"):
        check_compatible(train, _fs(d=5))
    with pytest.raises(DataError, match="class names differ"):
        check_compatible(train, _fs(class_names=["a", "b", "x"]))
    with pytest.raises(DataError, match="out of range"):
        check_compatible(train, _fs(c=4))


def test_load_features_reads_files_only_and_open_features_adds_presets(tmp_path):
    from longtail.data.open_features import is_feature_spec, open_features

    with pytest.raises(DataError, match="feature file not found: synthetic_features:val"):
        load_features("synthetic_features:val")  # the pure reader knows no presets
    path = save_features(_fs(), tmp_path / "f.npz")
    np.testing.assert_array_equal(open_features(path).features, load_features(path).features)
    val = open_features("synthetic_features:val")
    assert val.source == "synthetic_features:val" and val.meta["split"] == "val"
    assert (val.class_counts() == val.class_counts()[0]).all()  # val is balanced
    assert open_features("synthetic_features").meta["split"] == "train"
    with pytest.raises(DataError, match="unknown split 'bogus'"):
        open_features("synthetic_features:bogus")
    assert is_feature_spec("synthetic_features:test") and is_feature_spec(path)
    assert not is_feature_spec("cifar100_ir100")
