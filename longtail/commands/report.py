"""`longtail report`: HTML report of one run, or a comparison of several."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write report.html for a run, or a comparison report of several runs"
DESCRIPTION = """\
One run: (re)writes RUN/report.html from the run's saved metrics, statistics and config:
the shot-group story at the top (many / medium / few accuracy, the gap, where the tail's errors
go), per-class accuracy vs training count, many/medium/few bars, reliability diagram, the
confusion matrix (up to 100 classes) and the most-confused class pairs, a sortable per-class
table with precision / recall / F1, and for runs on images (fit, soups of fit runs) an error
gallery: thumbnails of misclassified test images of the few-shot classes, reopened from the
run's test data.
Several runs: writes one comparison page (metrics side by side, head-to-tail curves, per-class
table, training curves). Each run is labelled by its --label, or else by what differs between
the runs' configs (e.g. "loss=la, init=prototypes" vs "loss=ce"). Runs on different data
(number of classes, class names, training counts, test size) are compared with a warning, at
the top of the page and on stderr.

--paired (several runs on the same test images) re-scores every run on its own test set and adds
each run minus the first, image by image (docs/methods.md §7.7): the difference in overall,
balanced and many / medium / few accuracy with its paired standard error, the between-class SE,
a bootstrap interval (--bootstrap draws, --seed) and the verdict (better / worse beyond 2 SE, else
equal within noise). Runs whose test data differ (recorded fingerprints, size, classes) are listed
as not paired. Without --paired the report reads only the saved metrics.

examples:
  longtail report runs/probe-20260101-120000
  longtail report runs/* --out comparison.html --title "CIFAR-10-LT, EfficientNet-Lite0"
  longtail report runs/checkpoint runs/wise-ft runs/monosoup --paired --out comparison.html
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run folder(s)")
    p.add_argument("--out", help="output HTML (comparison default: comparison-TIMESTAMP.html)")
    p.add_argument("--title", default="longtail comparison", help="comparison page title")
    p.add_argument("--paired", action="store_true",
                   help="re-score the runs and add each run minus the first on the same test images")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="B", help="--paired: bootstrap draws (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="--paired: bootstrap seed (default 0)")


def run(args: argparse.Namespace) -> int:
    import datetime as dt
    import sys

    from longtail.errors import ConfigError
    from longtail.eval.report import comparison_warnings, write_comparison_report, write_report
    from longtail.io import check_writable

    if args.out:
        check_writable(args.out, folder=False)
    if args.paired and len(args.runs) < 2:
        raise ConfigError("--paired compares runs: give two or more")
    if args.bootstrap < 1:
        raise ConfigError(f"--bootstrap must be at least 1, got {args.bootstrap}")
    if len(args.runs) == 1:
        path = write_report(args.runs[0], args.out, test_image=_test_image(Path(args.runs[0])))
    else:
        out = Path(args.out or f"comparison-{dt.datetime.now():%Y%m%d-%H%M%S}.html")
        if out.exists():
            raise ConfigError(f"{out} exists, not overwritten (choose another --out)")
        path = write_comparison_report(args.runs, out, title=args.title, n_boot=args.bootstrap, seed=args.seed,
                                       test_logits=_own_test_logits if args.paired else None)
        for line in comparison_warnings(args.runs):
            print(f"warning: the runs used different data: {line}", file=sys.stderr)
    print(f"report: {path}")
    return 0


def _own_test_logits(folder: Path):
    """(logits, labels) of a run's own test set, whatever its kind (`Predictor.from_run`)."""
    from longtail.methods.predictor import Predictor

    predictor = Predictor.from_run(folder)
    if predictor.test is None:
        from longtail.errors import DataError

        raise DataError(f"{folder}: no test set to re-score")
    return predictor.test()


def _test_image(folder: Path):
    """A fit-layout run's test images by index (for the error gallery), or why there are none.

    The test split is reopened as the run evaluated it (`open_splits`); the recorded gallery
    entries must still carry the same labels at the same indices, else the images changed."""
    from longtail.errors import LongtailError
    from longtail.runs import load_run

    metrics = load_run(folder)["metrics"] or {}
    shown = (metrics.get("tail_errors") or {}).get("shown") or []
    if not shown:
        return None
    from longtail.methods.finetune import is_fit_layout

    if not is_fit_layout(folder):
        return "this run was evaluated on feature files, not images"
    import dataclasses

    from longtail.methods.finetune.data import open_splits
    from longtail.methods.finetune.loading import fit_config_of

    try:
        cfg = fit_config_of(folder)
        test_set = open_splits(dataclasses.replace(cfg, device="cpu", progress=False), test=True).test
    except (LongtailError, OSError, KeyError) as error:
        return f"the test images could not be reopened ({str(error).splitlines()[0] if str(error) else error!r})"
    labels = test_set.labels
    if len(test_set) != metrics.get("num_test") or any(int(labels[e["index"]]) != e["true"] for e in shown):
        return "the run's test images changed since it was evaluated"
    return test_set.load
