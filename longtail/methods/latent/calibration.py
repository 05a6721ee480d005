"""Distribution calibration (Yang, Liu & Xu, ICLR 2021, "Free Lunch for Few-shot Learning:
Distribution Calibration") adapted to long tails (docs/methods.md §11).

Recipe, in Tukey space z = x^lambda (non-negative features; with negative entries the
oversampler skips the transform unless asked for the odd extension sign(x) |x|^lambda):
  base ("head") classes i: mean mu_i, covariance Sigma_i (np.cov, ddof 1);
  query x~ (a real tail row, or its class mean): S = its k nearest head means (Euclidean);
  mu' = (sum_{i in S} mu_i + x~) / (k + 1),   Sigma' = sum_{i in S} Sigma_i / k + a,
  with a added to EVERY entry of the matrix (what the authors' public code does, `cov + alpha`;
  a = alpha, or alpha times the mean per-dimension head variance when `relative`);
  synthetic rows ~ N(mu', Sigma'), mapped back with the inverse transform.

No d x d covariance is built or factorised to sample: a sum of independent Gaussians is
Gaussian, so N(0, Sigma') = sum_{i in S} N(0, Sigma_i / k) + sqrt(a) w 1 (w ~ N(0, 1)), and
N(0, Sigma_i) is drawn as R_i^T u with a root R_i^T R_i = Sigma_i: the centred class rows over
sqrt(n_i - 1) when n_i <= d (exact, rank-deficient covariances need no jitter), else the
eigen-root of Sigma_i (d x d). Memory is O(n d) whatever the number of head classes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from longtail.errors import ConfigError, DataError


def tukey(x: Tensor, lam: float) -> Tensor:
    """Tukey's ladder of powers, extended oddly to negative entries: sign(x) |x|^lambda.

    Equals the paper's x^lambda on non-negative features (pooled ReLU features). On negative
    entries the odd extension keeps the map monotone and exactly invertible (no NaNs, no
    data-dependent shift); it also maps the synthetic rows, which may leave x >= 0, back.
    """
    return x if lam == 1 else torch.sign(x) * x.abs().pow(lam)


def inverse_tukey(z: Tensor, lam: float) -> Tensor:
    """Inverse of `tukey`: sign(z) |z|^(1/lambda)."""
    return z if lam == 1 else torch.sign(z) * z.abs().pow(1.0 / lam)


def head_mask(counts: Tensor, threshold: int, k: int) -> Tensor:
    """Head (base) classes: n_c > threshold; one-line DataError when fewer than k exist."""
    head = counts > threshold
    if int(head.sum()) < k:
        raise DataError(
            f"distribution-calibration needs at least k={k} head classes (n_c > {threshold}), "
            f"found {int(head.sum())}: lower head_threshold or k"
        )
    return head


def class_means(z: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Mean row of every class (C, d); classes without rows get zeros."""
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).to(z.dtype)
    return torch.zeros(num_classes, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, labels, z) / counts[:, None]


def nearest_heads(queries: Tensor, head_means: Tensor, k: int) -> Tensor:
    """(m, k) indices (into head_means) of the k nearest head means of every query, nearest first."""
    return torch.cdist(queries, head_means).topk(k, dim=1, largest=False).indices


def calibrated_mean(queries: Tensor, head_means: Tensor, nearest: Tensor) -> Tensor:
    """mu' = (sum_{i in S} mu_i + x~) / (k + 1) for every query (m, d)."""
    # embedding_bag sums the k gathered rows without the (m, k, d) intermediate of head_means[nearest]
    summed = torch.nn.functional.embedding_bag(nearest, head_means, mode="sum")
    return (summed + queries) / (nearest.shape[1] + 1)


def calibrated_covariance(head_covs: Tensor, nearest: Tensor, alpha: float) -> Tensor:
    """Sigma' = sum_{i in S} Sigma_i / k + alpha (every entry), (m, d, d): the formula made
    explicit for small d and the tests; sampling never builds it."""
    return head_covs[nearest].mean(1) + alpha


def covariance_root(rows: Tensor) -> Tensor:
    """R with R^T R = cov(rows) (ddof 1): centred rows / sqrt(n - 1) if n <= d, else the eigen-root."""
    n, d = rows.shape
    centred = (rows - rows.mean(0)) / math.sqrt(n - 1)
    if n <= d:
        return centred
    values, vectors = torch.linalg.eigh(centred.T @ centred)
    return (vectors * values.clamp_min(0).sqrt()).T


def mean_head_variance(z: Tensor, labels: Tensor, head_classes: Tensor) -> float:
    """Mean per-dimension variance (ddof 1) over the head classes: trace(Sigma_i) / d averaged."""
    total = 0.0
    for c in head_classes.tolist():
        rows = z[labels == c]
        total += float(rows.var(0, unbiased=True).mean())
    return total / max(1, head_classes.numel())


def sample_calibrated(
    z: Tensor, labels: Tensor, head_classes: Tensor, queries: Tensor, k: int, alpha: float,
    generator: torch.Generator,
) -> Tensor:
    """One draw from N(mu', Sigma') per query row (all in Tukey space), shape (m, d).

    `head_classes` holds the head class indices; `alpha` is the absolute value added to every
    covariance entry. The loop runs over head classes (not samples): one matmul draws the
    Sigma_i / k part of every query whose neighbourhood S contains head class i.
    """
    if k < 1 or k > head_classes.numel():
        raise ConfigError(f"k must be in [1, {head_classes.numel()}] (the number of head classes), got {k}")
    means = class_means(z, labels, int(labels.max()) + 1)[head_classes]
    nearest = nearest_heads(queries, means, k)
    out = calibrated_mean(queries, means, nearest)
    for slot, c in enumerate(head_classes.tolist()):
        rows = (nearest == slot).any(1).nonzero()[:, 0]
        if rows.numel() == 0:
            continue
        root = covariance_root(z[labels == c])
        u = torch.randn(rows.numel(), root.shape[0], generator=generator, device=z.device, dtype=z.dtype)
        out.index_add_(0, rows, (u @ root) / math.sqrt(k))
    if alpha > 0:  # + alpha on every entry of Sigma' = a shared N(0, alpha) shift of all coordinates
        w = torch.randn(queries.shape[0], 1, generator=generator, device=z.device, dtype=z.dtype)
        out += math.sqrt(alpha) * w
    return out
