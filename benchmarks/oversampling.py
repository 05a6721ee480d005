"""Latent oversampling on the `synthetic_features` benchmark, and our SMOTE vs imbalanced-learn's;
with --tiny / --features, the time of every oversampling probe against the plain probe.

--tiny (Tiny-ImageNet-100-LT EfficientNet-Lite0 features, the draw of
benchmarks/real_tiny100_lt.py) or --features FILE [--lt IR]: the plain linear probe (CE,
L-BFGS) and smote / gaussian-kde / vmf-kde / distribution-calibration + the same probe, each
fitted once untimed, then --repeats interleaved rounds (a busy machine slows all rows alike) at
--threads (default 2); median seconds, ratio to the plain probe, and where the time goes
(sampling and preparation vs the L-BFGS fit on real + synthetic rows).

Part 1: balanced (class-mean) and few-shot test accuracy of the linear probe (L-BFGS, CE) on
real features (`none`) and on real + synthetic features from `smote`, `gaussian-kde` and
`vmf-kde`, next to the benchmark's exact Bayes limit.
Part 2: time to generate the same number of SMOTE samples (k = 5, classes with more than 5 samples, balance to the largest
class) with longtail's batched torch SMOTE and with `imblearn.over_sampling.SMOTE`, on the
benchmark's training set and on a larger one; median of --repeats after a warm-up, as a ratio.

    python benchmarks/oversampling.py --tiny [--threads 2] [--repeats 3]
    python benchmarks/oversampling.py [--repeats 3] [--threads N] [--device auto]
        [--num-classes 40] [--dim 64] [--n-max 500] [--big-classes 100] [--big-dim 512] [--big-n-max 1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from imblearn.over_sampling import SMOTE

from longtail.data.profiles import exponential_profile
from longtail.data.synthetic_features import make_synthetic_benchmark
from longtail.device import resolve_device
from longtail.eval.metrics import evaluate
from longtail.methods.latent.oversample import make_oversampler
from longtail.methods.probe import ProbeConfig, fit_probe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_vs_sklearn import add_data_arguments, load_training_set, race  # noqa: E402  (benchmarks/ is not a package)

METHODS = {"none": "linear", "smote": "smote", "gaussian-kde": "gaussian-kde", "vmf-kde": "vmf-kde",
           "distribution-calibration": "distribution-calibration"}


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up, not timed
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def accuracy_table(args: argparse.Namespace) -> None:
    bench = make_synthetic_benchmark(seed=args.seed, num_classes=args.num_classes, dim=args.dim,
                                     n_max=args.n_max)
    counts = bench.train.class_counts()
    print(f"synthetic_features: {args.num_classes} classes, d={args.dim}, train {counts.sum()} "
          f"(n_max {counts.max()}, n_min {counts.min()}), test {bench.test.num_samples}; "
          f"Bayes balanced accuracy {100 * bench.bayes_balanced_accuracy:.2f} "
          f"+- {100 * bench.bayes_standard_error:.2f}")
    print(f"  {'method':<26}{'balanced':>10}{'few':>8}{'many':>8}{'synthetic':>11}{'fit s':>8}")
    for name, method in METHODS.items():
        start = time.perf_counter()
        probe = fit_probe(bench.train, ProbeConfig(method=method, loss="ce", seed=args.seed, device=args.device))
        seconds = time.perf_counter() - start
        m = evaluate(probe.logits(bench.test.features), bench.test.labels, counts)
        synth = probe.info.get("oversampling", {}).get("num_synthetic", 0)
        few, many = (("n/a" if m[g] is None else f"{100 * m[g]:.2f}") for g in ("few", "many"))
        print(f"  {name:<26}{100 * m['class_mean']:>10.2f}{few:>8}{many:>8}{synth:>11}{seconds:>8.1f}")


def big_set(num_classes: int, dim: int, n_max: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm Gaussian clusters with exponential (IR 100) class counts."""
    rng = np.random.default_rng(seed)
    counts = exponential_profile(n_max, num_classes, 100.0)
    centres = rng.normal(size=(num_classes, dim))
    y = np.repeat(np.arange(num_classes), counts)
    x = centres[y] + 2.0 * rng.normal(size=(y.size, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def smote_timing(name: str, x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> None:
    k = 5
    keep = np.bincount(y)[y] > k  # imblearn needs more than k samples in every class
    x, y = x[keep], np.unique(y[keep], return_inverse=True)[1]
    ours = make_oversampler("smote", k_neighbors=k, seed=0, device=args.device)
    theirs = SMOTE(k_neighbors=k, random_state=0)
    xr, yr = ours.fit_resample(x, y)
    xi, yi = theirs.fit_resample(x, y)
    assert np.array_equal(np.bincount(yr), np.bincount(yi)), "different target counts"
    t_ours = median_time(lambda: ours.fit_resample(x, y), args.repeats)
    t_imb = median_time(lambda: theirs.fit_resample(x, y), args.repeats)
    print(f"SMOTE on {name}: {x.shape[0]} real -> {xr.shape[0]} rows, d={x.shape[1]}, "
          f"{np.unique(y).size} classes, k={k}")
    print(f"  longtail smote (torch, {resolve_device(args.device).type:<4}) : {t_ours:8.3f} s")
    print(f"  imbalanced-learn SMOTE          : {t_imb:8.3f} s")
    print(f"  speed-up (imblearn / ours)      : {t_imb / t_ours:8.1f}x")


def ratio_table(args: argparse.Namespace) -> None:
    """Every oversampling probe's time against the plain probe's, same data, same run."""
    from threadpoolctl import threadpool_limits

    train, _, what = load_training_set(args)
    counts = train.class_counts()
    threads = args.threads or 2
    torch.set_num_threads(threads)
    splits: dict[str, list[float]] = {name: [] for name in METHODS}  # L-BFGS seconds of every call

    def fit(name: str, method: str):
        start = time.perf_counter()
        probe = fit_probe(train, ProbeConfig(method=method, loss="ce", seed=args.seed, device=args.device))
        splits[name].append((time.perf_counter() - start, probe.info["train"]["train_seconds"]))
        return probe

    fits = {name: (lambda name=name, method=method: fit(name, method)) for name, method in METHODS.items()}
    with threadpool_limits(limits=threads):
        results = race(fits, args.repeats)
    base = results["none"][1]
    print(f"{what}: C={train.num_classes}, d={train.dim}, N={train.num_samples} (n_max {counts.max()}, "
          f"n_min {counts.min()}); threads={threads}, repeats={args.repeats} (median, interleaved)")
    print(f"  {'method':<26}{'rows':>8}{'seconds':>9}{'x plain':>9}{'sampling':>10}{'L-BFGS':>8}{'iters':>6}")
    for name, (probe, seconds) in results.items():
        timed = splits[name][1:]  # the timed rounds (the first call is the warm-up)
        fit_s = statistics.median(t for _, t in timed)  # L-BFGS on real + synthetic rows
        other_s = statistics.median(total - t for total, t in timed)  # sampling and preparation
        rows = train.num_samples + probe.info.get("oversampling", {}).get("num_synthetic", 0)
        print(f"  {name:<26}{rows:>8}{seconds:>9.2f}{seconds / base:>9.2f}{other_s:>10.2f}{fit_s:>8.2f}"
              f"{probe.info['train']['iterations']:>6}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p)
    p.add_argument("--big-classes", type=int, default=100)
    p.add_argument("--big-dim", type=int, default=512)
    p.add_argument("--big-n-max", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-accuracy", action="store_true")
    args = p.parse_args()
    if args.tiny or args.features:
        ratio_table(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads={torch.get_num_threads()}")
    if not args.skip_accuracy:
        accuracy_table(args)
    bench = make_synthetic_benchmark(seed=args.seed, num_classes=args.num_classes, dim=args.dim,
                                     n_max=args.n_max, bayes_per_class=1)
    smote_timing("synthetic_features train", bench.train.features, bench.train.labels, args)
    smote_timing("larger set", *big_set(args.big_classes, args.big_dim, args.big_n_max, args.seed), args)


if __name__ == "__main__":
    main()
