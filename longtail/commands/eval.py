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

Deployment (docs/methods.md §13): --prior balanced | train | FILE.csv | estimate[=bbse] scores the
logits corrected to that class prior; --reject coverage=F | risk=F adds the operating point of
thresholds chosen on the run's validation split per shot group (coverage, error of the accepted,
rejection rate per group); --unknown SOURCE (images, or features for a probe run, of classes not
in training) adds the open-set AUROC and FPR at 95 % TPR of the max-softmax and energy scores.
Every evaluation reports the risk-coverage curve's area (AURC).

examples:
  longtail eval runs/probe-20260101-120000
  longtail eval runs/probe-20260101-120000 --prior train --reject coverage=0.9
  longtail eval runs/fit-lift --unknown other_animals/
  longtail eval runs/probe-20260101-120000 --test other_test.npz --json
  longtail eval runs/lts/soup
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder")
    p.add_argument("--test", help="evaluate on this test set instead of the run's own")
    p.add_argument("--out", help="write the metrics to this new JSON file")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--prior", help="balanced | train | FILE.csv | estimate | estimate=bbse (default: as trained)")
    p.add_argument("--reject", help="coverage=F or risk=F: thresholds chosen on the run's validation split")
    p.add_argument("--unknown", help="images (or probe features) of classes not in training: open-set AUROC")


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
    if args.prior or args.reject or args.unknown:
        from longtail.methods.predictor import Predictor

        metrics = Predictor.from_run(args.run).evaluate(args.test, args.prior, args.reject, args.unknown)
    else:
        metrics = evaluate_run(args.run, args.test)
    if args.out:
        write_json(args.out, metrics)
    values = {k: v for k, v in summary(metrics).items() if k != "fit_seconds"}  # a training property
    test_set = metrics.get("test_set")
    if test_set is not None:
        whose = "the run's own test set" if test_set.get("own") else "not the run's own test set"
        print(f"evaluated on {test_set['source']} ({whose})", file=sys.stderr if args.json else sys.stdout)
    values.update(_deployment(metrics))
    prior = metrics.get("prior") or {}
    if prior and prior.get("how") != "as trained":
        said = f"estimate ({prior['method']})" if "method" in prior else prior["prior"]
        print(f"scored for the {said} class prior", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(to_jsonable(values)))
    else:
        for key, value in values.items():
            print(f"{key:<12} {'n/a' if value is None else f'{100 * value:.2f}%'}")
    return 0


def _deployment(metrics: dict) -> dict:
    """What --reject / --unknown add to the printed summary (fractions)."""
    out = {}
    selective = metrics.get("selective") or {}
    if selective.get("coverage") is not None:
        out |= {"coverage": selective["coverage"], "risk": selective["risk"]}
        out |= {f"rejected_{g}": r for g, r in (selective.get("rejection_rate_per_group") or {}).items()}
    for kind, values in ((metrics.get("open_set") or {}).items()):
        if isinstance(values, dict):
            out |= {f"auroc_{kind}": values["auroc"], f"fpr95_{kind}": values["fpr_at_95_tpr"]}
    return out
