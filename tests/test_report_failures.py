"""The report's failure views (issue 20, item 4): per-class precision / recall / F1 against
scikit-learn, the most-confused pairs without a dense C x C matrix, where the tail's errors go,
per_class.csv's columns, and the report page's story block, sortable table and error gallery."""

from __future__ import annotations

import csv
import tracemalloc

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from longtail.eval import confusion
from longtail.eval.metrics import evaluate
from longtail.eval.report import write_report
from longtail.runs import create_run


def _predictions(seed: int, n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c - 2, n)  # the last two classes have no test image
    pred = np.where(rng.random(n) < 0.5, labels, rng.integers(0, c - 1, n))  # the last is never predicted
    return np.where(pred == 0, 1, pred), labels  # class 0 is never predicted either


def test_precision_recall_f1_match_scikit_learn_with_zero_division_0():
    pred, labels = _predictions(0, 400, 9)
    ours = confusion.precision_recall_f1(pred, labels, 9)
    p, r, f, _ = precision_recall_fscore_support(labels, pred, labels=range(9), zero_division=0)
    np.testing.assert_allclose(ours["precision"], p)
    np.testing.assert_allclose(ours["recall"], r)
    np.testing.assert_allclose(ours["f1"], f)
    assert ours["n_predicted"] == np.bincount(pred, minlength=9).tolist()
    assert ours["precision"][0] == ours["recall"][0] == 0 < ours["n_predicted"][7]  # never predicted
    assert ours["recall"][7] == ours["f1"][8] == 0  # no test image


def test_confused_pairs_are_the_largest_off_diagonal_cells():
    pred, labels = _predictions(1, 600, 7)
    dense = confusion_matrix(labels, pred, labels=range(7))
    names = [f"k{i}" for i in range(7)]
    pairs = confusion.confused_pairs(pred, labels, 7, names, top=5)
    off = [(-dense[t, p], t, p) for t in range(7) for p in range(7) if t != p and dense[t, p]]
    expected = [(t, p, -c) for c, t, p in sorted(off)[:5]]
    assert [(q["true"], q["pred"], q["count"]) for q in pairs] == expected
    assert pairs[0]["true_name"] == f"k{pairs[0]['true']}"
    assert pairs[0]["share"] == pytest.approx(pairs[0]["count"] / (labels == pairs[0]["true"]).sum())
    assert confusion.confusion_counts(pred, labels, 7) == dense.tolist()


def test_confused_pairs_at_inaturalist_scale_need_no_dense_matrix():
    """8,142 classes: a dense int64 C x C matrix would take 530 MB; the sparse count stays small."""
    c, n = 8142, 30000
    rng = np.random.default_rng(2)
    labels = rng.integers(0, c, n)
    pred = np.where(rng.random(n) < 0.3, labels, (labels + rng.integers(1, 3, n)) % c)
    tracemalloc.start()
    pairs = confusion.confused_pairs(pred, labels, c, [str(i) for i in range(c)], top=20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20e6 and len(pairs) == 20
    assert confusion.confusion_counts(pred, labels, c) is None
    wrong = pred != labels
    top = pairs[0]
    assert top["count"] == int(((labels == top["true"]) & (pred == top["pred"]) & wrong).sum())


def test_error_flow_and_tail_errors_by_hand():
    groups = np.array(["many", "many", "medium", "few", "few"])
    labels = np.array([0, 0, 2, 3, 3, 3, 4, 4])
    pred = np.array([0, 1, 0, 3, 0, 2, 4, 3])
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.95, 0.5, 0.4, 0.85])
    flow = confusion.error_flow(pred, labels, groups)
    assert flow["few"] == {"test": 5, "correct": 2, "to_many": 1, "to_medium": 1, "to_few": 1}
    assert flow["many"] == {"test": 2, "correct": 1, "to_many": 1, "to_medium": 0, "to_few": 0}
    tail = confusion.tail_errors(pred, labels, conf, groups, per_class=1)
    assert tail["group"] == "few" and tail["errors"] == 3
    assert [e["index"] for e in tail["shown"]] == [4, 7]  # most confident first, one per true class


def _run(tmp_path, name="r", classes=12, seed=0):
    rng = np.random.default_rng(seed)
    counts = np.round(200 * 0.7 ** np.arange(classes)).astype(int) + 2
    labels = np.repeat(np.arange(classes), 6)
    logits = rng.normal(size=(labels.size, classes))
    logits[np.arange(labels.size), labels] += np.linspace(3, 0, classes)[labels]
    metrics = evaluate(logits, labels, counts, class_names=[f"cls{i}" for i in range(classes)])
    run = create_run(tmp_path / name, "probe", {"seed": seed})
    run.finish(metrics)
    return tmp_path / name, metrics


def test_per_class_csv_has_precision_recall_f1_and_keeps_accuracy_last(tmp_path):
    folder, m = _run(tmp_path)
    with open(folder / "per_class.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["name", "train_count", "group", "n_test", "n_predicted", "precision", "recall",
                             "f1", "accuracy"]
    for i, row in enumerate(rows):
        assert float(row["f1"]) == pytest.approx(m["class_scores"]["f1"][i])
        assert float(row["recall"]) == pytest.approx(float(row["accuracy"]))


def test_report_tells_the_tail_story_and_shows_the_gallery(tmp_path):
    folder, m = _run(tmp_path)
    images = [Image.new("RGB", (20, 16), (i % 255, 40, 90)) for i in range(m["num_test"])]
    page = write_report(folder, test_image=images.__getitem__).read_text()
    assert page.index("Head vs tail at a glance") < page.index("<h2>Test data</h2>")
    assert "few-shot</b> classes" in page and "to many-shot classes" in page
    assert "<h2>Most-confused class pairs</h2>" in page and "Confusion matrix" in page
    assert "<th>precision (%)</th>" in page and "table class='classes sortable'" in page
    assert "<script>" in page and "localeCompare" in page
    shown = m["tail_errors"]["shown"]
    assert shown and page.count("data:image/jpeg;base64,") == len(shown)
    # no pictures, said why; runs over 100 classes have no confusion matrix image but their pairs
    page = write_report(folder, test_image="evaluated on feature files").read_text()
    assert "No pictures: evaluated on feature files." in page and "data:image/jpeg" not in page
    big, _ = _run(tmp_path, "big", classes=120)
    page = write_report(big).read_text()
    assert "Confusion matrix" not in page and "<h2>Most-confused class pairs</h2>" in page
