"""In-class nearest neighbours (blockwise, never an n x n matrix) and the local vMF
concentration kappa_i of every training embedding (docs/methods.md §4.3, §4.4 step 2).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longtail.errors import DataError
from longtail.maths.vmf import banerjee_kappa

# Similarity entries per block (rows x class size): 2^24 floats = 64 MiB in float32.
BLOCK_ELEMENTS = 1 << 24
ROW_CHUNK = 4096  # rows per float64 chunk when turning neighbours into kappa (~4 x 25 MiB at d = 768)


def _unit64(x: Tensor) -> Tensor:
    return torch.nn.functional.normalize(x.double(), dim=1, eps=1e-12)


def class_slices(labels: Tensor, num_classes: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(order, starts, counts): `order` sorts rows by class (stable), class c is order[starts[c]:starts[c]+counts[c]]."""
    labels = labels.long()
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    return order, starts, counts


def in_class_knn(
    features: Tensor, labels: Tensor, k: int, block_elements: int = BLOCK_ELEMENTS,
    classes: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The k most cosine-similar other rows of the same class, for every row.

    Returns (index (n, k) long, similarity (n, k)); rows of classes with fewer than k+1
    samples are padded with index -1 and similarity NaN. Works class by class in row blocks
    of at most `block_elements` similarities, so big classes never build an n_c x n_c matrix.
    `classes` (bool per class) restricts the search to those classes (other rows stay padded).
    """
    if k < 1:
        raise DataError(f"number of neighbours k must be >= 1, got {k}")
    x = features  # normalised one class at a time below (row-wise: the same values, no N x d copy)
    n = x.shape[0]
    index = torch.full((n, k), -1, dtype=torch.long, device=x.device)
    sims = torch.full((n, k), float("nan"), dtype=x.dtype, device=x.device)
    order, starts, counts = class_slices(labels, None if classes is None else classes.numel())
    wanted = [True] * counts.numel() if classes is None else classes.tolist()
    # Loop over classes and row blocks (not samples): each block is one matmul + top-k.
    for start, count, want in zip(starts.tolist(), counts.tolist(), wanted):
        kk = min(k, count - 1)
        if kk < 1 or not want:
            continue
        members = order[start : start + count]
        xc = torch.nn.functional.normalize(x[members], dim=1, eps=1e-12)
        rows_per_block = max(1, block_elements // count)
        for b0 in range(0, count, rows_per_block):
            b1 = min(count, b0 + rows_per_block)
            s = xc[b0:b1] @ xc.T
            s[torch.arange(b1 - b0, device=x.device), torch.arange(b0, b1, device=x.device)] = -float("inf")
            top_s, top_i = torch.topk(s, kk, dim=1)
            rows = members[b0:b1]
            index[rows, :kk] = members[top_i]
            sims[rows, :kk] = top_s
    return index, sims


def local_concentration(
    features: Tensor,
    labels: Tensor,
    k: int = 1,
    min_kappa: float = 1e-3,
    max_kappa: float = 1e7,
    block_elements: int = BLOCK_ELEMENTS,
) -> Tensor:
    """kappa_i per row (float64) from the two-sample (k+1-sample) Banerjee fit to u_i and its
    in-class nearest neighbours: r_i = ||u_i + sum_j u_j|| / (k+1), kappa_i = r(d - r^2)/(1 - r^2).

    Duplicates (r -> 1) get `max_kappa`; samples without a neighbour (singleton classes) get
    the median kappa of all other samples. Classes smaller than k+1 use the neighbours they have.
    """
    if features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise DataError(
            f"features {tuple(features.shape)} and labels {tuple(labels.shape)} do not match"
        )
    d = features.shape[1]
    index, sims = in_class_knn(features, labels, k, block_elements)
    valid = index >= 0
    n_valid = valid.sum(1)
    # r in float64 from the gathered unit vectors, in row chunks (an n x d float64 copy can be GBs).
    r = torch.empty(features.shape[0], dtype=torch.float64, device=features.device)
    for rows in torch.arange(features.shape[0], device=features.device).split(ROW_CHUNK):
        total = _unit64(features[rows])
        for j in range(k):  # k is small: one gather per neighbour rank
            nb = index[rows, j]
            total += torch.where(valid[rows, j, None], _unit64(features[nb.clamp_min(0)]), 0.0)
        r[rows] = (total.norm(dim=1) / (n_valid[rows] + 1).double()).clamp(0.0, 1.0)
    kappa = banerjee_kappa(r, d, max_kappa=max_kappa).clamp_min(min_kappa)
    lonely = n_valid == 0
    if lonely.any():
        if lonely.all():
            raise DataError("cannot estimate vMF concentration: every class has a single sample")
        kappa[lonely] = kappa[~lonely].median()
    return kappa
