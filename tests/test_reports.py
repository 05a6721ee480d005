"""Reports a person reads (issue 13, observations 7 and 9): `longtail report` on every run kind,
distinct comparison labels, class names and the test set on the page, training curves, warnings
for runs on different data, relative links; and progress lines when stderr is not a terminal."""

from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest

import longtail.progress
from longtail.cli import main
from longtail.data.features import save_features
from longtail.data.synthetic_features import make_synthetic_benchmark
from longtail.eval.compare import run_labels
from longtail.progress import LineProgress, progress_bar
from longtail.runs import load_run
from tests.conftest import copy_runs


def _text(page: str) -> str:
    """The page without embedded images and styles (what the assertions read)."""
    page = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "IMG", page)
    return re.sub(r"<style>.*?</style>", "", page, flags=re.S)


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    root = tmp_path_factory.mktemp("feats")
    paths = {}
    for name, classes in (("six", 6), ("four", 4)):
        bench = make_synthetic_benchmark(seed=1, num_classes=classes, dim=8, n_max=150, imbalance_ratio=30,
                                         n_val=10, n_test=30, bayes_per_class=50)
        for split in ("train", "test"):
            paths[name, split] = save_features(bench.train if split == "train" else bench.test,
                                               root / f"{name}_{split}.npz")
    return paths


def _probe(features, out, *extra, data="six"):
    return main(["probe", "--train", str(features[data, "train"]), "--test", str(features[data, "test"]),
                 "--out", str(out), *extra])


# ---------------------------------------------------------------------------------- labels


def test_comparison_labels_are_what_differs_and_label_wins(features, tmp_path, capsys):
    assert _probe(features, tmp_path / "ce", "loss=ce", "--no-report") == 0
    assert _probe(features, tmp_path / "la", "loss=la", "--no-report") == 0
    assert _probe(features, tmp_path / "l2", "loss=la", "init=prototypes", "l2_target=init", "--no-report") == 0
    runs = [load_run(tmp_path / n) for n in ("ce", "la", "l2")]
    labels = run_labels(runs)
    assert labels == ["loss=ce", "loss=la", "loss=la, init=prototypes, l2_target=init"]
    assert main(["report", *(str(tmp_path / n) for n in ("ce", "la", "l2")), "--out", str(tmp_path / "cmp.html")]) == 0
    page = _text((tmp_path / "cmp.html").read_text())
    for label in labels:
        assert f"<td>{label}</td>" in page
    assert "Warning" not in page and "warning" not in capsys.readouterr().err  # same data: no warning
    # links are relative to the page, so the folder can move (per-run reports skipped: --no-report)
    hrefs = re.findall(r"href='([^']*)'", page)
    assert "ce/report.html" in hrefs and not any(h.startswith("/") or str(tmp_path) in h for h in hrefs)
    # an explicit --label wins; identical configs are told apart by their folder names
    assert _probe(features, tmp_path / "mine", "loss=ce", "--label", "my baseline", "--no-report") == 0
    assert _probe(features, tmp_path / "ce2", "loss=ce", "--no-report") == 0
    labels = run_labels([load_run(tmp_path / n) for n in ("ce", "mine", "ce2", "la")])
    assert labels[1] == "my baseline"
    assert len(set(labels)) == 4 and labels[0].endswith("(ce)") and labels[2].endswith("(ce2)")


def test_runs_on_different_data_are_compared_with_a_warning(features, tmp_path, capsys):
    assert _probe(features, tmp_path / "a", "--no-report", data="six") == 0
    assert _probe(features, tmp_path / "b", "--no-report", data="four") == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c.html")]) == 0
    err = capsys.readouterr().err
    assert "warning: the runs used different data: different numbers of classes" in err
    assert "6" in err and "4" in err
    page = _text((tmp_path / "c.html").read_text())
    top = page.index("<h1>")
    assert page.index("class='warn'") < page.index("<h2>Metrics")  # at the top, above the numbers
    assert "different numbers of classes" in page[top:] and "different test-set sizes" in page
    labels = run_labels([load_run(tmp_path / "a"), load_run(tmp_path / "b")])
    assert labels == ["train=six_train.npz, test=six_test.npz", "train=four_train.npz, test=four_test.npz"]


def test_different_training_counts_and_names_warn(tmp_path):
    from longtail.eval.compare import dataset_warnings

    def run(names, counts, test):
        return {"config": {"kind": "probe"}, "folder": tmp_path, "metrics": {"num_test": test},
                "data_stats": {"num_classes": len(names), "class_names": names, "counts": counts}}

    same = run(["a", "b"], [10, 2], 20)
    assert dataset_warnings([same, run(["a", "b"], [10, 2], 20)], ["x", "y"]) == []
    lines = dataset_warnings([same, run(["cat", "dog"], [10, 5], 20)], ["x", "y"])
    assert len(lines) == 2 and lines[0].startswith("different class names") and "cat" in lines[0]
    assert lines[1].startswith("different training counts") and "12 images" in lines[1]


