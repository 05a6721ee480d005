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
in training) adds the open-set AUROC and FPR at 95 % TPR of the max-softmax and energy scores
and, for a probe whose training features carry class prototypes, of the cosine to them.
Every evaluation reports the risk-coverage curve's area (AURC).

Comparison (docs/methods.md §7.7): --against OTHER scores OTHER on the same test images (the
runs' own test set, which must be the same data: recorded fingerprints, size and classes are
checked; or --test for both) and prints RUN minus OTHER for overall accuracy, balanced accuracy
(class mean) and each shot group, with the paired standard error over images within classes,
the between-class SE, a bootstrap interval (images resampled within each class; --bootstrap
draws, --seed) and the verdict: better / worse when the difference clears 2 SE, else "equal
within noise". --prior applies to both runs.

examples:
  longtail eval runs/probe-20260101-120000
  longtail eval runs/probe-20260101-120000 --prior train --reject coverage=0.9
  longtail eval runs/fit-lift --unknown other_animals/
  longtail eval runs/probe-20260101-120000 --test other_test.npz --json
  longtail eval runs/lts/soup
  longtail eval runs/probe-la --against runs/probe-ce
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder")
    p.add_argument("--test", help="evaluate on this test set instead of the run's own")
    p.add_argument("--out", help="write the metrics to this new JSON file")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--prior", help="balanced | train | FILE.csv | estimate | estimate=bbse (default: as trained)")
    p.add_argument("--reject", help="coverage=F or risk=F: thresholds chosen on the run's validation split")
    p.add_argument("--unknown", help="images (or probe features) of classes not in training: open-set AUROC")
    p.add_argument("--against", metavar="OTHER", help="another run: the paired difference RUN - OTHER on the same images")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="B", help="--against: bootstrap draws (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="--against: bootstrap seed (default 0)")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from longtail.errors import ConfigError
    from longtail.eval.metrics import summary
    from longtail.io import check_writable, to_jsonable, write_json
    from longtail.methods.run_kinds import evaluate_run

    if args.out and Path(args.out).exists():
        raise ConfigError(f"{args.out} exists, not overwritten")
    if args.out:
        check_writable(args.out, folder=False)
    if args.against:
        metrics = _against(args)
    elif args.prior or args.reject or args.unknown:
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
    paired = metrics.get("paired")
    if args.json:
        print(json.dumps(to_jsonable(values | ({"paired": paired} if paired else {}))))
    else:
        for key, value in values.items():
            print(f"{key:<12} {'n/a' if value is None else f'{100 * value:.2f}%'}")
        if paired:
            from longtail.eval.paired import paired_lines

            print()
            print("\n".join(paired_lines(paired, Path(args.run).name, Path(args.against).name)))
    return 0


def _against(args: argparse.Namespace) -> dict:
    """RUN's metrics and, under "paired", RUN - OTHER on the same test images (`eval.paired`),
    both runs' logits from `Predictor` (the prior of --prior applied to each)."""
    from longtail.errors import ConfigError, DataError
    from longtail.eval.metrics import evaluate
    from longtail.eval.paired import check_same_images, paired_difference, pairing_problem
    from longtail.methods.predictor import Predictor
    from longtail.runs import load_run

    if args.reject or args.unknown:
        raise ConfigError("--against compares accuracy on the same images; use --reject / --unknown without it")
    if args.bootstrap < 1:
        raise ConfigError(f"--bootstrap must be at least 1, got {args.bootstrap}")
    problem = None if args.test else pairing_problem(load_run(args.against), load_run(args.run))
    if problem:
        raise DataError(f"cannot pair {args.run} with {args.against}: {problem} (--test scores both on one set)")
    run, other = Predictor.from_run(args.run), Predictor.from_run(args.against)
    if run.class_names != other.class_names:
        raise DataError(f"cannot pair {args.run} with {args.against}: their classes differ (names or order)")
    scored = []
    for predictor in (run, other):
        logits, labels = predictor.labelled(args.test)
        target, record = predictor.target_prior(args.prior, logits)
        scored.append((predictor.adjust(logits, target), labels, record, target))
    (z, labels, record, target), (z_other, labels_other, _, _) = scored
    check_same_images(labels_other, labels, f"{args.run} with {args.against}")
    metrics = evaluate(z, labels, run.train_counts, class_names=run.class_names, **run.scoring)
    metrics["prior"] = {**record, **({} if target is None else {"weights": target.tolist()})}
    if args.test is not None:
        metrics["test_set"] = {"source": args.test, "own": False}
    metrics["paired"] = {"against": str(args.against), **paired_difference(
        z_other, z, labels, run.groups, n_boot=args.bootstrap, seed=args.seed)}
    return metrics


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
