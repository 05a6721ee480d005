"""`longtail demo`: the offline default job: several probe methods on the synthetic benchmark."""

from __future__ import annotations

import argparse

HELP = "run the offline demo: probe methods on the synthetic long-tailed benchmark vs the Bayes limit"
DESCRIPTION = """\
Builds the built-in `synthetic_features` benchmark (classes are von Mises-Fisher mixtures on
the unit sphere, imbalance ratio 100, balanced test set; its Bayes-optimal balanced accuracy
is computed from the generating densities), trains several long-tail probe methods on it,
prints their overall / many / medium / few accuracy and ECE next to the Bayes limit, and
writes one run folder per method plus a comparison report. No download; about 25 s on
2 CPU cores (README, "Measured results").

Positional KEY=VALUE pairs change the benchmark (num_classes, dim, n_max, imbalance_ratio,
n_val, n_test, components, kappa_class, ...); an unknown key lists the valid ones.

examples:
  longtail demo
  longtail demo --out runs/my-demo --seed 1
  longtail demo imbalance_ratio=10 num_classes=20
"""

# (label, ProbeConfig overrides): the methods the demo compares.
DEMO_METHODS: tuple[tuple[str, dict], ...] = (
    ("linear CE", {"loss": "ce"}),
    ("linear class-weighted CE", {"loss": "weighted-ce"}),
    ("linear CE + post-hoc LA (tau on val)", {"loss": "ce", "posthoc_tau": "auto"}),
    ("linear LA", {"loss": "la"}),
    ("linear LA + temperature scaling", {"loss": "la", "calibrate": "temperature"}),
    ("linear balanced softmax", {"loss": "balanced-softmax"}),
    ("linear CCAR + LA", {"loss": "ccar-la"}),
    ("cosine LA", {"method": "cosine", "loss": "la"}),
    ("smote + LR", {"method": "smote"}),
    ("gaussian-kde + LR", {"method": "gaussian-kde"}),
    ("vmf-kde + LR", {"method": "vmf-kde"}),
    ("zero-shot (prototypes)", {"method": "zero-shot"}),
    ("prototype init + LA + interpolation", {"loss": "la", "init": "prototypes", "interpolate": "auto"}),
    ("prototype init + LA + L2-SP anchor", {"loss": "la", "init": "prototypes", "l2_target": "init"}),
    ("auto (chosen on val)", {"method": "auto", "loss": "la"}),  # la: the default loss, the base auto starts from
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="benchmark parameters, e.g. imbalance_ratio=10 num_classes=20")
    p.add_argument("--out", help="demo folder to create (default runs/demo-TIMESTAMP); never overwritten")
    p.add_argument("--seed", type=int, default=0, help="benchmark and training seed (default 0)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--no-report", action="store_true", help="skip the per-run and comparison reports (same table)")


def run(args: argparse.Namespace) -> int:
    import datetime as dt
    import time
    from dataclasses import replace
    from pathlib import Path

    from longtail.config import apply_overrides, call_with_options, parse_overrides
    from longtail.data.features import save_features
    from longtail.data.synthetic_features import make_synthetic_benchmark
    from longtail.errors import ConfigError
    from longtail.eval.report import write_comparison_report
    from longtail.io import check_writable, write_json
    from longtail.methods.probe import ProbeConfig, run_probe
    from longtail.methods.probe.registry import get_method

    out = Path(args.out or f"runs/demo-{dt.datetime.now():%Y%m%d-%H%M%S}")
    if out.exists():
        raise ConfigError(f"demo folder already exists, not overwritten: {out}")
    check_writable(out)
    base = ProbeConfig(method="linear", loss="ce", seed=args.seed, device=args.device)  # rows change it
    configs = [apply_overrides(base, overrides) for _, overrides in DEMO_METHODS]  # all checked up front
    start = time.perf_counter()
    bench = call_with_options(make_synthetic_benchmark, "synthetic benchmark",
                              **{"seed": args.seed, **parse_overrides(args.overrides)})
    data = {}  # the splits as saved, so that each run records (and `longtail eval` reloads) its files
    for split in ("train", "val", "test"):
        path = save_features(getattr(bench, split), out / "data" / f"{split}.npz")
        data[split] = replace(getattr(bench, split), source=str(path))
    write_json(out / "benchmark.json", bench.summary())
    print(f"synthetic benchmark: {bench.train.num_classes} classes, d={bench.train.dim}, "
          f"{bench.train.num_samples} train / {bench.test.num_samples} test samples, imbalance ratio "
          f"{bench.params.get('imbalance_ratio')}; Bayes balanced accuracy "
          f"{100 * bench.bayes_balanced_accuracy:.2f}% (± {100 * bench.bayes_standard_error:.2f}, "
          f"{bench.bayes_samples} Monte-Carlo samples)")
    folders, rows = [], []
    for i, ((label, _), cfg) in enumerate(zip(DEMO_METHODS, configs)):
        folder, metrics = run_probe(data["train"], data["test"], cfg, val=data["val"],
                                    out=out / "runs" / f"{i:02d}-{cfg.method}-{cfg.loss}", label=label,
                                    report=not args.no_report)
        folders.append(folder)
        if get_method(cfg.method).stochastic:  # the other seeds' balanced accuracy, no run folders
            metrics = {**metrics, "seed_class_mean": _other_seeds(cfg, data, metrics["class_mean"])}
        rows.append((label, metrics))
        print(f"  done: {label} ({metrics['fit_seconds']:.1f}s)", flush=True)
    paired = _paired_with_reference(folders, [label for label, _ in rows])
    bayes = {"all": bench.bayes_balanced_accuracy, "class_mean": bench.bayes_balanced_accuracy}
    report = None if args.no_report else write_comparison_report(
        folders, out / "comparison.html", title="longtail demo: synthetic long-tailed benchmark",
        references=[("Bayes limit (exact densities)", bayes)],
        note="Synthetic vMF-mixture benchmark, imbalance ratio 100; the Bayes row is the balanced "
             "accuracy of the Bayes-optimal rule under the generating densities (Monte-Carlo estimate).",
    )
    _print_table(rows, bench.bayes_balanced_accuracy, paired)
    if report is not None:
        print(f"\ncomparison report: {report}")
    print(f"total time: {time.perf_counter() - start:.0f}s")
    return 0