# ---------------------------------------------------------------------------- one run's page


def test_probe_report_shows_test_set_and_class_names(features, tmp_path):
    assert _probe(features, tmp_path / "r", "loss=la") == 0
    assert main(["report", str(tmp_path / "r")]) == 0
    page = _text((tmp_path / "r" / "report.html").read_text())
    for part in ("<h2>Test data</h2>", "six_test.npz", "<td>test images</td><td>180</td>",
                 "<h2>Per-class results</h2>", "<td>class_00</td>", "<td>class_05</td>"):
        assert part in page, part
    # every figure has a title and axis labels
    from longtail.eval import plots

    m = load_run(tmp_path / "r")["metrics"]
    for fig in (plots.per_class_accuracy(m), plots.group_bars([("r", m)]), plots.class_counts([5, 3, 1])):
        for ax in fig.axes:
            assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


def test_many_classes_fold_the_table_and_show_the_worst():
    from longtail.eval.tables import per_class_html

    rows = [{"name": f"c{i}", "train_count": 100 - i, "group": "few", "n_test": 5, "accuracy": i / 100}
            for i in range(60)]
    html = per_class_html(rows)
    shown, folded = html.split("<details>")
    assert "<td>c0</td>" in shown and "<td>c59</td>" not in shown  # the 10 worst above the fold
    assert "all 60 classes" in folded and "<td>c59</td>" in folded


# ------------------------------------------------------------- every run kind (observation 7)


def test_runs_without_test_metrics_report(tmp_path):
    """Soups / MonoSoups of plain weight files and an unfinished run have no per-class results
    (observation 7: `KeyError: 'per_class'`); their reports say so and show the rest."""
    import torch

    from longtail.runs import create_run
    from longtail.soups.merge import save_state_dict

    plain = [save_state_dict({"a.weight": torch.randn(3, 3)}, tmp_path / f"m{i}.safetensors") for i in range(2)]
    assert main(["soup", *map(str, plain), "--out", str(tmp_path / "soup")]) == 0
    assert main(["monosoup", "--w0", str(plain[0]), "--w1", str(plain[1]), "--device", "cpu",
                 "--out", str(tmp_path / "mono")]) == 0
    create_run(tmp_path / "running", "fit", {"method": "lift"}, staged=False)
    for sub in ("soup", "mono", "running"):
        assert main(["report", str(tmp_path / sub), "--out", str(tmp_path / f"{sub}.html")]) == 0, sub
        page = _text((tmp_path / f"{sub}.html").read_text())
        assert "has no test metrics" in page and "<h2>Configuration</h2>" in page, sub
    assert "status <code>running</code>" in _text((tmp_path / "running.html").read_text())
    assert main(["report", *(str(tmp_path / s) for s in ("soup", "mono", "running")),
                 "--out", str(tmp_path / "cmp.html")]) == 0


