"""`longtail report`: HTML report of one run, or a comparison of several."""

from __future__ import annotations

import argparse

HELP = "write report.html for a run, or a comparison report of several runs"
DESCRIPTION = """\
One run: (re)writes RUN/report.html from the run's saved metrics, statistics and config:
per-class accuracy vs training count, many/medium/few bars, reliability diagram.
Several runs: writes one comparison page (metrics side by side, head-to-tail curves, per-class
table, training curves). Each run is labelled by its --label, or else by what differs between
the runs' configs (e.g. "loss=la, init=prototypes" vs "loss=ce"). Runs on different data
(number of classes, class names, training counts, test size) are compared with a warning, at
the top of the page and on stderr.

examples:
  longtail report runs/probe-20260101-120000
  longtail report runs/* --out comparison.html --title "CIFAR-10-LT, EfficientNet-Lite0"
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run folder(s)")
    p.add_argument("--out", help="output HTML (comparison default: comparison-TIMESTAMP.html)")
    p.add_argument("--title", default="longtail comparison", help="comparison page title")


def run(args: argparse.Namespace) -> int:
    import datetime as dt
    import sys
    from pathlib import Path

    from longtail.errors import ConfigError
    from longtail.eval.report import comparison_warnings, write_comparison_report, write_report
    from longtail.io import check_writable

    if args.out:
        check_writable(args.out, folder=False)
    if len(args.runs) == 1:
        path = write_report(args.runs[0], args.out)
    else:
        out = Path(args.out or f"comparison-{dt.datetime.now():%Y%m%d-%H%M%S}.html")
        if out.exists():
            raise ConfigError(f"{out} exists, not overwritten (choose another --out)")
        path = write_comparison_report(args.runs, out, title=args.title)
        for line in comparison_warnings(args.runs):
            print(f"warning: the runs used different data: {line}", file=sys.stderr)
    print(f"report: {path}")
    return 0
