"""Dataset presets: synthetic images, CIFAR-10/100-LT, list-file benchmarks, registry errors."""

import os
from pathlib import Path

import numpy as np
import pytest

from longtail.data import presets, synthetic_images
from longtail.data.controlled_cifar import controlled_counts
from longtail.data.images import FileReader, ImageDataset
from longtail.data.open_images import open_images
from longtail.data.presets import CIFAR10_CLASSES, CIFAR100_CLASSES, DATASETS, describe_datasets
from longtail.data.profiles import exponential_profile
from longtail.data.stats import class_stats
from longtail.errors import ConfigError, DataError, UnknownNameError

CIFAR10_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_synthetic_images_generated_cached_and_learnable(cache, monkeypatch):
    train = open_images("synthetic_images")
    test = open_images("synthetic_images", split="test")
    assert train.class_counts().tolist() == exponential_profile(200, 10, 20).tolist()
    assert len(train) < 1000 and test.class_counts().tolist() == [30] * 10
    assert train.class_names[0] == "red stripes" and train.load(0).size == (32, 32)
    stats = class_stats(train.class_counts())
    assert all(stats.group_sizes().values())  # many, medium and few are all present
    # written once, atomically (no temp folder left), then reused without regenerating
    assert [p.name for p in cache.iterdir()] == [synthetic_images.SyntheticImagesConfig().folder_name()]
    monkeypatch.setattr(synthetic_images, "_write", lambda *a: pytest.fail("regenerated"))
    assert open_images("synthetic_images").fingerprint() == train.fingerprint()
    # learnable: nearest class mean on raw pixels is far above chance (0.1)
    x_tr = np.stack([np.asarray(train.load(i), np.float32).ravel() for i in range(len(train))])
    x_te = np.stack([np.asarray(test.load(i), np.float32).ravel() for i in range(len(test))])
    means = np.stack([x_tr[train.labels == c].mean(0) for c in range(10)])
    pred = ((x_te[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == test.labels).mean() > 0.5


def test_synthetic_images_deterministic(tmp_path):
    cfg = synthetic_images.SyntheticImagesConfig(num_classes=3, n_max=4, imbalance_ratio=2, test_per_class=1)
    a = synthetic_images.ensure_synthetic_images(tmp_path / "a", cfg)
    b = synthetic_images.ensure_synthetic_images(tmp_path / "b", cfg)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == (4 + 2 + 2) + 3 * 1  # train 4,2,2 (IR 2) + 1 test image per class
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    other = synthetic_images.SyntheticImagesConfig(num_classes=3, n_max=4, imbalance_ratio=2, test_per_class=1, seed=1)
    c = synthetic_images.ensure_synthetic_images(tmp_path / "a", other)
    assert c != a and (c / files[0]).read_bytes() != (a / files[0]).read_bytes()


def test_synthetic_preset_rejects_unknown_option(cache):
    with pytest.raises(ConfigError, match="synthetic_images: unknown option 'colour'"):
        open_images("synthetic_images", colour="blue")
    with pytest.raises(ConfigError, match=r"did you mean 'on_corrupt'\?\); valid options: .*imbalance_ratio.*on_corrupt"):
        open_images("synthetic_images", on_corupt="skip")
    assert not cache.exists()  # nothing generated before the options were checked


def _fake_balanced(classes, per_class, tmp_path):
    labels = np.repeat(np.arange(len(classes)), per_class)
    items = [f"{classes[c]}/{i:04d}.jpg" for c in range(len(classes)) for i in range(per_class)]
    return ImageDataset(items, labels, classes, FileReader(tmp_path), name="fake")


@pytest.mark.parametrize("ir, total, groups", [(100, 10847, (35, 35, 30)), (50, 12608, (35, 35, 30)), (10, 19573, (35, 35, 30))])
def test_cifar100_lt_preset_counts_and_lift_groups(tmp_path, monkeypatch, ir, total, groups):
    balanced = _fake_balanced(CIFAR100_CLASSES, 500, tmp_path)
    monkeypatch.setattr(presets, "open_source", lambda spec, split, **kw: balanced)
    ds = DATASETS.get("cifar100_lt")("train", root="hf:cifar100", ir=ir)
    assert len(ds) == total and ds.name == f"cifar100_lt_ir{ir}_train"
    stats = class_stats(ds.class_counts(), ds.class_names, group_counts=ds.group_counts)
    assert tuple(stats.group_sizes().values()) == groups
    own = DATASETS.get("cifar100_lt")("train", root="hf:cifar100", ir=ir, lift_groups=False)
    assert own.group_counts is None and np.array_equal(own.labels, ds.labels)
    test = DATASETS.get("cifar100_lt")("test", root="hf:cifar100", ir=ir)
    assert len(test) == 50000 and test.group_counts.tolist() == exponential_profile(500, 100, 100).tolist()


def test_cifar_preset_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="cifar10_lt needs root"):
        open_images("cifar10_lt")
    wrong = _fake_balanced(("a", "b"), 5, tmp_path)
    monkeypatch.setattr(presets, "open_source", lambda spec, split, **kw: wrong)
    with pytest.raises(DataError, match="not the 10 cifar10_lt classes"):
        open_images("cifar10_lt", root="hf:x")
    short = _fake_balanced(CIFAR10_CLASSES, 40, tmp_path)
    monkeypatch.setattr(presets, "open_source", lambda spec, split, **kw: short)
    with pytest.raises(DataError, match="has 40 training images, expected 5000"):
        open_images("cifar10_lt", root="hf:x")


@pytest.mark.skipif(not CIFAR10_ZIP.is_file(), reason="CIFAR-10 JPEG zip not available")
def test_cifar10_lt_from_real_zip():
    ds = open_images("cifar10_lt", root=str(CIFAR10_ZIP), ir=100)
    assert ds.class_counts().tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert ds.class_names == list(CIFAR10_CLASSES)
    # LDAM selection: per class (in order) shuffle of the 5000 within-class positions, seed 0
    rng = np.random.RandomState(0)
    expected = []
    for c, n in enumerate(ds.class_counts().tolist()):
        pos = np.arange(5000)
        rng.shuffle(pos)
        expected += [f"train/{CIFAR10_CLASSES[c]}/{p:04d}.jpg" for p in pos[:n]]
    assert ds.items.tolist() == expected
    for i in (0, len(ds) - 1):
        image = ds.load(i)
        assert image.mode == "RGB" and image.size == (32, 32)
    test = open_images("cifar10_lt", split="test", root=str(CIFAR10_ZIP), ir=10)
    assert test.class_counts().tolist() == [1000] * 10
    assert test.group_counts.tolist() == exponential_profile(5000, 10, 10).tolist()
    assert test.load(0).size == (32, 32)


def _write_list(path, labels, prefix="img"):
    path.write_text("".join(f"{prefix}/{i}.jpg {y}\n" for i, y in enumerate(labels)))


def test_list_presets(tmp_path):
    _write_list(tmp_path / "ImageNet_LT_train.txt", list(range(1000)) + [0, 0])
    ds = open_images("imagenet_lt", root=str(tmp_path))
    assert len(ds) == 1002 and ds.num_classes == 1000 and ds.name == "imagenet_lt_train"
    assert ds.describe(3) == os.path.join(str(tmp_path), "img/3.jpg")
    (tmp_path / "classnames.txt").write_text("".join(f"place {i}\n" for i in range(365)))
    _write_list(tmp_path / "Places_LT_test.txt", range(365))
    places = open_images("places_lt", split="test", root=str(tmp_path))
    assert places.class_names[2] == "place 2"
    (tmp_path / "classnames.txt").unlink()
    _write_list(tmp_path / "iNaturalist18_val.txt", range(8142))
    assert len(open_images("inat2018", split="test", root=str(tmp_path))) == 8142  # test = val
    with pytest.raises(DataError, match="ImageNet_LT_val.txt"):
        open_images("imagenet_lt", split="val", root=str(tmp_path))
    _write_list(tmp_path / "small.txt", range(10))
    with pytest.raises(DataError, match="10 classes, imagenet_lt has 1000"):
        open_images("imagenet_lt", root=str(tmp_path), list_file=str(tmp_path / "small.txt"))
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        open_images("inat2018", split="dev", root=str(tmp_path))
    with pytest.raises(ConfigError, match="imagenet_lt: unknown option 'ir'"):
        open_images("imagenet_lt", root=str(tmp_path), ir=10)
    with pytest.raises(ConfigError, match="places_lt needs root"):
        open_images("places_lt")


def test_unknown_preset_lists_names():
    with pytest.raises(UnknownNameError, match="cifar100_controlled, cifar100_ir10, .*inat2018, places_lt, synthetic_images"):
        DATASETS.get("cifar1000_lt")
    with pytest.raises(DataError, match="not a preset .*synthetic_images"):
        open_images("cifar1000_lt")


def _never_opened(*args, **kwargs):
    pytest.fail("the images were opened before the options were checked")


def test_cifar_option_typos_list_every_option_before_reading(monkeypatch):
    monkeypatch.setattr(presets, "open_source", _never_opened)
    with pytest.raises(ConfigError) as err:
        open_images("cifar10_lt", root="hf:cifar10", irr=100)
    message = str(err.value)
    assert message.startswith("cifar10_lt: unknown option 'irr' (did you mean 'ir'?); valid options:")
    for name in ("ir", "seed", "profile", "selection", "on_corrupt", "label_column"):
        assert name in message
    with pytest.raises(ConfigError, match="cifar100_ir50: unknown option 'sed' .*lift_groups.*seed"):
        open_images("cifar100_ir50", root="hf:cifar100", sed=1)
    with pytest.raises(ConfigError, match="selection must be one of ldam, lt_soups, got 'numpy'"):
        open_images("cifar100_lt", root="hf:cifar100", selection="numpy")
    with pytest.raises(ConfigError, match="on_corrupt must be one of"):
        open_images("cifar100_lt", root="hf:cifar100", on_corrupt="ignore")


@pytest.mark.parametrize("name, base, ir, total", [
    ("cifar100_ir100", "cifar100_lt", 100, 10847), ("cifar100_ir50", "cifar100_lt", 50, 12608),
    ("cifar100_ir10", "cifar100_lt", 10, 19573), ("cifar10_ir100", "cifar10_lt", 100, 12406),
    ("cifar10_ir50", "cifar10_lt", 50, 13996), ("cifar10_ir10", "cifar10_lt", 10, 20431),
])
def test_ir_aliases_are_the_lt_presets_with_ir_fixed(tmp_path, monkeypatch, name, base, ir, total):
    classes, per_class = (CIFAR100_CLASSES, 500) if base == "cifar100_lt" else (CIFAR10_CLASSES, 5000)
    balanced = _fake_balanced(classes, per_class, tmp_path)
    monkeypatch.setattr(presets, "open_source", lambda spec, split, **kw: balanced)
    alias = open_images(name, root="hf:x")
    same = open_images(base, root="hf:x", ir=ir)
    assert len(alias) == total and np.array_equal(alias.items, same.items) and alias.name == same.name
    assert np.array_equal(open_images(name, root="hf:x", ir=ir).items, alias.items)  # same ir: fine
    with pytest.raises(ConfigError, match=f"{name} fixes ir={ir}, got ir=7"):
        open_images(name, root="hf:x", ir=7)


def test_cifar100_lt_selection_option(tmp_path, monkeypatch):
    balanced = _fake_balanced(CIFAR100_CLASSES, 500, tmp_path)
    monkeypatch.setattr(presets, "open_source", lambda spec, split, **kw: balanced)
    ldam = open_images("cifar100_ir100", root="hf:x")
    soups = open_images("cifar100_ir100", root="hf:x", selection="lt_soups")
    assert np.array_equal(ldam.class_counts(), soups.class_counts())
    assert np.intersect1d(ldam.items, soups.items).size == 5585
    assert np.array_equal(soups.items, open_images("cifar100_lt", root="hf:x", selection="lt_soups").items)


def test_cifar100_controlled_preset(tmp_path, monkeypatch):
    balanced = _fake_balanced(CIFAR100_CLASSES, 500, tmp_path)
    monkeypatch.setattr(presets, "open_source", lambda spec, split, **kw: balanced)
    ds = open_images("cifar100_controlled", root="hf:x", num_head=30, rho=50)
    assert ds.class_counts().tolist() == controlled_counts(30, 50).tolist()
    assert ds.name == "cifar100_controlled_h30_rho50_train"
    stats = class_stats(ds.class_counts())
    assert stats.head_tail_ratio == pytest.approx(30 / 70) and stats.imbalance_ratio == 50
    default = open_images("cifar100_controlled", root="hf:x")  # the authors' default: h = 80, rho = 100
    assert default.class_counts().tolist() == controlled_counts(80, 100).tolist()
    ldam = open_images("cifar100_controlled", root="hf:x", selection="ldam")
    assert not np.array_equal(ldam.items, default.items)
    assert len(open_images("cifar100_controlled", split="test", root="hf:x")) == 50000  # balanced split
    monkeypatch.setattr(presets, "open_source", _never_opened)
    with pytest.raises(ConfigError, match="head classes must be in"):
        open_images("cifar100_controlled", root="hf:x", num_head=120)
    with pytest.raises(ConfigError, match="cifar100_controlled: unknown option 'eta'; valid options: .*num_head.*rho"):
        open_images("cifar100_controlled", root="hf:x", eta=4)


def test_describe_datasets_one_line_each():
    described = dict(describe_datasets())
    assert sorted(described) == DATASETS.names()
    for name in ("cifar100_ir100", "cifar10_ir10", "cifar100_controlled", "synthetic_images", "imagenet_lt"):
        assert described[name] and "\n" not in described[name]
    assert "ir=100" in described["cifar100_ir100"] and "head-tail" in described["cifar100_controlled"]
