"""`longtail predict` (issue 18): any run kind labels new images with the logits `eval` scores,
unreadable files get a status row, outputs are never overwritten, interrupted runs resume to the
same bytes, a probe whose backbone changed is refused, the prior and reject options work."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from longtail.cli import main
from longtail.data.open_images import open_matched
from longtail.methods.predictor import Predictor
from tests.conftest import build_once, write_random_images

TRAIN = {"ant": 8, "bee": 6, "cat": 4, "dog": 3}
TEST = {"ant": 3, "bee": 3, "cat": 3, "dog": 3}


def _build_runs(root):
    """A labelled folder and one run of each kind on it (tiny CLIP, one epoch)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LONGTAIL_CACHE", str(root / "cache"))
    for split, counts, seed in (("train", TRAIN, 0), ("test", TEST, 1)):
        (root / "data" / split).mkdir(parents=True)
        write_random_images(root / "data" / split, counts, (20, 30), seed=seed)
    data = str(root / "data")
    for split in ("train", "test"):
        assert main(["features", "--data", data, "--split", split, "--backbone", "tiny_clip",
                     "--out", str(root / f"{split}.npz"), "--no-progress"]) == 0
    assert main(["probe", "--train", str(root / "train.npz"), "--test", str(root / "test.npz"),
                 "--val", str(root / "test.npz"), "--out", str(root / "probe"), "--no-report"]) == 0
    assert main(["fit", "-d", data, "-b", "tiny_clip", "-m", "lift", "--out", str(root / "fit"),
                 "epochs=1", "batch_size=8", "val_per_class=1"]) == 0
    assert main(["monosoup", "--w1", str(root / "fit"), "--w0", "zero-shot", "--out", str(root / "mono")]) == 0
    assert main(["soup", str(root / "fit"), str(root / "mono"), "--out", str(root / "soup")]) == 0
    mp.undo()


@pytest.fixture(scope="session")
def runs(tmp_path_factory, worker_id):
    """The runs of `_build_runs`, built once per session; tests write their outputs elsewhere."""
    return build_once(tmp_path_factory, worker_id, "predict_runs", _build_runs)


def _table(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("kind", ["probe", "fit", "mono", "soup"])
def test_predict_logits_on_the_test_images_equal_evals(runs, kind, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGTAIL_CACHE", str(runs / "cache"))
    out, logits = tmp_path / f"{kind}.csv", tmp_path / f"{kind}.npz"
    assert main(["predict", str(runs / kind), "--data", str(runs / "data" / "test"), "--out", str(out),
                 "--logits", str(logits), "--no-progress"]) == 0
    saved = np.load(logits)
    if kind == "probe":  # eval scores the saved test features
        want, _ = Predictor.from_run(runs / kind, device="cpu").test()
        evaluated = open_matched(str(runs / "data"), "test")
    else:  # eval scores the test split minus the held-out validation images, as evaluation_logits does
        from longtail.methods.finetune.loading import RunModel
        from longtail.methods.finetune.predict import evaluation_logits

        model = RunModel(runs / kind, device="cpu")
        want, evaluated = evaluation_logits(model.model, model.cfg, model.test, "cpu"), model.test
    index = {p: i for i, p in enumerate(saved["paths"])}
    order = [index[f"{runs / 'data' / 'test'}/{item}"] for item in evaluated.items]
    np.testing.assert_allclose(saved["logits"][order], want, atol=1e-5, rtol=0)
    rows = _table(out)
    assert [r["status"] for r in rows] == ["ok"] * len(rows)
    assert {r["label"] for r in rows} <= set(TRAIN)


def test_unreadable_files_get_a_status_row_and_the_rest_are_labelled(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGTAIL_CACHE", str(runs / "cache"))
    new = tmp_path / "new"
    (new / "deep" / "er").mkdir(parents=True)
    good = sorted((runs / "data" / "test" / "cat").iterdir())[:2]
    (new / "a.png").write_bytes(good[0].read_bytes())
    (new / "deep" / "er" / "b.png").write_bytes(good[1].read_bytes())
    (new / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 20)
    (new / "zero.png").write_bytes(b"")
    (new / "notes.txt").write_text("not an image")
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(runs / "probe"), "--data", str(new), "--out", str(out), "--top-k", "3",
                 "--no-progress"]) == 0
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"a.png", "b.png", "corrupt.jpg", "zero.png", "notes.txt"}
    for name in ("a.png", "b.png"):
        assert rows[name]["status"] == "ok" and rows[name]["label"] == rows[name]["label_1"]
        assert rows[name]["prob_1"] >= rows[name]["prob_2"] >= rows[name]["prob_3"] > 0
    for name in ("corrupt.jpg", "zero.png", "notes.txt"):
        assert rows[name]["status"].startswith("unreadable: ") and rows[name]["label"] == ""
    assert main(["predict", str(runs / "probe"), "--data", str(new), "--out", str(out)]) == 2  # never overwritten


