"""`longtail probe`: train a long-tail-aware head on feature files and evaluate it."""

from __future__ import annotations

import argparse
import json

HELP = "train a probe (linear/cosine/oversampling/zero-shot head) on feature files"
DESCRIPTION = """\
Train a classifier head on frozen features with a long-tail-aware method and loss, evaluate
it on a test file (overall / many / medium / few accuracy, ECE, ...), and write a run
folder with config.yaml, env.json, data_stats.json, metrics.json, per_class.csv, the head
(safetensors + JSON) and report.html.

Any ProbeConfig field is set with a positional KEY=VALUE (dict fields take dotted keys:
loss_options.tau=0.5, method_options.k_neighbors=3); the flags --method, --loss, --tau,
--init, --interpolate, --posthoc-tau, --calibrate, --seed and --device are shorthands for
the same keys (KEY=VALUE wins over a flag). The config is checked before any file is read:
an unknown key, name or option fails at once and lists the valid ones.

Choices made on a validation set (--posthoc-tau auto, --interpolate auto, --calibrate) use
--val FILE, or without it val_split=0.1 / val_per_class=N: that part of the training
features, drawn per class with seed= (or val_rule=first: the first in file order), is held out of training (each class keeps at least one
sample); the draw is recorded in the run's config.yaml (val_split).

Feature files are .npz or .safetensors with `features` (N x d), `labels` (N) and optionally
`class_names`, `prototypes` (C x d), `prototype_bias` (C).

examples:
  longtail probe --train train.npz --test test.npz --loss la
  longtail probe --train train.npz --test test.npz loss=la loss_options.tau=0.5 method=cosine
  longtail probe --train train.npz --test test.npz --val val.npz --method vmf-kde --loss la --json
  longtail probe --train train.npz --test test.npz --val val.npz --init prototypes --interpolate auto
  longtail probe --train train.npz --test test.npz solver=adamw epochs=50 lr=1e-3
  longtail probe --train train.npz --test test.npz --posthoc-tau auto val_split=0.1
  longtail probe --train synthetic_features:train --test synthetic_features:test --val synthetic_features:val --posthoc-tau auto
  longtail probe --list        # every probe method, loss, head and solver
"""

# flag (argparse dest) -> the config key it stands for
SUGAR: tuple[tuple[str, str], ...] = (
    ("method", "method"), ("loss", "loss"), ("tau", "loss_options.tau"), ("init", "init"),
    ("interpolate", "interpolate"), ("posthoc_tau", "posthoc_tau"), ("calibrate", "calibrate"),
    ("seed", "seed"), ("device", "device"),
)


