"""`longtail stats` through the CLI entry point: summary, JSON, plot file, feature files, errors."""

import json

import numpy as np
import pytest
from PIL import Image

from longtail import cli
from longtail.data.features import FeatureSet, save_features


@pytest.fixture(autouse=True)
def only_stats(monkeypatch, tmp_path):
    # other command modules may not exist yet in a partial checkout; build the parser with ours
    monkeypatch.setattr(cli, "COMMANDS", ("stats",))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "cache"))


def _folder(root, counts):
    for c, n in enumerate(counts):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (2, 2), (c, i % 256, 0)).save(root / f"class{c}" / f"{i}.png")
    return root


def test_stats_on_folder_summary_and_plot(tmp_path, capsys):
    data = _folder(tmp_path / "toy", [120, 30, 5])
    assert cli.main(["stats", str(data)]) == 0
    out = capsys.readouterr().out
    assert "imbalance ratio   24.00" in out
    assert "head-tail ratio   0.500" in out
    assert "many    classes   1" in out and "few     classes   1" in out
    plot = tmp_path / "toy_class_counts.png"
    assert plot.is_file() and Image.open(plot).format == "PNG"
    # never overwrite: a second run gets a suffix
    assert cli.main(["stats", str(data)]) == 0
    assert (tmp_path / "toy_class_counts_1.png").is_file()
    assert "toy_class_counts_1.png" in capsys.readouterr().out


def test_stats_thresholds_and_empty_group(tmp_path, capsys):
    data = _folder(tmp_path / "toy", [30, 25])
    assert cli.main(["stats", str(data), "--no-plot", "--many", "26", "--few", "3"]) == 0
    out = capsys.readouterr().out
    assert "many    classes   1" in out and "medium  classes   1" in out
    assert "few     classes   0  (empty)" in out
    assert not list(tmp_path.glob("*.png"))


def test_stats_json_on_preset_with_options(tmp_path, capsys):
    plot = tmp_path / "plots" / "syn.png"
    assert cli.main(["stats", "synthetic_images", "--json", "--plot", str(plot),
                     "--option", "n_max=50", "--option", "imbalance_ratio=10"]) == 0
    captured = capsys.readouterr()
    stats = json.loads(captured.out)
    assert stats["counts"] == [50, 38, 29, 23, 17, 13, 10, 8, 6, 5]
    assert stats["imbalance_ratio"] == 10.0 and stats["group_sizes"]["many"] == 0
    assert stats["data"] == "synthetic_images_train"
    assert plot.is_file() and "plot saved" in captured.err


def test_stats_on_feature_file(tmp_path, capsys):
    labels = np.repeat([0, 1, 2], [150, 40, 10])
    fs = FeatureSet(np.zeros((200, 4), np.float32), labels, class_names=["a", "b", "c"],
                    meta={"group_counts": [150, 150, 10]})
    path = save_features(fs, tmp_path / "train.npz")
    assert cli.main(["stats", str(path), "--json", "--no-plot"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["counts"] == [150, 40, 10] and stats["class_names"] == ["a", "b", "c"]
    assert stats["groups"] == ["many", "many", "few"]  # from meta group_counts


def test_stats_errors_exit_2(tmp_path, capsys):
    assert cli.main(["stats", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli.main(["stats", "synthetic_images", "--many", "5", "--few", "10"]) == 2
    assert "few (10) must not exceed many (5)" in capsys.readouterr().err
    assert cli.main(["stats", "synthetic_images", "--option", "oops"]) == 2


def test_stats_help_has_example(capsys):
    with pytest.raises(SystemExit):
        cli.main(["stats", "--help"])
    out = capsys.readouterr().out
    assert "longtail stats cifar100_lt --root hf:cifar100" in out and "--option" in out
