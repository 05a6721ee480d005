"""Linear probe fit: longtail's L-BFGS probe vs scikit-learn LogisticRegression(lbfgs), same run.

On the `synthetic_features` benchmark (vMF mixtures, IR 100, known Bayes limit) both fit the
same objective, mean CE + ||W||^2 / (2 C N) with C = 1, on the same L2-normalised float32
features with the same tolerance (max |gradient| <= 1e-4). Prints balanced test accuracy,
median fit time over --repeats (after one untimed warm-up each), the objective each reaches
(evaluated in float64 by one formula) and our time / sklearn time.

    python benchmarks/probe_vs_sklearn.py [--threads 1] [--repeats 5] [--device auto]
        [--num-classes 40] [--dim 64] [--n-max 500]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from scipy.special import logsumexp
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from longtail.data.synthetic_features import make_synthetic_benchmark
from longtail.eval.metrics import evaluate
from longtail.methods.probe import ProbeConfig, fit_probe


def objective(weight: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray, c: float = 1.0) -> float:
    """scikit-learn's LogisticRegression objective divided by N: mean CE + ||W||^2 / (2 C N)."""
    z = x.astype(np.float64) @ weight.T.astype(np.float64) + bias
    ce = np.mean(logsumexp(z, axis=1) - z[np.arange(y.size), y])
    return float(ce + 0.5 / (c * y.size) * np.sum(weight.astype(np.float64) ** 2))


def timed(fn, repeats: int):
    fn()  # warm-up (lazy initialisation, caches), not timed
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1],
                        help="CPU thread counts to compare, the same for both libraries (torch and BLAS); "
                             "default: 1 and all cores (what each library uses out of the box)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-classes", type=int, default=40)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--n-max", type=int, default=500)
    args = parser.parse_args()

    bench = make_synthetic_benchmark(seed=args.seed, num_classes=args.num_classes, dim=args.dim, n_max=args.n_max)
    for threads in args.threads:
        run(bench, threads, args)
        print()


def run(bench, threads: int, args: argparse.Namespace) -> None:
    """Fit both libraries with `threads` CPU threads each and print one table."""
    torch.set_num_threads(threads)
    train, test = bench.train, bench.test
    x = train.features / np.linalg.norm(train.features, axis=1, keepdims=True)
    x_test = test.features / np.linalg.norm(test.features, axis=1, keepdims=True)
    counts = train.class_counts()

    rows = []
    with threadpool_limits(limits=threads):
        sk_cfgs = {"sklearn LogisticRegression": {}, "sklearn LR class_weight=balanced": {"class_weight": "balanced"}}
        for name, extra in sk_cfgs.items():
            model, seconds = timed(lambda extra=extra: LogisticRegression(
                C=1.0, solver="lbfgs", max_iter=1000, tol=1e-4, **extra).fit(x, train.labels), args.repeats)
            obj = objective(model.coef_, model.intercept_, x, train.labels) if not extra else None
            rows.append((name, model.decision_function(x_test), seconds, obj, int(model.n_iter_[0])))
        for name, cfg in {
            "longtail probe CE (L-BFGS)": ProbeConfig(method="linear", loss="ce", device=args.device),
            "longtail probe LA tau=1 (L-BFGS)": ProbeConfig(method="linear", loss="la", device=args.device),
        }.items():
            probe, seconds = timed(lambda cfg=cfg: fit_probe(train, cfg), args.repeats)
            w, b = probe.head.weight.detach().numpy(), probe.head.bias.detach().numpy()
            obj = objective(w, b, x, train.labels) if cfg.loss == "ce" else None
            rows.append((name, probe.logits(test.features), seconds, obj, probe.info["train"]["iterations"]))

    device = ProbeConfig(device=args.device)
    from longtail.device import resolve_device

    print(f"synthetic_features seed {args.seed}: C={train.num_classes}, d={train.dim}, "
          f"N_train={train.num_samples} (IR {counts.max() / counts.min():.0f}), N_test={test.num_samples}; "
          f"threads={threads}, probe device={resolve_device(device.device)}, repeats={args.repeats}")
    print(f"Bayes-optimal balanced accuracy: {bench.bayes_balanced_accuracy:.4f} "
          f"+- {bench.bayes_standard_error:.4f} (Monte Carlo, {bench.bayes_samples} samples)")
    base_time = rows[0][2]
    header = f"{'method':36s} {'bal.acc':>7s} {'many':>6s} {'med':>6s} {'few':>6s} {'fit s':>8s} {'iters':>5s} {'objective':>10s} {'time/sk':>7s}"
    print(header)
    print("-" * len(header))
    for name, logits, seconds, obj, iters in rows:
        m = evaluate(logits, test.labels, counts)
        fmt = lambda v: "   n/a" if v is None else f"{v:6.3f}"  # noqa: E731
        print(f"{name:36s} {m['class_mean']:7.4f} {fmt(m['many'])} {fmt(m['medium'])} {fmt(m['few'])} "
              f"{seconds:8.4f} {iters:5d} {'' if obj is None else f'{obj:.6f}':>10s} {seconds / base_time:7.3f}")


if __name__ == "__main__":
    main()
