"""A test split that lacks some training classes (issue 22, P0 item 1): every reader of a second
split matches its classes to the training classes by name, so labels never shift; absent
classes are n/a in the metrics and said once; a class unknown to training is one line."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest

from longtail.cli import main
from longtail.data.open_images import open_matched
from longtail.eval.metrics import evaluate
from tests.conftest import write_random_images

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

TRAIN = {"ant": 6, "bee": 5, "cat": 4, "dog": 4}
TEST = {"ant": 2, "cat": 3, "dog": 4}  # no 'bee': 'cat' and 'dog' would shift onto bee / cat


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "test").mkdir()
    write_random_images(tmp_path / "data" / "train", TRAIN, (20, 28), seed=0)
    write_random_images(tmp_path / "data" / "test", TEST, (20, 28), seed=1)
    return tmp_path


def _per_class(run):
    with open(run / "per_class.csv", newline="") as handle:
        return {row["name"]: row for row in csv.DictReader(handle)}


def test_fit_on_a_test_folder_without_a_class_counts_each_class_by_name(folder, capsys):
    run = folder / "fit"
    with pytest.warns(UserWarning, match=r"1 of 4 training classes have no images here \('bee'\)"):
        assert main(["fit", "-d", str(folder / "data"), "-b", "tiny_clip", "-m", "lift", "--out", str(run),
                     "epochs=1", "batch_size=8"]) == 0
    rows = _per_class(run)
    assert {name: int(row["n_test"]) for name, row in rows.items()} == {**TEST, "bee": 0}
    assert rows["bee"]["accuracy"] == ""  # n/a, not 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["absent_test_classes"] == ["bee"] and metrics["num_test"] == sum(TEST.values())
    # eval --test on the same folder reads the test split the same way
    capsys.readouterr()
    assert main(["eval", str(run), "--test", str(folder / "data"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["class_mean"] == pytest.approx(metrics["class_mean"])


def test_features_of_a_test_split_carry_the_training_classes_and_probe_scores_them(folder, capsys):
    for split in ("train", "test"):
        assert main(["features", "--data", str(folder / "data"), "--split", split, "--backbone", "tiny_clip",
                     "--prototypes", "none", "--out", str(folder / f"{split}.npz"), "--no-progress"]) == 0
    from longtail.data.features import load_features

    test = load_features(folder / "test.npz")
    assert test.class_names == sorted(TRAIN)
    assert np.bincount(test.labels, minlength=4).tolist() == [2, 0, 3, 4]
    assert main(["probe", "--train", str(folder / "train.npz"), "--test", str(folder / "test.npz"),
                 "--out", str(folder / "probe"), "--no-report"]) == 0
    assert {n: int(r["n_test"]) for n, r in _per_class(folder / "probe").items()} == {**TEST, "bee": 0}


def test_a_test_class_unknown_to_training_is_one_line(folder, capsys):
    write_random_images(folder / "data" / "test", {"eel": 1}, (20, 28), seed=2)
    rc = main(["features", "--data", str(folder / "data"), "--split", "test", "--backbone", "tiny_clip",
               "--out", str(folder / "t.npz"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "class 'eel' is not one of the 4 training classes" in err


def _touch_folder(root, classes: dict[str, int]) -> None:
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            (root / name / f"{i}.png").write_bytes(b"")  # listing only: nothing is decoded


_NAME = st.text(alphabet="abcdefghij", min_size=1, max_size=4)


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), names=st.lists(_NAME, min_size=2, max_size=6, unique=True))
def test_any_missing_subset_in_any_folder_order_scores_by_class_name(tmp_path_factory, data, names):
    """Per-class metrics from the matched test split equal those computed by hand from names."""
    root = tmp_path_factory.mktemp("split")
    train = {n: 1 + i for i, n in enumerate(names)}
    kept = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True))  # any order, any subset
    test = {n: data.draw(st.integers(1, 3)) for n in kept}
    _touch_folder(root / "train", train)
    _touch_folder(root / "test", test)
    train_set = open_matched(str(root), "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test_set = open_matched(str(root), "test")
    assert test_set.class_names == train_set.class_names == sorted(names)
    # a 'classifier' that predicts by file: image i of class n is called class names[(pos + i) % C]
    names_sorted = sorted(names)
    truth = [test_set.items[k].split("/")[0] for k in range(len(test_set))]
    guess = [names_sorted[(names_sorted.index(t) + int(test_set.items[k].split("/")[1][0])) % len(names)]
             for k, t in enumerate(truth)]
    logits = np.eye(len(names))[[names_sorted.index(g) for g in guess]]
    metrics = evaluate(logits, test_set.labels, train_set.class_counts(), class_names=train_set.class_names)
    for row in metrics["per_class"]:
        mine = [g == t for g, t in zip(guess, truth) if t == row["name"]]
        assert row["n_test"] == len(mine) == test.get(row["name"], 0)
        assert row["accuracy"] == (None if not mine else pytest.approx(np.mean(mine)))
