"""The probe at iNaturalist-2018 scale: seconds per L-BFGS iteration, iterations, peak resident
memory and balanced accuracy of each probe row, on iNat-shaped synthetic features.

Shapes (--shapes):
  inat   8,142 classes with iNat-2018's count profile (`data.profiles.inat2018_counts`: 437,513
         images, 1,000 -> 2 per class, 842 / 4,076 / 3,224 many / medium / few), d = 768;
  80k    80,000 rows, 2,000 classes (exponential profile 188 -> 1), d = 768: the size issue 19
         measured before the change.
Features: a unit mean direction per class plus Gaussian noise, L2-normalised (seeded); the test
set has 3 images per class, as iNat-2018's validation set.

Rows (--rows): `default` (cosine head + LA, the probe's default), `linear-ce` (linear head + CE:
scikit-learn's objective, and method=auto's CE path), `auto` (method=auto, its default k-fold
search), `vmf-kde` (method_options.sampling_strategy=median: tail classes oversampled to the
median count), `ncm` (nearest class mean: no iterations). Each row runs in its own process,
which reports its own peak RSS (ru_maxrss), so rows do not share memory. --max-iter caps the
L-BFGS iterations of every row (the timing rows: say so with the table).

Peers in the same run: `--before REV` runs the same rows with the code of git revision REV
(e.g. the commit before the chunked solver, through a temporary `git worktree`); scikit-learn
`LogisticRegression(C=1, lbfgs)` at the sizes whose float64 N x C arrays fit (`sklearn` row).

    python benchmarks/scale.py [--shapes inat 80k] [--rows default linear-ce auto vmf-kde ncm]
        [--max-iter 3] [--memory auto] [--before REV [--before-rows default linear-ce]]
        [--out benchmarks/results/scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ROWS = {
    "default": {},
    "linear-ce": {"method": "linear", "loss": "ce"},
    "auto": {"method": "auto"},
    "vmf-kde": {"method": "vmf-kde", "method_options": {"sampling_strategy": "median"}},
    "ncm": {"method": "ncm"},
}
DIM = 768


def shape_counts(shape: str) -> np.ndarray:
    """Training images per class of a named shape."""
    if shape == "inat":
        from longtail.data.profiles import inat2018_counts

        return inat2018_counts()
    if shape == "80k":  # exponential, IR 100, n_max chosen so the floors sum to 80,000 (the rest on the head)
        def profile(n_max: float) -> np.ndarray:
            return np.floor(n_max * 0.01 ** (np.arange(2000) / 1999)).astype(np.int64)

        lo, hi = 1.0, 1000.0
        for _ in range(60):
            lo, hi = ((lo + hi) / 2, hi) if profile((lo + hi) / 2).sum() <= 80_000 else (lo, (lo + hi) / 2)
        counts = profile(lo)
        counts[: 80_000 - int(counts.sum())] += 1  # exactly 80,000 rows
        return counts
    if shape == "small":  # a smoke size for checking the script
        return np.floor(60 * 0.05 ** (np.arange(50) / 49)).astype(np.int64)
    raise SystemExit(f"unknown shape {shape!r} (inat, 80k, small)")


DATA_SEED = 20181  # not the probe's seed (0): its random head init would draw these very means


def make_features(counts: np.ndarray, per_class_test: int = 3, seed: int = DATA_SEED):
    """(train x, train y, test x, test y): float32 unit rows around a unit mean per class."""
    import torch

    g = torch.Generator().manual_seed(seed)
    means = torch.nn.functional.normalize(torch.randn(counts.size, DIM, generator=g), dim=1)

    def draw(labels: np.ndarray) -> np.ndarray:
        y = torch.as_tensor(labels)
        out = torch.randn(y.numel(), DIM, generator=g).mul_(0.2).add_(means[y])  # noise norm ~5.5: ~60 % at 50 classes
        return torch.nn.functional.normalize(out, dim=1, out=out).numpy()

    y_train = np.repeat(np.arange(counts.size), counts)
    y_test = np.repeat(np.arange(counts.size), per_class_test)
    return draw(y_train), y_train, draw(y_test), y_test


def run_row(shape: str, row: str, max_iter: int, memory: str) -> dict:
    """One row in this process: fit, time, score; peak RSS of this process at the end."""
    from longtail.data.features import FeatureSet
    from longtail.eval.metrics import balanced_accuracy
    from longtail.methods.probe import ProbeConfig
    from longtail.methods.probe.train import fit_probe

    counts = shape_counts(shape)
    x, y, xt, yt = make_features(counts)
    train = FeatureSet(x, y)
    start = time.perf_counter()
    if row == "sklearn":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=1.0, max_iter=max_iter, tol=1e-4).fit(x, y)
        seconds, iterations = time.perf_counter() - start, int(np.max(model.n_iter_))
        evaluations, train_seconds = None, seconds
        accuracy = balanced_accuracy(model.predict(xt), yt, counts.size)
    else:
        options = {**ROWS[row], "max_iter": max_iter}
        if "memory" in ProbeConfig.__dataclass_fields__:  # the code under --before may predate it
            options["memory"] = memory
        probe = fit_probe(train, ProbeConfig.from_dict(options))
        seconds = time.perf_counter() - start
        info = probe.info.get("train", {})
        iterations, evaluations = info.get("iterations"), info.get("evaluations")
        train_seconds = info.get("train_seconds")
        accuracy = balanced_accuracy(probe.predict(xt), yt, counts.size)
    return {"shape": shape, "row": row, "rows": int(y.size), "classes": int(counts.size), "seconds": seconds,
            "iterations": iterations, "evaluations": evaluations, "train_seconds": train_seconds,
            "seconds_per_iteration": train_seconds / iterations if iterations and train_seconds else None,
            "seconds_per_evaluation": train_seconds / evaluations if evaluations and train_seconds else None,
            "balanced_accuracy": float(accuracy),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "chunk_rows": info.get("chunk_rows") if row != "sklearn" else None, "final_objective":
            info.get("final_objective") if row != "sklearn" else None,
            "auto": None if row != "auto" else {k: probe.info["auto"][k] for k in (
                "chosen", "folds", "held_out_sizes", "search_seconds", "refit_seconds", "work_vs_plain_fit")}}


def in_child(shape: str, row: str, max_iter: int, memory: str, code: Path) -> dict:
    """run_row in a fresh process with `code` first on the path (this tree, or a --before worktree)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run([sys.executable, __file__, "--child", shape, row, str(max_iter), memory],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        return {"shape": shape, "row": row, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        shape, row, max_iter, memory = sys.argv[2:6]
        print(json.dumps(run_row(shape, row, int(max_iter), memory)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["inat", "80k"])
    parser.add_argument("--rows", nargs="+", default=list(ROWS))
    parser.add_argument("--max-iter", type=int, default=3)
    parser.add_argument("--memory", default="auto")
    parser.add_argument("--before", default=None, help="git revision whose code runs the same rows")
    parser.add_argument("--before-rows", nargs="+", default=None, help="only these rows under --before")
    parser.add_argument("--sklearn", nargs="*", default=["80k"], help="shapes with a scikit-learn row")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        trees = [("now", ROOT)]
        if args.before:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", f"{tmp}/before", args.before],
                           check=True, capture_output=True)
            trees.append((f"before ({args.before})", Path(tmp) / "before"))
        try:
            for shape in args.shapes:
                plan = [(label, code, row) for row in args.rows for label, code in trees
                        if label == "now" or args.before_rows is None or row in args.before_rows]
                plan += [("now", ROOT, "sklearn")] if shape in args.sklearn else []
                for label, code, row in plan:
                    result = {"code": label, **in_child(shape, row, args.max_iter, args.memory, code)}
                    results.append(result)
                    print(json.dumps(result), flush=True)
        finally:
            if args.before:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", f"{tmp}/before"],
                               capture_output=True)
    print(f"\nmax_iter = {args.max_iter}, memory = {args.memory}, {os.cpu_count()} CPUs, torch threads default\n")
    print("| shape | row | code | rows x classes | chunk rows | fit s | iterations | evaluations | s / evaluation "
          "| peak RSS GB | balanced acc. |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        if "error" in r:
            print(f"| {r['shape']} | {r['row']} | {r['code']} | failed: {r['error'][:80]} | | | | | | | |")
            continue
        print(f"| {r['shape']} | {r['row']} | {r['code']} | {r['rows']:,} x {r['classes']:,} | "
              f"{fmt(r.get('chunk_rows'), ',')} | {fmt(r.get('train_seconds'), '.1f')} | {fmt(r['iterations'], 'd')} | "
              f"{fmt(r.get('evaluations'), 'd')} | {fmt(r.get('seconds_per_evaluation'), '.2f')} | "
              f"{r['peak_rss_gb']:.2f} | {r['balanced_accuracy']:.4f} |")
    if args.out:
        args.out.write_text(json.dumps({"max_iter": args.max_iter, "memory": args.memory, "rows": results},
                                       indent=1))


if __name__ == "__main__":
    main()
