"""vMF sampling throughput: longtail's batched Wood sampler vs scipy.stats.vonmises_fisher, same run.

Draws --samples unit vectors in R^--dim from --groups distinct (mu, kappa) pairs (kappa
log-uniform in [--kappa-min, --kappa-max]): ours in one call with a per-row mu and kappa,
scipy with one `rvs` call per pair (it takes a single mu and kappa). Prints samples/s of
each, the ratio, and the mean cosine to mu of both (they must agree: same distribution).
Ours: median of --repeats runs after one untimed warm-up; scipy (slow: one QR of a d x d
matrix per call): one timed run after a one-call warm-up.

    python benchmarks/vmf_sampler.py [--samples 100000] [--dim 512] [--groups 1000]
        [--repeats 3] [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from scipy import stats

from longtail.device import resolve_device
from longtail.maths.vmf import mean_resultant_length, sample_vmf


def median_time(fn, repeats: int, warm_up=None) -> tuple[float, object]:
    result = (warm_up or fn)()  # warm-up, not timed
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--groups", type=int, default=1000, help="distinct (mu, kappa) pairs")
    p.add_argument("--kappa-min", type=float, default=100.0)
    p.add_argument("--kappa-max", type=float, default=1e5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rng = np.random.default_rng(0)
    per_group = args.samples // args.groups
    mu = rng.normal(size=(args.groups, args.dim))
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    kappa = np.exp(rng.uniform(np.log(args.kappa_min), np.log(args.kappa_max), args.groups))

    mu_rows = torch.from_numpy(mu).float().to(device).repeat_interleave(per_group, 0)
    kappa_rows = torch.from_numpy(kappa).to(device).repeat_interleave(per_group)

    def ours():
        return sample_vmf(mu_rows, kappa_rows, torch.Generator(device=device).manual_seed(1))

    def theirs():
        gen = np.random.default_rng(1)
        return np.concatenate([stats.vonmises_fisher(m, k).rvs(per_group, random_state=gen)
                               for m, k in zip(mu, kappa)])

    t_ours, x_ours = median_time(ours, args.repeats)
    t_scipy, x_scipy = median_time(theirs, 1, warm_up=lambda: stats.vonmises_fisher(mu[0], kappa[0]).rvs(2))
    n = per_group * args.groups
    cos_ours = (x_ours.double().cpu().numpy() * np.repeat(mu, per_group, 0)).sum(1).mean()
    cos_scipy = (x_scipy * np.repeat(mu, per_group, 0)).sum(1).mean()
    expected = float(mean_resultant_length(args.dim, torch.from_numpy(kappa)).mean())
    print(f"vMF sampling: {n} samples, d={args.dim}, {args.groups} distinct (mu, kappa), "
          f"kappa in [{args.kappa_min:g}, {args.kappa_max:g}], device={device}, torch threads={torch.get_num_threads()}")
    print(f"  longtail sample_vmf (one call)   : {t_ours:8.3f} s  {n / t_ours:12,.0f} samples/s")
    print(f"  scipy vonmises_fisher ({args.groups} calls): {t_scipy:8.3f} s  {n / t_scipy:12,.0f} samples/s")
    print(f"  speed-up (scipy time / ours)     : {t_scipy / t_ours:8.1f}x")
    print(f"  mean cosine to mu: ours {cos_ours:.5f}, scipy {cos_scipy:.5f}, exact A_d {expected:.5f}")


if __name__ == "__main__":
    main()
