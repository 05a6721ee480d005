"""Probe fit time: longtail's L-BFGS probe vs scikit-learn LogisticRegression(lbfgs), same objective,
same stopping rule, same threads, measured in the same run.

Data (one of):
  default        the `synthetic_features` benchmark (vMF mixtures, IR 100, known Bayes limit);
                 --num-classes 200 --dim 1280 --n-max 500 gives the 21.5k x 1280 x 200 shape;
  --tiny         Tiny-ImageNet-100-LT (IR 100, 10,847 images), EfficientNet-Lite0 features at
                 128 px, the draw of benchmarks/real_tiny100_lt.py, read from the feature cache;
  --features F   any feature file (.npz / .safetensors); --lt IR draws a seeded exponential
                 long tail from it (n_max = its smallest class) first.

What is compared, and why the comparison is fair:
- Objective. scikit-learn (>= 1.2) minimises, for lbfgs, C * sum_i w_i CE_i + ||W||^2 / 2 divided
  by sum_i w_i (`_logistic_regression_path`: l2_reg_strength = 1 / (C * sw_sum)), i.e. mean CE +
  ||W||^2 / (2 C N), bias unpenalised. Ours with l2 = 1/N (C = 1, the default) is the same
  function; class_weight="balanced" equals our `weighted-ce` (inverse; weights average 1).
- Data and precision. The same L2-normalised float32 rows go to both; scikit-learn keeps float32
  input in float32 (its loss and gradient run in float32, the L-BFGS-B state in float64).
- Stopping rule. Both stop when max |gradient of that mean objective| <= tol (scipy L-BFGS-B's
  gtol: the projected gradient, no bounds here; ours: torch.optim.LBFGS's test). The other
  exits differ: scipy stops on a relative objective change <= 64 eps, ours on an absolute change
  or step < 1e-9. With tol = 1e-4 both stop before the optimum at different points, so the
  table also prints, for every fit, the objective reached and max |gradient| (both in float64
  by one formula, `objective`): a faster fit that stopped at a worse objective would show.
  Pass `--tols 1e-4 1e-6` to repeat the race closer to the optimum.
- Threads. torch.set_num_threads(n) and threadpoolctl(n) (BLAS and OpenMP) for both, n = 2 by
  default (--threads 1 2 ...).
- Timing. Every fit once untimed (warm-up), then --repeats rounds in which every row is fitted
  once, interleaved, so a busy machine slows all rows alike; median per row; time/sk = row /
  scikit-learn CE. The cosine rows fit another objective (cosine head, l2 = 0): their ratio is
  time against the same peer, not the same problem.

    python benchmarks/probe_vs_sklearn.py [--tiny | --features F [--lt 100]] [--threads 2]
        [--repeats 3] [--tols 1e-4] [--num-classes 40] [--dim 64] [--n-max 500] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.special import logsumexp, softmax
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from longtail.data.features import FeatureSet, load_features
from longtail.data.profiles import exponential_profile, subsample_per_class
from longtail.data.synthetic_features import make_synthetic_benchmark
from longtail.eval.metrics import evaluate
from longtail.methods.probe import ProbeConfig, fit_probe


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--tiny / --features / --lt / synthetic shape options (shared with benchmarks/oversampling.py)."""
    parser.add_argument("--tiny", action="store_true", help="Tiny-ImageNet-100-LT EfficientNet-Lite0 features")
    parser.add_argument("--tiny-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"
                                                   / "tiny-imagenet-100a.zip"))
    parser.add_argument("--features", help="a feature file (.npz / .safetensors) instead of synthetic data")
    parser.add_argument("--lt", type=float, help="with --features: draw an exponential long tail with this IR")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-classes", type=int, default=40)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--n-max", type=int, default=500)


def tiny100_lt_train(root: str, seed: int = 0) -> FeatureSet:
    """The LT training set of benchmarks/real_tiny100_lt.py (IR 100, val 10/class) from the feature cache."""
    import real_tiny100_lt as tiny  # benchmarks/ is on sys.path when a benchmark runs as a script

    from longtail.data.open_images import open_images
    from longtail.models.backbone import load_backbone
    from longtail.models.features import extract_features

    wnids = tiny.class_order(root)
    base = open_images(root, split="train", class_names=wnids)
    lt_idx, _, _ = tiny.lt_split(base.labels, 100.0, seed, 10)
    backbone = load_backbone("efficientnet_lite0", image_size=128, crop_padding=0)
    train_all = extract_features(backbone, base, batch_size=128, num_workers=2, prototypes="imagenet", progress=False)
    return tiny.take(train_all, lt_idx, "tiny100_lt_ir100")


def load_training_set(args: argparse.Namespace) -> tuple[FeatureSet, FeatureSet | None, str]:
    """(train, test or None, description) for the data options of `add_data_arguments`."""
    if args.tiny:
        train = tiny100_lt_train(args.tiny_root, args.seed)
        return train, None, "Tiny-ImageNet-100-LT (IR 100), EfficientNet-Lite0 128 px"
    if args.features:
        data = load_features(args.features)
        if args.lt:
            counts = np.bincount(data.labels)
            wanted = np.empty_like(counts)
            wanted[np.random.default_rng(args.seed).permutation(counts.size)] = exponential_profile(
                int(counts.min()), counts.size, args.lt)
            idx = subsample_per_class(data.labels, wanted, args.seed)
            data = replace(data, features=data.features[idx], labels=data.labels[idx])
        return data, None, f"{args.features}" + (f", LT draw IR {args.lt:g}" if args.lt else "")
    bench = make_synthetic_benchmark(seed=args.seed, num_classes=args.num_classes, dim=args.dim,
                                     n_max=args.n_max, bayes_per_class=1)
    return bench.train, bench.test, f"synthetic_features seed {args.seed}"