def test_an_interrupted_predict_resumes_to_the_same_bytes(runs, tmp_path, monkeypatch):
    from longtail.data.unlabelled import open_unlabelled
    from longtail.methods import predictions

    monkeypatch.setenv("LONGTAIL_CACHE", str(runs / "cache"))
    predictor = Predictor.from_run(runs / "fit", device="cpu")
    images = open_unlabelled(runs / "data" / "test")
    whole = tmp_path / "whole.csv"
    predictions.predict_to_file(predictor, images, whole, shard_size=4, progress=False)
    calls = []
    real = predictor.image_logits

    def dies_on_third(part, progress):
        calls.append(len(part))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(part, progress)

    predictor.image_logits = dies_on_third
    out = tmp_path / "again.csv"
    with pytest.raises(KeyboardInterrupt):
        predictions.predict_to_file(predictor, images, out, shard_size=4, progress=False)
    assert not out.exists() and len(list((tmp_path / ".again.csv.shards").glob("*.npz"))) == 2
    predictor.image_logits = real
    calls.clear()
    seen = []
    predictor.image_logits = lambda part, progress: seen.append(len(part)) or real(part, progress)
    predictions.predict_to_file(predictor, images, out, shard_size=4, progress=False)
    assert sum(seen) == len(images) - 8  # only the shards that were not finished
    assert out.read_bytes() == whole.read_bytes()
    assert not (tmp_path / ".again.csv.shards").exists()


