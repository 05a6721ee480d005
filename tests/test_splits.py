"""Validation splits drawn from training (data/splits.py), splits a source does not have, empty
class folders, and the commands that take them (features, stats, probe, fit): issue 13 item 3."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import yaml
from PIL import Image

from longtail.cli import main
from longtail.data.open_images import open_images
from longtail.data.splits import ValRule, open_part, split_features
from longtail.errors import ConfigError, DataError

COUNTS = [100, 20, 5, 2, 1]  # a head class, a medium one, and tails of 5, 2 and 1 samples
LABELS = np.repeat(np.arange(5), COUNTS)


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8), "RGB").save(path)


def _classes(root, counts=(6, 3, 1)):
    """root/<c0..>/ with counts[i] images each (distinct pixel values)."""
    for c, n in enumerate(counts):
        for i in range(n):
            _png(root / f"c{c}" / f"{i}.png", 20 * c + i)
    return root


# ------------------------------------------------------------------ the draw
def test_fraction_counts_per_class_and_tail_never_emptied():
    train, val, record = ValRule(fraction=0.1, seed=3).draw(LABELS)
    # round(0.1 n), at least 1, at most n - 1: the 1-sample class stays in training, no val sample
    assert np.bincount(LABELS[val], minlength=5).tolist() == [10, 2, 1, 1, 0]
    assert np.bincount(LABELS[train], minlength=5).tolist() == [90, 18, 4, 1, 1]
    assert record["val_counts"] == [10, 2, 1, 1, 0] and record["num_val"] == 14
    assert record["rule"] == "val_split=0.1" and record["seed"] == 3


def test_per_class_counts():
    train, val, record = ValRule(per_class=3).draw(LABELS)
    assert np.bincount(LABELS[val], minlength=5).tolist() == [3, 3, 3, 1, 0]
    assert np.bincount(LABELS[train], minlength=5).tolist() == [97, 17, 2, 1, 1]
    assert record["rule"] == "val_per_class=3"


def test_draw_is_a_seeded_partition():
    rule = ValRule(fraction=0.25, seed=7)
    train, val, record = rule.draw(LABELS)
    again = rule.draw(LABELS)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert record["val_index_sha256"] == again[2]["val_index_sha256"]
    other = ValRule(fraction=0.25, seed=8).draw(LABELS)[1]
    assert not np.array_equal(val, other)  # another seed, other images ...
    assert np.array_equal(np.bincount(LABELS[val]), np.bincount(LABELS[other]))  # ... same counts
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(LABELS.size))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    shuffled = np.random.default_rng(0).permutation(LABELS)  # classes need not be contiguous
    t, v, _ = ValRule(per_class=2).draw(shuffled)
    assert np.bincount(shuffled[v], minlength=5).tolist() == [2, 2, 2, 1, 0]


def test_empty_class_and_rule_errors():
    labels = np.array([0, 0, 0, 2, 2])  # class 1 has no sample at all
    train, val, record = ValRule(per_class=1).draw(labels, num_classes=4)
    assert record["val_counts"] == [1, 0, 1, 0] and train.size == 3
    for kwargs, message in [({"fraction": 1.0}, "val_split must be a fraction between 0 and 1"),
                            ({"fraction": 0.0}, "val_split must be a fraction"),
                            ({"per_class": -1}, "val_per_class must be >= 0"),
                            ({"fraction": 0.1, "per_class": 2}, "not both")]:
        with pytest.raises(ConfigError, match=message):
            ValRule(**kwargs)
    with pytest.raises(ConfigError, match="no validation rule"):
        ValRule().draw(labels)


def test_split_features_keeps_classes_and_records_the_draw():
    from longtail.data.features import FeatureSet

    fs = FeatureSet(np.arange(LABELS.size * 2, dtype=np.float32).reshape(-1, 2), LABELS,
                    class_names=list("abcde"), source="train.npz")
    train, val, record = split_features(fs, ValRule(fraction=0.1))
    assert (len(train.labels), len(val.labels)) == (128 - 14, 14)
    assert train.class_names == val.class_names == list("abcde")
    assert val.source == "train.npz#val" and train.source == "train.npz"
    assert train.meta["val_split"] == record and record["from"] == "train.npz"
    assert set(train.features[:, 0]).isdisjoint(val.features[:, 0])
    single = FeatureSet(np.zeros((2, 2), np.float32), np.array([0, 1]), source="one.npz")
    with pytest.raises(DataError, match="leaves no validation sample"):
        split_features(single, ValRule(per_class=1))


# ------------------------------------------------------------------ sources without splits
def test_plain_folder_has_only_the_train_split(tmp_path):
    data = _classes(tmp_path / "my_test")
    assert len(open_images(str(data))) == 10
    with pytest.raises(DataError, match=r"my_test has no splits \(it is one folder of classes\), so there is "
                                        r"no 'test' split; use a folder with train/ and test/"):
        open_images(str(data), split="test")
    with pytest.raises(DataError, match="no 'val' split; use val_split=0.1 or val_per_class=N"):
        open_images(str(data), split="val")


def test_train_test_pair_is_the_documented_layout(tmp_path):
    _classes(tmp_path / "data" / "train", (4, 2))
    _classes(tmp_path / "data" / "test", (1, 1))
    assert open_images(str(tmp_path / "data"), split="test").class_counts().tolist() == [1, 1]
    assert open_images(str(tmp_path / "data")).class_counts().tolist() == [4, 2]
    with pytest.raises(DataError, match=r"no 'val' folder \(splits found: test, train\); val_split=0.1"):
        open_images(str(tmp_path / "data"), split="val")


def test_zip_list_and_csv_without_splits(tmp_path):
    data = _classes(tmp_path / "imgs", (2, 1))
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(data.rglob("*.png")):
            zf.write(f, f"imgs/{f.relative_to(data).as_posix()}")
    assert len(open_images(str(archive))) == 3
    with pytest.raises(DataError, match=r"imgs.zip has no splits \(it is a zip of class folders\)"):
        open_images(str(archive), split="test")
    (tmp_path / "l.txt").write_text("c0/0.png 0\nc1/0.png 1\n")
    (tmp_path / "l.csv").write_text("path,label\nc0/0.png,0\nc1/0.png,1\n")
    assert len(open_images(str(tmp_path / "l.txt"), root=str(data))) == 2
    with pytest.raises(DataError, match=r"l.txt has no splits \(it is one list file of labelled images\)"):
        open_images(str(tmp_path / "l.txt"), split="test", root=str(data))
    with pytest.raises(DataError, match=r"l.csv has no splits \(it is one CSV"):
        open_images(str(tmp_path / "l.csv"), split="val", root=str(data))


# ------------------------------------------------------------------ empty class folders
def test_empty_class_folder_is_an_error_unless_dropped_or_kept(tmp_path):
    data = _classes(tmp_path / "d", (2, 1))
    (data / "c9").mkdir()
    (data / "c9" / "notes.txt").write_text("no image here")
    with pytest.raises(DataError, match="class folder 'c9' has no images; add images, or pass empty_classes=drop"):
        open_images(str(data))
    dropped = open_images(str(data), empty_classes="drop")
    assert dropped.class_names == ["c0", "c1"] and dropped.class_counts().tolist() == [2, 1]
    kept = open_images(str(data), empty_classes="keep")
    assert kept.class_names == ["c0", "c1", "c9"] and kept.class_counts().tolist() == [2, 1, 0]
    with pytest.raises(ConfigError, match="empty_classes must be one of error, drop, keep"):
        open_images(str(data), empty_classes="skip")
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(data.rglob("*")):
            zf.write(f, f"train/{f.relative_to(data).as_posix()}")  # dir entries too
    with pytest.raises(DataError, match="class folder 'c9' has no images"):
        open_images(str(archive))
    assert open_images(str(archive), empty_classes="drop").class_names == ["c0", "c1"]


# ------------------------------------------------------------------ open_part (features / stats)
def test_open_part_train_and_val_never_overlap(tmp_path):
    data = str(_classes(tmp_path / "d", (6, 3, 1)))
    rule = ValRule(per_class=2, seed=1)
    val, record = open_part(data, "val", None, rule)
    train, _ = open_part(data, "train", None, rule)
    assert val.class_counts().tolist() == [2, 2, 0] and train.class_counts().tolist() == [4, 1, 1]
    assert set(val.items.tolist()).isdisjoint(train.items.tolist())
    assert record["part"] == "val" and record["val_counts"] == [2, 2, 0]
    with pytest.raises(ConfigError, match="split 'test' is not one of them"):
        open_part(data, "test", None, rule)
    plain, none = open_part(data, "train", None, ValRule())
    assert len(plain) == 10 and none is None


# ------------------------------------------------------------------ commands
def test_features_split_val_on_plain_folder_is_one_line_error(tmp_path, capsys):
    """Observation 3 replayed: `features --data my_test --split val` wrote the test features again."""
    data = _classes(tmp_path / "my_test")
    out = tmp_path / "val.npz"
    rc = main(["features", "--data", str(data), "--split", "val", "--backbone", "tiny_clip", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and "has no splits (it is one folder of classes)" in err
    assert "val_split=0.1" in err
    rc = main(["features", "--data", str(data), "--split", "test", "val_split=0.2", "--backbone", "tiny_clip",
               "--out", str(out)])
    assert rc == 2 and "split 'test' is not one of them" in capsys.readouterr().err


def test_features_val_split_writes_disjoint_parts(tmp_path, monkeypatch, capsys):
    from longtail.data.features import load_features

    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "cache"))
    data = _classes(tmp_path / "photos", (6, 3, 1))
    common = ["--data", str(data), "--backbone", "tiny_clip", "--no-progress", "val_split=0.3", "seed=4"]
    assert main(["features", *common, "--split", "val", "--out", str(tmp_path / "val.npz")]) == 0
    assert main(["features", *common, "--split", "train", "--out", str(tmp_path / "train.npz")]) == 0
    assert "val part of the training split, val_split=0.3, seed 4" in capsys.readouterr().out
    val, train = load_features(tmp_path / "val.npz"), load_features(tmp_path / "train.npz")
    assert val.class_counts().tolist() == [2, 1, 0] and train.class_counts().tolist() == [4, 2, 1]
    assert val.meta["val_split"]["val_counts"] == [2, 1, 0] and val.meta["val_split"]["seed"] == 4
    assert val.meta["val_split"]["val_index_sha256"] == train.meta["val_split"]["val_index_sha256"]
    assert val.meta["split"] == "val" and val.meta["val_split"]["part"] == "val"
    rows = {tuple(r) for r in np.round(train.features, 5)}
    assert not any(tuple(r) in rows for r in np.round(val.features, 5))  # distinct images, distinct rows


def test_stats_describes_the_drawn_part(tmp_path, capsys):
    data = _classes(tmp_path / "d", (6, 3, 1))
    assert main(["stats", str(data), "--split", "val", "val_per_class=2", "--no-plot", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == [2, 2, 0]
    assert main(["stats", str(data), "--split", "test", "--no-plot"]) == 2
    assert "has no splits" in capsys.readouterr().err


def test_probe_draws_validation_from_train(tmp_path, capsys):
    """--posthoc-tau auto / --calibrate with only --train/--test: val_split holds out part of train."""
    base = ["probe", "--train", "synthetic_features:train", "--test", "synthetic_features:test",
            "--loss", "la", "--no-report"]
    assert main([*base, "--posthoc-tau", "auto", "--out", str(tmp_path / "none")]) == 2
    assert "add --val FILE, or val_split=0.1" in capsys.readouterr().err
    assert main([*base, "--val", "synthetic_features:val", "val_split=0.1", "--out", str(tmp_path / "x")]) == 2
    assert "use one" in capsys.readouterr().err
    assert main([*base, "val_split=1.5", "--out", str(tmp_path / "x")]) == 2
    assert "val_split must be a fraction" in capsys.readouterr().err
    out = tmp_path / "drawn"
    assert main([*base, "--posthoc-tau", "auto", "--calibrate", "temperature", "val_split=0.1",
                 "--out", str(out), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["post_hoc"]["temperature"] != 1.0
    config = yaml.safe_load((out / "config.yaml").read_text())
    from longtail.data.open_features import open_features

    full = open_features("synthetic_features:train")
    drawn = config["val_split"]
    assert drawn["rule"] == "val_split=0.1" and drawn["seed"] == 0 and drawn["from"] == "synthetic_features:train"
    expected = ValRule(fraction=0.1).val_counts(full.class_counts())
    assert drawn["val_counts"] == expected.tolist() and min(full.class_counts() - expected) >= 1
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["counts"] == (full.class_counts() - expected).tolist()  # trained without the val part
    assert config["probe"]["val_split"] == 0.1


# ------------------------------------------------------------------ fit
def test_fit_on_plain_folder_says_it_has_no_test_split(tmp_path, capsys):
    """Observation 3 replayed: `fit dataset=my_lt_train` evaluated on its own training images."""
    data = _classes(tmp_path / "my_lt_train", (6, 3, 1))
    out = tmp_path / "run"
    rc = main(["fit", "-d", str(data), "-b", "tiny_clip", "-m", "linear_probe", "--out", str(out),
               "epochs=1", "progress=false", "backbone_options.image_size=16", "backbone_options.patch_size=8"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "fit evaluates on the 'test' split" in err and "my_lt_train has no splits" in err
    assert not out.exists()  # failed before training: nothing to resume, nothing left behind


def test_fit_validation_from_train_or_test(tmp_path):
    from longtail.methods.finetune import build_config
    from longtail.methods.finetune.data import open_splits

    _classes(tmp_path / "data" / "train", (8, 4, 1))
    _classes(tmp_path / "data" / "test", (3, 3, 3))
    opts = {"backbone_options": {"image_size": 16, "patch_size": 8}, "progress": False, "seed": 2}
    spec = str(tmp_path / "data")
    cfg = build_config(spec, "tiny_clip", "linear_probe", {**opts, "val_from": "train", "val_split": "0.25"})
    s = open_splits(cfg)
    assert s.val.class_counts().tolist() == [2, 1, 0] and s.train.class_counts().tolist() == [6, 3, 1]
    assert s.test.class_counts().tolist() == [3, 3, 3]  # the test split is untouched
    assert set(s.val.items.tolist()).isdisjoint(s.train.items.tolist())
    assert s.validation["from"] == "train" and s.validation["val_counts"] == [2, 1, 0]
    cfg = build_config(spec, "tiny_clip", "linear_probe", {**opts, "val_per_class": 1})  # default: test
    s = open_splits(cfg)
    assert s.val.class_counts().tolist() == [1, 1, 1] and s.test.class_counts().tolist() == [2, 2, 2]
    assert s.train.class_counts().tolist() == [8, 4, 1] and s.validation["from"] == "test"
    for bad, message in [({"val_from": "train"}, "val_from=train draws validation from the training images"),
                         ({"val_from": "val"}, "val_from must be one of test, train"),
                         ({"val_split": "1.5"}, "val_split must be a split name or a fraction"),
                         ({"val_split": "0.2", "val_per_class": 2}, "not both")]:
        with pytest.raises(ConfigError, match=message):
            build_config(spec, "tiny_clip", "linear_probe", {**opts, **bad})


def test_a_plain_folder_given_as_a_test_set_is_read_whole(tmp_path):
    from longtail.data.open_images import test_split_of

    plain = _classes(tmp_path / "my_test", (2, 1))
    _classes(tmp_path / "pair" / "train", (3, 1))
    _classes(tmp_path / "pair" / "test", (1, 1))
    assert test_split_of(plain) == "train" and len(open_images(plain, split=test_split_of(plain))) == 3
    assert test_split_of(tmp_path / "pair") == "test" and test_split_of("synthetic_images") == "test"


def test_empty_class_folder_replayed_on_the_command_line(tmp_path, capsys):
    """Observation 9 replayed: a class folder with 0 images was accepted silently."""
    data = _classes(tmp_path / "pets", (2, 1))
    (data / "zebra").mkdir()
    assert main(["stats", str(data), "--no-plot"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "class folder 'zebra' has no images" in err
    assert main(["stats", str(data), "--no-plot", "--json", "--option", "empty_classes=drop"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == [2, 1]


# ------------------------------------------------------------------ one validation vocabulary


def test_val_rule_first_takes_the_first_of_each_class_in_file_order_and_stratified_a_seeded_draw():
    labels = np.random.default_rng(4).permutation(LABELS)
    train, val, record = ValRule(per_class=3, order="first").draw(labels)
    for c, n in enumerate(COUNTS):
        want = np.flatnonzero(labels == c)[:min(3, n - 1)]  # each class keeps one sample
        np.testing.assert_array_equal(val[labels[val] == c], want)
    assert record["rule"] == "val_per_class=3, val_rule=first" and record["seed"] is None
    assert np.union1d(train, val).size == labels.size and np.intersect1d(train, val).size == 0
    # the same sizes by the seeded rule: a different choice for the head class, the same per seed
    _, drawn, rec = ValRule(per_class=3, seed=1).draw(labels)
    assert np.bincount(labels[drawn]).tolist() == np.bincount(labels[val]).tolist()
    assert not np.array_equal(drawn, val) and rec["rule"] == "val_per_class=3" and rec["seed"] == 1
    np.testing.assert_array_equal(drawn, ValRule(per_class=3, seed=1).draw(labels)[1])
    # a fraction by file order too
    _, first_frac, _ = ValRule(fraction=0.5, order="first").draw(labels)
    np.testing.assert_array_equal(first_frac[labels[first_frac] == 0], np.flatnonzero(labels == 0)[:50])
    with pytest.raises(ConfigError, match="val_rule must be one of stratified, first, got 'random'"):
        ValRule(per_class=1, order="random")


def test_every_config_that_draws_validation_takes_val_rule(tmp_path):
    from longtail.data.features import FeatureSet
    from longtail.data.stats import StatsConfig
    from longtail.methods.finetune import build_config
    from longtail.methods.probe import ProbeConfig
    from longtail.models.extract import FeaturesConfig

    feats = FeatureSet(features=np.random.default_rng(0).normal(size=(LABELS.size, 4)).astype(np.float32),
                       labels=LABELS.copy(), class_names=[f"c{i}" for i in range(5)], source="mem")
    rule = ProbeConfig(val_per_class=2, val_rule="first").validation_rule()
    _, val, _ = split_features(feats, rule)
    assert val.labels.tolist() == [0, 0, 1, 1, 2, 2, 3]  # the first two of each class (class 3 keeps one)
    assert FeaturesConfig("d", "b", str(tmp_path / "f.npz"), val_per_class=2, val_rule="first",
                          split="val").validation_rule() == rule
    assert StatsConfig("d", val_per_class=2, val_rule="first", split="val").validation_rule() == rule
    for make in (lambda: ProbeConfig(val_per_class=2, val_rule="last"),
                 lambda: FeaturesConfig("d", "b", str(tmp_path / "f.npz"), val_per_class=2, val_rule="last"),
                 lambda: StatsConfig("d", val_per_class=2, val_rule="last"),
                 lambda: build_config("synthetic_images", "tiny_clip", "linear_probe",
                                      {"val_per_class": 2, "val_rule": "last"})):
        with pytest.raises(ConfigError, match="val_rule must be one of stratified, first"):
            make()


def test_fit_val_rule_first_holds_out_the_first_test_images_and_stratified_a_seeded_draw(tmp_path):
    from longtail.methods.finetune import build_config
    from longtail.methods.finetune.data import open_splits

    _classes(tmp_path / "data" / "train", (4, 2, 1))
    _classes(tmp_path / "data" / "test", (5, 5, 5))
    opts = {"backbone_options": {"image_size": 16, "patch_size": 8}, "progress": False, "val_per_class": 2}
    spec = str(tmp_path / "data")
    test_items = open_images(spec, split="test").items.tolist()
    first = open_splits(build_config(spec, "tiny_clip", "linear_probe", {**opts, "val_rule": "first"}))
    assert first.val.items.tolist() == [test_items[i] for i in (0, 1, 5, 6, 10, 11)]
    assert first.validation["rule"] == "val_per_class=2, val_rule=first" and first.validation["from"] == "test"
    drawn = [open_splits(build_config(spec, "tiny_clip", "linear_probe", {**opts, "seed": s})) for s in range(4)]
    assert all(d.val.class_counts().tolist() == [2, 2, 2] for d in drawn)
    assert len({tuple(d.val.items.tolist()) for d in drawn}) > 1  # the seed decides which
    assert drawn[0].validation["rule"] == "val_per_class=2" and drawn[0].validation["seed"] == 0
    # the LT-Soups preset asks for the first-N protocol by name
    assert build_config(spec, "tiny_clip", "lt_soups", {}).val_rule == "first"


def test_saved_fit_configs_and_plans_from_before_val_rule_keep_their_meaning():
    from longtail.methods.finetune.config import FitConfig, config_from_dict
    from longtail.soups.lt_soups import PLAN_FORMAT, migrate_plan

    old = {k: v for k, v in FitConfig(val_per_class=10).to_dict().items() if k != "val_rule"}
    assert config_from_dict(old).val_rule == "first"  # val_per_class from test meant the first N
    assert config_from_dict({**old, "val_from": "train"}).val_rule == "stratified"
    assert config_from_dict({**old, "val_per_class": 0}).val_rule == "stratified"
    assert config_from_dict({**old, "val_rule": "stratified"}).val_rule == "stratified"  # today's, kept
    plan2 = {**old, "format_version": 2}
    assert migrate_plan(plan2)["val_rule"] == "first" and migrate_plan(plan2)["format_version"] == PLAN_FORMAT
    assert migrate_plan({"dataset": "synthetic_images"})["val_rule"] == "first"  # format 1: val_per_class 10
