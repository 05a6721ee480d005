"""`longtail eval`: re-evaluate a saved run of any kind (on its own test data or another set)."""

from __future__ import annotations

import argparse
import json

HELP = "re-evaluate a saved run (any kind) and print its metrics"
DESCRIPTION = """\
Reload the weights saved in a run folder (probe, fit, soup, MonoSoup, LT-Soups) and evaluate
them again: on the run's own test data, or on another test set given with --test (a feature
file for probe runs, a dataset spec for image runs). The run's own test data is checked
against the fingerprint recorded when the run was made (feature files: size and content
hash; image folders: the dataset fingerprint) and refused if it changed; pass --test to
evaluate on the changed data anyway (the output then says so). Prints overall / class-mean / many /
medium / few accuracy, worst class, harmonic/geometric mean, macro-F1 and ECE. Nothing in
the run folder is changed; --out writes the metrics to a new JSON file.

examples:
  longtail eval runs/probe-20260101-120000
  longtail eval runs/probe-20260101-120000 --test other_test.npz --json
  longtail eval runs/lts/soup
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder")
    p.add_argument("--test", help="evaluate on this test set instead of the run's own")
    p.add_argument("--out", help="write the metrics to this new JSON file")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from longtail.errors import ConfigError
    from longtail.eval.metrics import summary
    from longtail.io import check_writable, to_jsonable, write_json
    from longtail.runs import evaluate_run

    if args.out and Path(args.out).exists():
        raise ConfigError(f"{args.out} exists, not overwritten")
    if args.out:
        check_writable(args.out, folder=False)
    metrics = evaluate_run(args.run, args.test)
    if args.out:
        write_json(args.out, metrics)
    values = {k: v for k, v in summary(metrics).items() if k != "fit_seconds"}  # a training property
    test_set = metrics.get("test_set")
    if test_set is not None:
        whose = "the run's own test set" if test_set.get("own") else "not the run's own test set"
        print(f"evaluated on {test_set['source']} ({whose})", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(to_jsonable(values)))
    else:
        for key, value in values.items():
            print(f"{key:<12} {'n/a' if value is None else f'{100 * value:.2f}%'}")
    return 0