# The row every other row is paired with (docs/methods.md §7.7): the default probe; CLAIMS: the
# further (A, B) pairs the README's text compares, printed under the table.
REFERENCE = "cosine LA"
CLAIMS = (("prototype init + LA + L2-SP anchor", "auto (chosen on val)"), ("smote + LR", "gaussian-kde + LR"),
          ("vmf-kde + LR", "gaussian-kde + LR"), ("smote + LR", "vmf-kde + LR"))


SEEDS = 3  # a stochastic row (oversampling) is fitted again with seed + 1, seed + 2


def _other_seeds(cfg, data, first: float) -> list[float]:
    """Balanced test accuracy of `cfg` fitted with seeds cfg.seed .. + SEEDS - 1 (`first`: its own)."""
    from dataclasses import replace

    from longtail.eval.metrics import balanced_accuracy
    from longtail.methods.probe import fit_probe

    out = [first]
    for s in range(1, SEEDS):
        probe = fit_probe(data["train"], replace(cfg, seed=cfg.seed + s), data["val"])
        test = data["test"]
        out.append(balanced_accuracy(probe.logits(test.features), test.labels, test.num_classes))
    return out


def _paired_with_reference(folders, labels) -> dict:
    """label -> (B - A, paired SE, verdict) of each row's balanced accuracy against REFERENCE's on
    the same test samples (`longtail.eval.paired`); empty when the reference row did not run."""
    if REFERENCE not in labels:
        return {}
    from longtail.eval.paired import paired_balanced_accuracy_se, verdict
    from longtail.methods.predictor import Predictor

    scored = [Predictor.from_run(folder, device="cpu").test() for folder in folders]
    ref_logits, ref_labels = scored[labels.index(REFERENCE)]
    out = {}
    for label, (logits, test_labels) in zip(labels, scored):
        if label != REFERENCE:
            diff, se = paired_balanced_accuracy_se(ref_logits, logits, test_labels)
            out[label] = (diff, se, verdict(diff, se))
    for a, b in CLAIMS:
        if a in labels and b in labels:
            (logits_a, _), (logits_b, test_labels) = scored[labels.index(a)], scored[labels.index(b)]
            diff, se = paired_balanced_accuracy_se(logits_a, logits_b, test_labels)
            out[(a, b)] = (diff, se, verdict(diff, se))
    return out


def _print_table(rows, bayes: float, paired: dict | None = None) -> None:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}"

    paired = paired or {}
    table = Table(title=f"accuracy (%) on the balanced test set; ECE in %; Δ = balanced accuracy minus "
                        f"that of {REFERENCE}, ± its paired SE; verdict at 2 SE")
    for col in ("method", "all", "many", "medium", "few", "ECE", "fit s", f"{SEEDS} seeds (mean ± SD)",
                f"Δ vs {REFERENCE} ± SE", "verdict"):
        table.add_column(col, justify="left" if col in ("method", "verdict") else "right")
    for label, m in rows:
        if label in paired:
            diff, se, said = paired[label]
            cells = (f"{100 * diff:+.1f} ± {100 * se:.1f}", said)
        else:
            cells = ("(reference)", "") if label == REFERENCE and paired else ("", "")
        seeds = m.get("seed_class_mean")
        spread = "" if not seeds else f"{100 * np.mean(seeds):.1f} ± {100 * np.std(seeds, ddof=1):.1f}"
        table.add_row(label, pct(m["all"]), pct(m["many"]), pct(m["medium"]), pct(m["few"]),
                      pct(m["ece"]), f"{m['fit_seconds']:.1f}", spread, *cells)
    table.add_row("[italic]Bayes limit (balanced)[/italic]", pct(bayes), "", "", "", "", "", "", "", "")
    Console(width=170).print(table)
    for key, (diff, se, said) in paired.items():
        if isinstance(key, tuple):
            print(f"paired: {key[1]} vs {key[0]}: {100 * diff:+.1f} ± {100 * se:.1f} points: {said}")
