"""`longtail probe / eval / report / demo` end to end on small feature files, and the bad-input matrix."""

import json

import numpy as np
import pytest

from longtail.cli import main
from longtail.data.features import FeatureSet, save_features
from longtail.data.synthetic_features import make_synthetic_benchmark


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("feats")
    bench = make_synthetic_benchmark(seed=1, num_classes=6, dim=8, n_max=150, imbalance_ratio=30,
                                     n_val=10, n_test=30, bayes_per_class=50)
    paths = {}
    for split in ("train", "val", "test"):
        paths[split] = save_features(getattr(bench, split), root / f"{split}.npz")
    return paths


def _probe(files, tmp_path, *extra):
    return main(["probe", "--train", str(files["train"]), "--test", str(files["test"]),
                 "--out", str(tmp_path / "run"), *extra])


def test_probe_json_contract_and_run_folder(files, tmp_path, capsys):
    assert _probe(files, tmp_path, "--loss", "la", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("all", "many", "medium", "few", "ece"):
        assert key in out
    for key in ("all", "many", "medium", "ece"):
        assert 0.0 <= out[key] <= 1.0
    # counts 150 -> 5 (IR 30) over 6 classes: every group is populated
    assert out["few"] is not None
    run = tmp_path / "run"
    for name in ("config.yaml", "env.json", "data_stats.json", "metrics.json", "per_class.csv",
                 "report.html", "head/head.safetensors", "head/head.json"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["all"] == pytest.approx(out["all"])
    stats = json.loads((run / "data_stats.json").read_text())
    assert stats["imbalance_ratio"] == pytest.approx(30.0) and "head_tail_ratio" in stats


def test_eval_reproduces_the_saved_metrics(files, tmp_path, capsys):
    assert _probe(files, tmp_path, "--json") == 0
    saved = json.loads(capsys.readouterr().out)
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    for key in ("all", "many", "medium", "few", "ece"):
        assert again[key] == pytest.approx(saved[key])


def test_runs_are_never_overwritten(files, tmp_path, capsys):
    assert _probe(files, tmp_path) == 0
    before = (tmp_path / "run" / "metrics.json").read_text()
    assert _probe(files, tmp_path, "--loss", "la") == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "run" / "metrics.json").read_text() == before


def test_comparison_report(files, tmp_path):
    for loss in ("ce", "la"):
        assert main(["probe", "--train", str(files["train"]), "--test", str(files["test"]),
                     "--loss", loss, "--out", str(tmp_path / loss)]) == 0
    assert main(["report", str(tmp_path / "ce"), str(tmp_path / "la"), "--out", str(tmp_path / "cmp.html")]) == 0
    page = (tmp_path / "cmp.html").read_text()
    assert "data:image/png;base64" in page and "ce" in page and "la" in page


def _bad(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "not found"),
        ("length", "differ in length"),
        ("nan", "NaN or inf"),
        ("range", "out of range"),
        ("empty_class", "has no training samples"),
        ("names", "out of range for 2 class names"),
        ("method", "unknown probe method 'nope'; choose from:"),
        ("loss", "unknown loss 'nope'; choose from:"),
        ("set", "unknown config key"),
    ],
)
def test_bad_input_fails_with_one_line_and_writes_nothing(files, tmp_path, capsys, case, message):
    train, test, extra = str(files["train"]), str(files["test"]), []
    x = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    if case == "missing":
        train = str(tmp_path / "absent.npz")
    elif case == "length":
        train = str(_bad(tmp_path, "t.npz", features=x, labels=np.arange(5)))
    elif case == "nan":
        x[2, 3] = np.nan
        train = str(_bad(tmp_path, "t.npz", features=x, labels=np.arange(6)))
    elif case == "range":
        test = str(_bad(tmp_path, "t.npz", features=x, labels=np.array([0, 1, 2, 3, 4, 9])))
    elif case == "empty_class":
        train = str(save_features(FeatureSet(x, np.array([0, 0, 1, 1, 3, 3]), class_names=list("abcd")), tmp_path / "t.npz"))
        test = str(save_features(FeatureSet(x, np.array([0, 1, 2, 3, 0, 1]), class_names=list("abcd")), tmp_path / "u.npz"))
    elif case == "names":
        train = str(_bad(tmp_path, "t.npz", features=x, labels=np.arange(6) % 3, class_names=np.array(["a", "b"])))
    elif case == "method":
        extra = ["--method", "nope"]
    elif case == "loss":
        extra = ["--loss", "nope"]
    elif case == "set":
        extra = ["--set", "bogus=1"]
    code = main(["probe", "--train", train, "--test", test, "--out", str(tmp_path / "run"), *extra])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
    assert not any(p.name.startswith(".run") for p in tmp_path.iterdir())


def test_every_subcommand_has_informative_help(capsys):
    from longtail.cli import COMMANDS

    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    for name in COMMANDS:
        assert name in top
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = capsys.readouterr().out
        assert "example" in text.lower() and len(text) > 300, name


def test_synthetic_features_is_an_offline_preset(tmp_path, capsys):
    assert main(["stats", "synthetic_features", "--no-plot", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["imbalance_ratio"] == pytest.approx(100.0) and stats["num_classes"] == 40
    assert main(["probe", "--train", "synthetic_features", "--test", "synthetic_features:test",
                 "--out", str(tmp_path / "run"), "--json"]) == 0
    assert 0.0 < json.loads(capsys.readouterr().out)["all"] <= 1.0
    assert main(["probe", "--train", "synthetic_features:bogus", "--test", "synthetic_features:test"]) == 2
    assert "unknown split 'bogus'" in capsys.readouterr().err


def test_list_prints_methods_and_losses_without_files(capsys):
    with pytest.raises(SystemExit) as info:
        main(["probe", "--list"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in ("linear", "cosine", "vmf-kde", "zero-shot", "la", "weighted-ce", "ccar-la"):
        assert name in out
