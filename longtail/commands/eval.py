"""`longtail eval`: re-evaluate a saved run (on its own test data or another file)."""

from __future__ import annotations

import argparse
import json

HELP = "re-evaluate a saved run and print its metrics"
DESCRIPTION = """\
Reload the weights saved in a run folder and evaluate them again: on the run's own test
data, or on another test file/dataset given with --test. Prints overall / class-mean /
many / medium / few accuracy, worst class, harmonic/geometric mean, macro-F1 and ECE.
Nothing in the run folder is changed; --out writes the metrics to a new JSON file.

examples:
  longtail eval runs/probe-20260101-120000
  longtail eval runs/probe-20260101-120000 --test other_test.npz --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder")
    p.add_argument("--test", help="evaluate on this test file instead of the run's own")
    p.add_argument("--out", help="write the metrics to this new JSON file")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from longtail.errors import ConfigError
    from longtail.eval.evaluators import evaluate_run
    from longtail.experiment import summary
    from longtail.io import to_jsonable, write_json

    metrics = evaluate_run(args.run, args.test)
    if args.out:
        if Path(args.out).exists():
            raise ConfigError(f"{args.out} exists, not overwritten")
        write_json(args.out, metrics)
    if args.json:
        print(json.dumps(to_jsonable(summary(metrics))))
    else:
        for key, value in summary(metrics).items():
            if key == "fit_seconds":  # a property of the training run, not of this evaluation
                continue
            text = "n/a" if value is None else (f"{100 * value:.2f}%" if key != "fit_seconds" else f"{value:.2f}s")
            print(f"{key:<12} {text}")
    return 0
