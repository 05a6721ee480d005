"""`longtail probe / eval / report` end to end on small feature files: the config grammar
(KEY=VALUE, dotted keys, flags as sugar, every mistake caught before a file is read), the
post-hoc options, the probe run kind (re-evaluation), and the bad-input matrix."""

import json

import numpy as np
import pytest
import yaml

from longtail.cli import main
from longtail.data.features import FeatureSet, load_features, save_features
from longtail.data.synthetic_features import make_synthetic_benchmark
from longtail.errors import DataError


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
    # counts 150 -> 5 (IR 30) over 6 classes: every group is populated
    assert out["few"] is not None
    run = tmp_path / "run"
    saved = json.loads((run / "metrics.json").read_text())
    for key in ("all", "many", "medium", "few", "ece", "class_mean"):
        assert out[key] == pytest.approx(saved[key]), key  # --json prints what the run folder keeps
    per_class = [float(row.split(",")[-1]) for row in (run / "per_class.csv").read_text().splitlines()[1:]]
    assert out["class_mean"] == pytest.approx(sum(per_class) / len(per_class))
    for name in ("config.yaml", "env.json", "data_stats.json", "metrics.json", "per_class.csv",
                 "report.html", "head/head.safetensors", "head/head.json"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["all"] == pytest.approx(out["all"])
    stats = json.loads((run / "data_stats.json").read_text())
    assert stats["imbalance_ratio"] == pytest.approx(30.0) and "head_tail_ratio" in stats


def test_eval_reproduces_the_saved_metrics(files, tmp_path, capsys):
    assert _probe(files, tmp_path, "--json", "--no-report") == 0
    saved = json.loads(capsys.readouterr().out)
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    for key in ("all", "many", "medium", "few", "ece"):
        assert again[key] == pytest.approx(saved[key])


def test_runs_are_never_overwritten(files, tmp_path, capsys):
    assert _probe(files, tmp_path, "--no-report") == 0
    assert not (tmp_path / "run" / "report.html").exists()
    before = (tmp_path / "run" / "metrics.json").read_text()
    assert _probe(files, tmp_path, "--loss", "la") == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "run" / "metrics.json").read_text() == before


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
        ("set", "unknown config key 'bogus'; valid keys: method"),
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
        extra = ["bogus=1"]
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