def test_a_probe_whose_backbone_weights_differ_is_refused(runs, tmp_path, monkeypatch, capsys):
    from longtail.models import backbone as backbone_module

    monkeypatch.setenv("LONGTAIL_CACHE", str(runs / "cache"))
    monkeypatch.setattr(backbone_module.Backbone, "weights_fingerprint", lambda self: "0" * 40)
    rc = main(["predict", str(runs / "probe"), "--data", str(runs / "data" / "test"), "--out",
               str(tmp_path / "p.csv")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "other weights" in err
    assert not (tmp_path / "p.csv").exists()


def test_prior_and_reject_options(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGTAIL_CACHE", str(runs / "cache"))
    predictor = Predictor.from_run(runs / "probe")
    assert predictor.trained_for == "balanced"  # logit-adjusted: calibrated for the balanced prior
    counts = np.asarray(list(TRAIN.values()), dtype=float)
    z = np.zeros((1, 4))
    logits, _ = predictor.test()
    estimated, record = predictor.target_prior("estimate", logits)
    assert record["method"] == "em" and record["temperature_from"] == "the run's validation split"
    assert estimated.shape == (4,) and abs(estimated.sum() - 1) < 1e-9 and record["temperature"] > 0
    target, record = predictor.target_prior("train")
    np.testing.assert_allclose(predictor.adjust(z, target)[0], np.log(counts / counts.sum()) - np.log(0.25))
    (tmp_path / "prior.csv").write_text("class,weight\nant,1\nbee,1\ncat,1\ndog,5\n")
    out = tmp_path / "p.csv"
    assert main(["predict", str(runs / "probe"), "--data", str(runs / "data" / "test"), "--out", str(out),
                 "--prior", str(tmp_path / "prior.csv"), "--reject", "coverage=0.5", "--no-progress"]) == 0
    rows = _table(out)
    written = _table(tmp_path / "p.csv.prior.csv")
    assert [r["class"] for r in written] == sorted(TRAIN) and float(written[3]["weight"]) == pytest.approx(5 / 8)
    rejected = [r for r in rows if r["label"] == "unknown"]
    assert rejected and all(r["status"].startswith("rejected: confidence") for r in rejected)
    assert all(float(r["score"]) < float(r["status"].split("threshold ")[1].split()[0]) for r in rejected)
    assert main(["predict", str(runs / "probe"), "--data", str(runs / "data" / "test"), "--out",
                 str(tmp_path / "q.csv"), "--reject", "coverage=2"]) == 2


def test_onnx_export_bakes_the_prior_into_the_graph(runs, tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    monkeypatch.setenv("LONGTAIL_CACHE", str(runs / "cache"))
    outputs = {}
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for name, extra in (("plain", []), ("train", ["--prior", "train"])):
        assert main(["export", str(runs / "probe"), "--out", str(tmp_path / name), "--format", "onnx", *extra]) == 0
        session = ort.InferenceSession(str(tmp_path / name / "model.onnx"))
        outputs[name] = session.run(None, {session.get_inputs()[0].name: x})[0]
    counts = np.asarray(list(TRAIN.values()), dtype=float)
    np.testing.assert_allclose(outputs["train"] - outputs["plain"],
                               np.broadcast_to(np.log(counts / counts.sum()) - np.log(0.25), (2, 4)), atol=1e-5)
    assert main(["export", str(runs / "fit"), "--out", str(tmp_path / "m"), "--prior", "train"]) == 2


def test_eval_scores_the_prior_the_reject_rule_and_unknown_images(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LONGTAIL_CACHE", str(runs / "cache"))
    predictor = Predictor.from_run(runs / "probe")
    logits, labels = predictor.test()
    counts = np.asarray(list(TRAIN.values()), dtype=float)
    by_hand = float(np.mean((logits + np.log(counts / counts.sum()) - np.log(0.25)).argmax(1) == labels))
    out = tmp_path / "m.json"
    assert main(["eval", str(runs / "probe"), "--prior", "train", "--reject", "coverage=0.5",
                 "--unknown", str(runs / "data" / "train" / "dog"), "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads(out.read_text())
    assert printed["all"] == pytest.approx(by_hand)
    assert metrics["prior"]["prior"] == "train"
    sel = metrics["selective"]
    # the probe's validation set is its test set here, so each group's coverage is the target's
    for group, rate in sel["rejection_rate_per_predicted_group"].items():
        assert rate is None or abs(rate - 0.5) <= 0.34, group
    assert 0 < sel["coverage"] < 1 and sel["rule"] == "coverage=0.5"
    assert set(metrics["open_set"]) >= {"msp", "energy", "cosine"}  # the probe has text prototypes
    assert 0 <= metrics["open_set"]["cosine"]["auroc"] <= 1 and printed["auroc_cosine"] == metrics["open_set"]["cosine"]["auroc"]
    assert 0 <= metrics["open_set"]["msp"]["auroc"] <= 1 and printed["auroc_msp"] == metrics["open_set"]["msp"]["auroc"]


def test_every_run_records_its_risk_coverage_curve_and_reports_it(runs):
    metrics = json.loads((runs / "fit" / "metrics.json").read_text())
    sel = metrics["selective"]
    assert 0 <= sel["eaurc"] <= sel["aurc"] <= 1 and len(sel["curve"]["coverage"]) <= 101
    assert sel["curve"]["coverage"][-1] == pytest.approx(1.0)
    assert sel["curve"]["risk"][-1] == pytest.approx(1 - metrics["all"])  # nothing rejected: the plain error
    assert "Abstaining" in (runs / "fit" / "report.html").read_text()


def test_the_python_api_gives_the_rows_the_command_writes(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGTAIL_CACHE", str(runs / "cache"))
    predictor = Predictor.from_run(runs / "fit", device="cpu")
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(runs / "fit"), "--data", str(runs / "data" / "test"), "--out", str(out),
                 "--top-k", "2", "--no-progress"]) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    rows = predictor.predict_folder(runs / "data" / "test", top_k=2)
    assert [r["label"] for r in rows] == [r["label"] for r in written]
    np.testing.assert_allclose([r["prob_2"] for r in rows], [r["prob_2"] for r in written], atol=1e-6)
    files = sorted((runs / "data" / "test" / "ant").iterdir())[:2]
    one = predictor.predict([str(f) for f in files], top_k=1)
    assert [r["path"] for r in one] == [str(f) for f in files] and all(r["status"] == "ok" for r in one)