def test_every_run_kind_reports(tiny_runs, tmp_path, capsys):
    """fit (with curves), soup and MonoSoup of fit runs (the shared tiny runs, copied: `report`
    rewrites report.html): `longtail report RUN` works and shows what each has (the LT-Soups
    ingredient / soup / final pages: test_soups_lt_soups)."""
    copy_runs(tiny_runs, tmp_path, "ft0", "soup", "mono")
    folders = {"fit": "ft0", "soup": "soup", "monosoup": "mono"}  # LT-Soups pages: test_soups_lt_soups
    pages = {}
    for what, sub in folders.items():
        (tmp_path / sub / "report.html").unlink(missing_ok=True)
        assert main(["report", str(tmp_path / sub)]) == 0, what
        pages[what] = _text((tmp_path / sub / "report.html").read_text())
        assert "<h2>Test data</h2>" in pages[what] and "<h2>Configuration</h2>" in pages[what]
    for what in folders:
        assert "red stripes" in pages[what] and "<h2>Per-class results</h2>" in pages[what], what
        assert "synthetic_images" in pages[what], what  # which test data
    assert "<h2>Training curves</h2>" in pages["fit"]
    assert "<h2>Training curves</h2>" not in pages["soup"]
    # made-from links, relative (the soup names the shared ft0, not the copy next to it)
    made_from = os.path.relpath(tiny_runs["root"] / "ft0" / "report.html", tmp_path / "soup")
    assert f"href='{made_from}'" in pages["soup"]
    for what, page in pages.items():  # no absolute link on any page (the folders can move)
        hrefs = re.findall(r"href='([^']*)'", page)
        assert not any(h.startswith("/") or str(tmp_path) in h for h in hrefs), (what, hrefs)
    # fit curves come from metrics["history"] (an LT-Soups ingredient's validation log adds a
    # third panel: test_soups_lt_soups)
    from longtail.eval import plots

    fig = plots.training_curves([("ft0", load_run(tmp_path / "ft0")["metrics"])])
    assert len(fig.axes) == 2 and all(ax.get_title() and ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    # a comparison of every kind: distinct labels, curves of the fit runs
    every = [str(tmp_path / sub) for sub in folders.values()]
    assert main(["report", *every, "--out", str(tmp_path / "all.html")]) == 0
    labels = run_labels([load_run(d) for d in every])
    assert len(set(labels)) == len(labels)
    assert "<h2>Training curves</h2>" in _text((tmp_path / "all.html").read_text())


# -------------------------------------------------------------------- progress (observation 9)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_prints_a_line_every_interval_when_not_a_terminal():
    clock, out = _Clock(), io.StringIO()
    bar = LineProgress(total=4000, desc="features (tiny_clip)", unit="image", interval=30, stream=out, clock=clock)
    for _ in range(125):  # 125 batches of 32 images, 0.375 s each: 47 s in all
        clock.now += 0.375
        bar.update(32)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines  # one at 30 s, then the closing line
    assert lines[0] == "features (tiny_clip): 2,560/4,000 images, 85.3 image/s, eta 17 s"
    assert lines[1] == "features (tiny_clip): done, 4,000 images in 47 s"
    quick = LineProgress(total=10, desc="x", interval=30, stream=io.StringIO(), clock=_Clock())
    quick.update(10)
    quick.close()
    assert quick.stream.getvalue() == ""  # a short loop stays quiet


def test_progress_bar_chooses_tqdm_lines_or_silence():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    from tqdm import tqdm

    assert isinstance(progress_bar(total=3, stream=Tty(), desc="t"), tqdm)
    piped = io.StringIO()
    bar = progress_bar(range(3), desc="predict", unit="batch", interval=0, stream=piped)
    assert isinstance(bar, LineProgress) and list(bar) == [0, 1, 2]
    assert piped.getvalue().splitlines()[0].startswith("predict: 1/3 batches")
    assert piped.getvalue().splitlines()[-1].startswith("predict: done, 3 batches")
    silent = io.StringIO()
    bar = progress_bar(range(3), interval=0, stream=silent, enabled=False)
    assert list(bar) == [0, 1, 2] and silent.getvalue() == ""
    silent_tty = Tty()
    bar = progress_bar(total=2, stream=silent_tty, enabled=False)
    bar.update(2)
    bar.close()
    assert silent_tty.getvalue() == ""


def test_fit_prints_progress_lines_to_a_pipe(tmp_path, capsys, monkeypatch):
    """A fit with progress on and stderr captured (not a terminal) writes plain lines."""
    from longtail.methods.finetune import build_config, fit

    monkeypatch.setattr(longtail.progress, "LOG_INTERVAL", 0.0)
    cfg = build_config("synthetic_images", "tiny_clip", "linear_probe", {
        "data_options": {"num_classes": 3, "n_max": 6, "imbalance_ratio": 2, "test_per_class": 2, "size": 16},
        "root": str(tmp_path / "data"), "batch_size": 4, "epochs": 1, "progress": True, "device": "cpu",
        "backbone_options": {"image_size": 16, "patch_size": 8}})
    fit(cfg, out=tmp_path / "run", report=False)
    err = capsys.readouterr().err
    steps = [line for line in err.splitlines() if line.startswith("fit: ")]
    assert steps and re.match(r"fit: \d+/\d+ steps, [\d.]+ step/s", steps[0]), err
    assert "loss=" in err and "fit: done" in err
    assert not np.any(["\r" in line for line in err.splitlines()])


def test_markdown_table_formats_percentages_seconds_and_missing_values():
    from longtail.eval.tables import markdown_table

    rows = [{"method": "la", "all": 0.7629, "few": None, "fit_seconds": 1.25},
            {"method": "ce", "all": 0.5, "few": float("nan"), "fit_seconds": 10.0}]
    columns = (("method", "method", "s"), ("all", "all", "pct"), ("few", "few", "pct"), ("fit s", "fit_seconds", ".1f"))
    assert markdown_table(rows, columns).splitlines() == [
        "| method | all | few | fit s |", "| --- | ---: | ---: | ---: |",
        "| la | 76.29 | n/a | 1.2 |", "| ce | 50.00 | n/a | 10.0 |"]
