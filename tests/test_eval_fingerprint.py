"""`longtail eval` checks the test data a run saved (observation 4 of issue 13), and an unstaged
run records how it stopped in status.json (observation 9: no 'running' after an interrupt)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from longtail.cli import main
from longtail.data.features import FeatureSet, load_features, save_features
from longtail.data.synthetic_features import make_synthetic_benchmark


# ------------------------------------------------------------------ probe runs: feature files
@pytest.fixture()
def project(tmp_path, monkeypatch):
    """project/{train,test,other}.npz (other: same classes and dim, other samples); cwd = project."""
    root = tmp_path / "project"
    root.mkdir()
    bench = make_synthetic_benchmark(seed=1, num_classes=5, dim=8, n_max=120, imbalance_ratio=20,
                                     n_val=10, n_test=30, bayes_per_class=10)
    save_features(bench.train, root / "train.npz")
    save_features(bench.test, root / "test.npz")
    save_features(bench.val, root / "other.npz")
    monkeypatch.chdir(root)
    assert main(["probe", "--train", "train.npz", "--test", "test.npz", "--loss", "la", "--out", "run",
                 "--no-report", "--json"]) == 0
    return root


def _eval(capsys, *argv):
    capsys.readouterr()
    code = main(["eval", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_probe_run_records_its_feature_files(project):
    config = yaml.safe_load((project / "run" / "config.yaml").read_text())
    test = load_features(project / "test.npz")
    record = config["fingerprints"]["test"]
    assert record["samples"] == test.num_samples and record["dim"] == 8
    assert record["bytes"] == (project / "test.npz").stat().st_size and len(record["sha256"]) == 64
    assert config["fingerprints"]["train"]["samples"] == load_features(project / "train.npz").num_samples
    assert config["fingerprints"]["val"] is None


def test_observation_4_replaced_test_file_is_refused(project, capsys):
    """After the file at the saved path is replaced by other features, eval refuses (one line,
    naming the file and what changed) instead of printing their accuracy; --test evaluates them."""
    code, out, _ = _eval(capsys, "run", "--json")
    assert code == 0 and json.loads(out)["all"] is not None
    shutil.copy(project / "other.npz", project / "test.npz")
    code, out, err = _eval(capsys, "run")
    assert code == 2 and out == ""
    line = err.strip()
    assert len(line.splitlines()) == 1
    assert "test.npz" in line and "changed since" in line and "now holds 50 x 8 features, the run used 150 x 8" in line
    assert "--test" in line
    code, out, err = _eval(capsys, "run", "--test", "test.npz")
    assert code == 0 and "evaluated on test.npz (not the run's own test set)" in out
    assert "all" in out


def test_same_shape_other_values_is_refused_and_re_saving_the_same_arrays_is_not(project, capsys):
    original = load_features(project / "test.npz")
    save_features(original.with_arrays(original.features[::-1].copy(), original.labels[::-1].copy()),
                  project / "test.npz")
    code, _, err = _eval(capsys, "run")
    assert code == 2 and "same shape (150 x 8) but other values" in err
    # the same arrays in another container (other meta, other size on disk) are the same test set
    save_features(FeatureSet(original.features, original.labels, original.class_names,
                             meta={"note": "re-saved"}), project / "test.npz")
    code, out, _ = _eval(capsys, "run")
    assert code == 0 and "not the run's own" not in out
    code, out, _ = _eval(capsys, "run", "--test", "test.npz")
    assert code == 0 and "(the run's own test set)" in out


def test_saved_path_replaced_elsewhere_falls_back_to_the_matching_copy(project, tmp_path, monkeypatch, capsys):
    """The recorded absolute path now holds other features, but the run folder holds the file as
    given: eval finds the copy that matches the fingerprint (and from any working directory)."""
    shutil.copy(project / "test.npz", project / "run" / "test.npz")
    shutil.copy(project / "other.npz", project / "test.npz")
    monkeypatch.chdir(tmp_path)
    code, out, err = _eval(capsys, project / "run", "--json")
    assert code == 0, err
    with_json = json.loads(out)
    monkeypatch.chdir(project)
    shutil.copy(project / "run" / "test.npz", project / "test.npz")
    code, out, _ = _eval(capsys, "run", "--json")
    assert json.loads(out) == with_json


# ------------------------------------------------------------------ fit runs: images and status
SMALL = {"batch_size": 8, "progress": False, "epochs": 1,
         "backbone_options": {"image_size": 16, "patch_size": 8}}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A user folder with train/ and test/ (3 classes, 16x16 PNGs)."""
    root = tmp_path_factory.mktemp("user_images")
    rng = np.random.default_rng(0)
    for split, counts in {"train": (8, 4, 2), "test": (3, 3, 3)}.items():
        for c, n in enumerate(counts):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(n):
                base = np.zeros((16, 16, 3), np.uint8)
                base[..., c] = 200
                noise = rng.integers(0, 40, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(base + noise).save(root / split / f"class{c}" / f"{i}.png")
    return root


def _cfg(images, method="linear_probe", **extra):
    from longtail.methods.finetune import build_config

    return build_config(str(images), "tiny_clip", method, {**SMALL, **extra})


def test_fit_run_refuses_changed_test_images(images, tmp_path, capsys):
    from longtail.methods.finetune import fit

    run = tmp_path / "fit"
    fit(_cfg(images), out=run, report=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_data"]["images"] == 9 and metrics["test_data"]["fingerprint"]
    code, out, _ = _eval(capsys, run, "--json")
    assert code == 0 and json.loads(out)["all"] == pytest.approx(metrics["all"])

    image = images / "test" / "class1" / "0.png"
    original = image.read_bytes()
    try:
        Image.fromarray(np.full((16, 16, 3), 255, np.uint8)).save(image)
        code, out, err = _eval(capsys, run)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
        assert "test images" in err and "changed since the run" in err and "other content" in err
        code, out, _ = _eval(capsys, run, "--test", images)
        assert code == 0 and "(not the run's own test set)" in out
    finally:
        image.write_bytes(original)
    code, out, _ = _eval(capsys, run, "--test", images)
    assert code == 0 and "(the run's own test set)" in out


def _status(folder):
    return json.loads((folder / "status.json").read_text())


@pytest.mark.parametrize("stop, status", [(RuntimeError("disk full\nsecond line"), "failed"),
                                          (KeyboardInterrupt(), "interrupted")])
def test_stopped_fit_run_records_how_it_stopped(images, tmp_path, monkeypatch, stop, status):
    import longtail.methods.finetune.runner as runner

    def stops_after_first_checkpoint(parts):
        assert _status(parts.run.dir)["status"] == "running"
        (parts.run.dir / "checkpoints").mkdir()
        (parts.run.dir / "checkpoints" / "latest.json").write_text("{}")
        raise stop

    monkeypatch.setattr(runner, "train_loop", stops_after_first_checkpoint)
    with pytest.raises(type(stop)):
        runner.fit(_cfg(images), out=tmp_path / "r", report=False)
    recorded = _status(tmp_path / "r")
    assert recorded["status"] == status
    if status == "failed":
        assert recorded["error"] == "RuntimeError: disk full"
    else:
        assert "error" not in recorded


def test_interrupted_then_resumed_fit_run_status(images, tmp_path):
    from longtail.methods.finetune import fit

    cfg = _cfg(images, epochs=2, save_every=1)
    part = fit(cfg, out=tmp_path / "r", stop_after_steps=1, report=False)
    assert part.interrupted and _status(tmp_path / "r")["status"] == "interrupted"
    fit(cfg, out=tmp_path / "r", resume=True, report=False)
    assert _status(tmp_path / "r")["status"] == "finished"


def test_staged_runs_still_leave_nothing_and_unstaged_record_failure(tmp_path):
    from longtail.runs import create_run

    with pytest.raises(ValueError):
        with create_run(tmp_path / "staged", "probe", {"a": 1}):
            raise ValueError("boom")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError):
        with create_run(tmp_path / "unstaged", "fit", {"a": 1}, staged=False):
            raise ValueError("")
    assert _status(tmp_path / "unstaged") == {**_status(tmp_path / "unstaged"), "status": "failed",
                                              "error": "ValueError"}
    run = create_run(tmp_path / "unstaged", "fit", {"a": 1}, staged=False, resume=True)
    assert _status(tmp_path / "unstaged")["status"] == "running"
    with run:
        run.finish({"all": 1.0})
    assert _status(tmp_path / "unstaged")["status"] == "finished"
