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

Feature files are .npz or .safetensors with `features` (N x d), `labels` (N) and optionally
`class_names`, `prototypes` (C x d), `prototype_bias` (C).

examples:
  longtail probe --train train.npz --test test.npz --loss la
  longtail probe --train train.npz --test test.npz --val val.npz --method vmf-kde --loss la --json
  longtail probe --train train.npz --test test.npz --init prototypes --interpolate auto
  longtail probe --train train.npz --test test.npz --set optimizer=adamw epochs=50 lr=1e-3
  longtail probe --train synthetic_features:train --test synthetic_features:test --loss la
  longtail probe --list        # every probe method and loss
"""


class _ListNames(argparse.Action):
    """--list: print the registered probe methods and losses, then exit (like --help)."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from longtail.methods.registry import LOSSES, PROBE_METHODS, load_builtin_methods

        load_builtin_methods()
        print("probe methods:", ", ".join(PROBE_METHODS.names()))
        print("losses:       ", ", ".join(LOSSES.names()))
        parser.exit()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--list", action=_ListNames, help="list the probe methods and losses, then exit")
    p.add_argument("--train", required=True, help="training feature file (.npz/.safetensors)")
    p.add_argument("--test", required=True, help="test feature file")
    p.add_argument("--val", help="validation feature file (for post-hoc tau / interpolation choice)")
    p.add_argument("--method", default="linear", help="probe method (default: linear); see --list")
    p.add_argument("--loss", default="ce", help="loss (default: ce); see --list")
    p.add_argument("--tau", type=float, help="logit-adjustment strength for la-type losses")
    p.add_argument("--init", choices=("random", "prototypes"), help="head initialisation")
    p.add_argument("--interpolate", help="'auto' or ALPHA in [0,1]: mix zero-shot and trained heads")
    p.add_argument("--posthoc-tau", help="post-hoc logit adjustment: 'auto' (choose on --val) or a number")
    p.add_argument("--calibrate", choices=("temperature",),
                   help="temperature scaling on --val (lowers ECE; predictions unchanged)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other ProbeConfig fields")
    p.add_argument("--many", type=int, default=100, help="many-shot: more than this many training images")
    p.add_argument("--few", type=int, default=20, help="few-shot: fewer than this many training images")
    p.add_argument("--label", help="name of the run in comparison reports")
    p.add_argument("--out", help="run folder to create (default runs/probe-TIMESTAMP); never overwritten")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object on stdout")


def build_config(args: argparse.Namespace):
    """ProbeConfig from the explicit flags plus --set overrides."""
    from longtail.config import parse_overrides, update_dataclass
    from longtail.methods.probe import ProbeConfig
    from longtail.methods.registry import LOSSES, PROBE_METHODS, load_builtin_methods

    load_builtin_methods()
    PROBE_METHODS.get(args.method)
    LOSSES.get(args.loss)
    overrides = {"method": args.method, "loss": args.loss}
    for flag, key in (("tau", "tau"), ("init", "init"), ("calibrate", "calibrate"), ("seed", "seed"),
                      ("device", "device")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    for flag, key in (("interpolate", "interpolate"), ("posthoc_tau", "posthoc_tau")):
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value if value in ("auto", "none") else _number(value, flag)
            if value == "none":
                overrides[key] = None
    overrides.update(parse_overrides(args.set))
    return update_dataclass(ProbeConfig(), overrides)


def _number(value: str, flag: str) -> float:
    from longtail.errors import ConfigError

    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"--{flag.replace('_', '-')} must be 'auto' or a number, got '{value}'") from None


def run(args: argparse.Namespace) -> int:
    from longtail.data.features import load_features
    from longtail.experiment import run_probe, summary

    cfg = build_config(args)
    train = load_features(args.train)
    test = load_features(args.test)
    val = load_features(args.val) if args.val else None
    folder, metrics = run_probe(
        train, test, cfg, val=val, out=args.out, label=args.label,
        many=args.many, few=args.few, report=not args.no_report,
    )
    if args.json:
        from longtail.io import to_jsonable

        print(json.dumps(to_jsonable(summary(metrics) | {"run": str(folder)})))
    else:
        _print_table(metrics, folder)
    return 0


def _print_table(metrics: dict, folder) -> None:
    def pct(v):
        return "  n/a" if v is None else f"{100 * v:5.1f}"

    print(f"{'all':>6} {'many':>6} {'medium':>6} {'few':>6} {'ECE':>6}")
    print(f"{pct(metrics.get('all')):>6} {pct(metrics.get('many')):>6} {pct(metrics.get('medium')):>6} "
          f"{pct(metrics.get('few')):>6} {pct(metrics.get('ece')):>6}")
    print(f"run folder: {folder}")