class _ListNames(argparse.Action):
    """--list: print the registered probe methods, losses, heads and solvers, then exit."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from longtail.methods.heads import HEADS
        from longtail.methods.losses import LOSSES
        from longtail.methods.probe import SOLVERS, load_methods

        print("probe methods:", ", ".join(load_methods().names()))
        print("losses:       ", ", ".join(LOSSES.names()))
        print("heads:        ", ", ".join(HEADS.names()))
        print("solvers:      ", ", ".join(SOLVERS.names()))
        parser.exit()


def add_arguments(p: argparse.ArgumentParser) -> None:
    from longtail.config import add_override_arguments

    p.add_argument("--list", action=_ListNames, help="list the probe methods, losses, heads and solvers, then exit")
    p.add_argument("--train", required=True, help="training feature file (.npz/.safetensors) or synthetic_features:train")
    p.add_argument("--test", required=True, help="test feature file")
    p.add_argument("--val", help="validation feature file (for 'auto' choices and --calibrate); "
                                 "or val_split=F / val_per_class=N to draw it from --train")
    add_override_arguments(p, "loss=la loss_options.tau=0.5 solver=adamw epochs=50")
    p.add_argument("--method", help="= method=X (default cosine); see --list")
    p.add_argument("--loss", help="= loss=X (default la: logit-adjusted); see --list")
    p.add_argument("--tau", help="= loss_options.tau=T: logit-adjustment strength of la-type losses")
    p.add_argument("--init", help="= init=X: random (default) or prototypes")
    p.add_argument("--interpolate", help="= interpolate=X: 'auto' (on --val) or ALPHA in [0,1], mixes zero-shot and trained heads")
    p.add_argument("--posthoc-tau", help="= posthoc_tau=X: post-hoc logit adjustment, 'auto' (on --val) or a number")
    p.add_argument("--calibrate", help="= calibrate=temperature: temperature scaling on --val (lowers ECE; argmax unchanged)")
    p.add_argument("--seed", help="= seed=N (default 0)")
    p.add_argument("--device", help="= device=X: auto (default), cpu or cuda")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help=argparse.SUPPRESS)  # old spelling
    p.add_argument("--many", type=int, default=100, help="many-shot: more than this many training images")
    p.add_argument("--few", type=int, default=20, help="few-shot: fewer than this many training images")
    p.add_argument("--label", help="name of the run in comparison reports")
    p.add_argument("--out", help="run folder to create (default runs/probe-TIMESTAMP); never overwritten")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object on stdout")


def build_config(args: argparse.Namespace):
    """The validated ProbeConfig of the flags and KEY=VALUE overrides (no file is read)."""
    from longtail.config import apply_overrides, parse_overrides
    from longtail.methods.probe import ProbeConfig

    pairs = [f"{key}={getattr(args, dest)}" for dest, key in SUGAR if getattr(args, dest) is not None]
    return apply_overrides(ProbeConfig(), parse_overrides([*pairs, *args.set, *args.overrides]))


def run(args: argparse.Namespace) -> int:
    from longtail.data.open_features import open_features
    from longtail.data.splits import split_features
    from longtail.data.stats import check_thresholds
    from longtail.errors import ConfigError
    from longtail.eval.metrics import summary
    from longtail.io import check_writable, to_jsonable
    from longtail.methods.probe import run_probe

    cfg = build_config(args)  # every config mistake fails here, before any feature file is read
    check_thresholds(args.many, args.few)
    if args.out:
        check_writable(args.out)
    rule = cfg.validation_rule()
    if rule.active and args.val:
        raise ConfigError(f"--val {args.val} and {rule.describe()} both give a validation set: use one")
    if cfg.needs_validation() and not (args.val or rule.active):
        raise ConfigError(f"{', '.join(cfg.needs_validation())} needs a validation set: "
                          f"add --val FILE, or val_split=0.1 to hold out part of --train")
    train = open_features(args.train)
    test = open_features(args.test)
    _warn_same(args.train, args.test)  # both read: a bad file is its own one-line error
    val = open_features(args.val) if args.val else None
    extra = None
    if rule.active:
        train, val, drawn = split_features(train, rule)
        extra = {"val_split": drawn}
    folder, metrics = run_probe(
        train, test, cfg, val=val, out=args.out, label=args.label,
        many=args.many, few=args.few, report=not args.no_report, extra_config=extra,
    )
    if args.json:
        print(json.dumps(to_jsonable(summary(metrics) | {"post_hoc": metrics["post_hoc"], "run": str(folder)})))
    else:
        _print_table(metrics, folder)
    return 0


def _warn_same(train: str, test: str) -> None:
    """Warn when --train and --test name the same data (issue 22 item 16): the accuracy then
    measures how well the probe fits its own training samples, not how it generalises."""
    import os
    import warnings

    def same() -> bool:
        if train == test:
            return True
        try:
            return os.path.samefile(train, test)
        except OSError:  # a preset name, or a file that is not there (its own error follows)
            return False

    if same():
        warnings.warn(f"--train and --test are the same data ({test}): the test accuracy is measured on the "
                      "training samples, not on unseen ones", stacklevel=2)


def _print_table(metrics: dict, folder) -> None:
    def pct(v):
        return "  n/a" if v is None else f"{100 * v:5.1f}"

    print(f"{'all':>6} {'many':>6} {'medium':>6} {'few':>6} {'ECE':>6}")
    print(f"{pct(metrics.get('all')):>6} {pct(metrics.get('many')):>6} {pct(metrics.get('medium')):>6} "
          f"{pct(metrics.get('few')):>6} {pct(metrics.get('ece')):>6}")
    post = metrics["post_hoc"]
    if (post["alpha"], post["posthoc_tau"], post["temperature"]) != (1.0, 0.0, 1.0):
        print(f"post-hoc: alpha {post['alpha']:g}, tau {post['posthoc_tau']:g}, temperature {post['temperature']:.3g}")
    print(f"run folder: {folder}")