def test_synthetic_features_preset_with_every_post_hoc_option(tmp_path, capsys):
    """posthoc_tau/interpolate "auto" and temperature calibration on the offline preset: the
    chosen values are recorded, and the saved head reproduces them as documented."""
    from longtail.eval.metrics import balanced_accuracy, evaluate
    from longtail.methods.probe import ALPHA_GRID, TAU_GRID, Probe, log_prior

    assert main(["stats", "synthetic_features", "--no-plot", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["imbalance_ratio"] == pytest.approx(100.0) and stats["num_classes"] == 40
    run = tmp_path / "run"
    assert main(["probe", "--train", "synthetic_features", "--test", "synthetic_features:test",
                 "--val", "synthetic_features:val", "--loss", "la", "--posthoc-tau", "auto",
                 "--interpolate", "auto", "--calibrate", "temperature", "--out", str(run), "--no-report",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    chosen = out["post_hoc"]
    metrics = json.loads((run / "metrics.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert metrics["post_hoc"] == chosen
    assert config["probe"]["posthoc_tau"] == "auto" and config["probe"]["interpolate"] == "auto"
    assert config["probe"]["calibrate"] == "temperature" and config["val"] == "synthetic_features:val"
    assert chosen["posthoc_tau"] in TAU_GRID and chosen["alpha"] in ALPHA_GRID and chosen["temperature"] != 1.0

    probe = Probe.load(run / "head")
    assert (probe.alpha, probe.posthoc_tau, probe.temperature) == (chosen["alpha"], chosen["posthoc_tau"],
                                                                    chosen["temperature"])
    val, test = load_val_test()
    # alpha and tau maximise balanced validation accuracy over the joint grid
    selection = probe.info["selection"]
    assert np.asarray(selection["scores"]).shape == (ALPHA_GRID.size, TAU_GRID.size)
    probe.temperature = 1.0
    assert balanced_accuracy(probe.logits(val.features), val.labels) == pytest.approx(selection["best"])
    # logits = ((1 - alpha) zero-shot + alpha trained - tau log pi) / T
    trained, zs = probe.parts(test.features)
    mixed = (1 - chosen["alpha"]) * zs.numpy() + chosen["alpha"] * trained.numpy() if chosen["alpha"] < 1 else trained.numpy()
    expected = (mixed - chosen["posthoc_tau"] * log_prior(probe.class_counts)) / chosen["temperature"]
    probe.temperature = chosen["temperature"]
    np.testing.assert_allclose(probe.logits(test.features), expected, rtol=1e-4, atol=1e-4)
    # temperature scaling leaves every prediction unchanged; only the confidence (ECE) moves
    train_stats = json.loads((run / "data_stats.json").read_text())
    probe.temperature = 1.0
    uncalibrated = evaluate(probe.logits(test.features), test.labels, np.asarray(train_stats["counts"]),
                            class_names=train_stats["class_names"])
    assert uncalibrated["per_class"] == metrics["per_class"] and uncalibrated["all"] == metrics["all"]
    assert uncalibrated["ece"] != metrics["ece"]

    assert main(["probe", "--train", "synthetic_features:bogus", "--test", "synthetic_features:test"]) == 2
    assert "unknown split 'bogus'" in capsys.readouterr().err


def load_val_test():
    from longtail.data.open_features import open_features

    return open_features("synthetic_features:val"), open_features("synthetic_features:test")


def test_list_prints_methods_and_losses_without_files(capsys):
    with pytest.raises(SystemExit) as info:
        main(["probe", "--list"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in ("linear", "cosine", "vmf-kde", "zero-shot", "la", "weighted-ce", "ccar-la"):
        assert name in out


# ------------------------------------------------------------------ the config grammar
def _config(run):
    return yaml.safe_load((run / "config.yaml").read_text())["probe"]


def test_key_value_overrides_and_flags_set_the_same_keys(files, tmp_path):
    base = ["probe", "--train", str(files["train"]), "--test", str(files["test"]), "--no-report"]
    assert main([*base, "--out", str(tmp_path / "a"), "loss=la", "loss_options.tau=0.5", "method=cosine",
                 "solver=adamw", "epochs=2", "lr=1e-2"]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--loss", "la", "--tau", "0.5", "--method", "cosine",
                 "--set", "solver=adamw", "epochs=2", "lr=0.01"]) == 0  # --set: the old spelling
    a, b = _config(tmp_path / "a"), _config(tmp_path / "b")
    assert a == b
    assert a["loss_options"] == {"tau": 0.5} and a["method"] == "cosine" and a["epochs"] == 2
    assert isinstance(a["lr"], float) and "tau" not in a
    # KEY=VALUE wins over the flag it repeats
    assert main([*base, "--out", str(tmp_path / "c"), "--loss", "ce", "loss=la"]) == 0
    assert _config(tmp_path / "c")["loss"] == "la"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["lr=abc"], "lr='abc': expected a number or none"),
        (["--seed", "x"], "seed='x': expected an integer"),
        (["max_iter=1.5"], "max_iter=1.5: expected an integer"),
        (["--loss", "la", "loss_options.gamma=0.1"], "loss 'la': unknown loss_options key 'gamma' (valid: tau)"),
        (["--loss", "ce", "--tau", "0.5"], "loss 'ce': unknown loss_options key 'tau' (valid: none)"),
        (["--method", "svm"], "unknown probe method 'svm'; choose from: auto, cosine, crt, distribution-calibration, "
                              "gaussian-kde, linear, lws, ncm, smote, tau-norm, vmf-kde, zero-shot"),
        (["--init", "zeros"], "init must be one of random, prototypes"),
        (["--posthoc-tau", "best"], "posthoc_tau must be none, 'auto' or a finite number"),
        (["--calibrate", "platt"], "calibrate must be one of"),
        (["solver=sgd"], "unknown probe solver 'sgd'; choose from: adamw, lbfgs"),
        (["method_options.k_neighbors=3"], "method 'cosine' takes no method_options"),
        (["lr.x=1"], "'lr.x': 'lr' is not a dict field"),
        (["novalue"], "expected key=value, got 'novalue'"),
        (["--interpolate", "auto"], "interpolate='auto' needs a validation set: add --val FILE"),
    ],
)
def test_config_mistakes_fail_before_any_feature_file_is_read(tmp_path, capsys, extra, message):
    missing = tmp_path / "absent.npz"  # never opened: the error must be about the config
    code = main(["probe", "--train", str(missing), "--test", str(missing), "--out", str(tmp_path / "run"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert "not found" not in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("option", [["--calibrate", "temperature"], ["--posthoc-tau", "auto"],
                                    ["--interpolate", "auto"]])
def test_post_hoc_options_need_val_and_record_their_choice(files, tmp_path, capsys, option):
    assert _probe(files, tmp_path, *option) == 2
    assert "needs a validation set" in capsys.readouterr().err
    assert _probe(files, tmp_path, *option, "--val", str(files["val"]), "--json", "--no-report") == 0
    chosen = json.loads(capsys.readouterr().out)["post_hoc"]
    head = json.loads((tmp_path / "run" / "head" / "head.json").read_text())
    assert chosen == {"alpha": head["alpha"], "posthoc_tau": head["posthoc_tau"], "temperature": head["temperature"]}
    key = {"--calibrate": "temperature", "--posthoc-tau": "posthoc_tau", "--interpolate": "alpha"}[option[0]]
    others = {k: v for k, v in chosen.items() if k != key}
    assert others == {k: v for k, v in {"alpha": 1.0, "posthoc_tau": 0.0, "temperature": 1.0}.items() if k != key}
    assert "calibration" in head["info"] if key == "temperature" else "selection" in head["info"]


# ------------------------------------------------------------------ the probe run kind
def test_probe_run_kind_reevaluates_exactly_and_refuses_a_mismatched_test(files, tmp_path, monkeypatch, capsys):
    from longtail.methods.probe import ProbeConfig
    from longtail.methods.probe.run import load_probe_config
    from longtail.methods.run_kinds import evaluate_run

    project = tmp_path / "project"
    project.mkdir()
    for split in ("train", "test", "val"):
        save_features(load_features(files[split]), project / f"{split}.npz")
    monkeypatch.chdir(project)  # relative paths on the command line
    assert main(["probe", "--train", "train.npz", "--test", "test.npz", "--val", "val.npz", "--loss", "la",
                 "--posthoc-tau", "auto", "--out", "run", "--no-report"]) == 0
    capsys.readouterr()
    saved = json.loads((project / "run" / "metrics.json").read_text())
    config = yaml.safe_load((project / "run" / "config.yaml").read_text())
    assert config["test"] == "test.npz" and config["absolute_paths"]["test"] == str(project / "test.npz")
    monkeypatch.chdir(tmp_path)  # elsewhere: the recorded absolute path is used
    again = evaluate_run(project / "run")
    assert again == {k: saved[k] for k in again}  # every metric, exactly
    assert set(saved) - set(again) == {"fit_seconds", "label", "post_hoc"}
    assert load_probe_config(config) == ProbeConfig(loss="la", posthoc_tau="auto")

    other_dim = FeatureSet(np.zeros((4, 3), np.float32), np.arange(4) % 2, source="x")
    save_features(other_dim, tmp_path / "other.npz")
    with pytest.raises(DataError, match="feature dimension 3 differs from the probe's") as err:
        evaluate_run(project / "run", str(tmp_path / "other.npz"))
    assert "\n" not in str(err.value)
    assert main(["eval", str(project / "run"), "--test", str(tmp_path / "other.npz")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_saved_feature_paths_resolve_absolute_then_as_given_then_from_the_run_folder(tmp_path, monkeypatch):
    from longtail.methods.probe.run import saved_feature_path

    run = tmp_path / "runs" / "r"
    (run / "data").mkdir(parents=True)
    (run / "data" / "test.npz").write_bytes(b"")
    (tmp_path / "moved.npz").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    config = {"test": "data/test.npz", "absolute_paths": {"test": str(tmp_path / "moved.npz")}}
    assert saved_feature_path(config, "test", run) == str(tmp_path / "moved.npz")  # recorded absolute path
    config["absolute_paths"]["test"] = str(tmp_path / "gone.npz")
    assert saved_feature_path(config, "test", run) == str(run / "data" / "test.npz")  # relative to the run
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test.npz").write_bytes(b"")
    assert saved_feature_path(config, "test", run) == "data/test.npz"  # as given, from the working directory
    assert saved_feature_path({"test": "synthetic_features:test"}, "test", run) == "synthetic_features:test"
    with pytest.raises(DataError, match="recorded no val features"):
        saved_feature_path(config, "val", run)