def objective(weight: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray, c: float = 1.0,
              sample_weight: np.ndarray | None = None) -> tuple[float, float]:
    """(scikit-learn's lbfgs objective / sum w, max |its gradient| over W and b), in float64."""
    x64, w64 = x.astype(np.float64), weight.astype(np.float64)
    sw = np.ones(y.size) if sample_weight is None else sample_weight
    z = x64 @ w64.T + bias
    ce = logsumexp(z, axis=1) - z[np.arange(y.size), y]
    total = sw.sum()
    residual = softmax(z, axis=1)
    residual[np.arange(y.size), y] -= 1.0
    residual *= (sw / total)[:, None]
    grad_w = residual.T @ x64 + w64 / (c * total)
    grad = max(np.abs(grad_w).max(), np.abs(residual.sum(0)).max())
    return float((sw * ce).sum() / total + 0.5 / (c * total) * np.sum(w64 ** 2)), float(grad)


def race(fits: dict, repeats: int) -> dict[str, tuple[object, float]]:
    """Warm up every fit, then `repeats` interleaved rounds; (last result, median seconds) per name."""
    results = {name: fn() for name, fn in fits.items()}
    times: dict[str, list[float]] = {name: [] for name in fits}
    for _ in range(repeats):
        for name, fn in fits.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: (results[name], statistics.median(times[name])) for name in fits}


def run(train: FeatureSet, test: FeatureSet | None, threads: int, tol: float, args: argparse.Namespace) -> None:
    """Fit every row with `threads` CPU threads and print one table."""
    torch.set_num_threads(threads)
    x = (train.features / np.linalg.norm(train.features, axis=1, keepdims=True)).astype(np.float32)
    y = np.asarray(train.labels)
    counts = np.bincount(y, minlength=train.num_classes)
    balanced = (y.size / (counts.size * counts))[y]  # class_weight="balanced" as sample weights

    def sk(**extra):
        return lambda: LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000, tol=tol, **extra).fit(x, y)

    def ours(**cfg):
        return lambda: fit_probe(train, ProbeConfig(tol=tol, device=args.device, **cfg))

    fits = {"scikit-learn LR, CE": sk(),
            "scikit-learn LR, class_weight=balanced": sk(class_weight="balanced"),
            "longtail linear, CE": ours(method="linear", loss="ce"),
            "longtail linear, weighted-ce (= balanced)": ours(method="linear", loss="weighted-ce"),
            "longtail linear, LA": ours(method="linear", loss="la"),
            "longtail cosine, LA (default probe)": ours(method="cosine", loss="la")}
    with threadpool_limits(limits=threads):
        results = race(fits, args.repeats)
    base = results["scikit-learn LR, CE"][1]
    print(f"threads={threads}, tol={tol:g}, repeats={args.repeats} (median, interleaved)")
    header = (f"{'fit':44s} {'seconds':>8s} {'time/sk':>7s} {'iters':>5s} {'objective':>12s} "
              f"{'max|grad|':>9s} {'bal.acc':>7s}")
    print(header)
    print("-" * len(header))
    for name, (model, seconds) in results.items():
        if isinstance(model, LogisticRegression):
            w, b, iters = model.coef_, model.intercept_, int(model.n_iter_[0])
            logits = None if test is None else model.decision_function(test.features / np.linalg.norm(
                test.features, axis=1, keepdims=True))
        else:
            w, b = model.head.weight.detach().numpy(), model.head.bias
            b = None if b is None else b.detach().numpy()
            iters = model.info["train"]["iterations"]
            logits = None if test is None else model.logits(test.features)
        same_problem = b is not None and ("CE" in name or "balanced" in name)
        obj = objective(w, b, x, y, sample_weight=balanced if "balanced" in name else None) if same_problem else None
        acc = "" if logits is None else f"{evaluate(logits, test.labels, counts)['class_mean']:.4f}"
        print(f"{name:44s} {seconds:8.3f} {seconds / base:7.3f} {iters:5d} "
              f"{'' if obj is None else f'{obj[0]:.7f}':>12s} {'' if obj is None else f'{obj[1]:.1e}':>9s} {acc:>7s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="probe device (cpu: the same hardware as scikit-learn)")
    args = parser.parse_args()
    train, test, what = load_training_set(args)
    counts = train.class_counts()
    print(f"{what}: C={train.num_classes}, d={train.dim}, N_train={train.num_samples} "
          f"(n_max {counts.max()}, n_min {counts.min()}){'' if test is None else f', N_test={test.num_samples}'}")
    for threads in args.threads:
        for tol in args.tols:
            run(train, test, threads, tol, args)
            print()


if __name__ == "__main__":
    main()
