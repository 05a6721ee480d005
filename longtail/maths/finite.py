"""One-pass finiteness test for large float tensors."""

from __future__ import annotations

import torch
from torch import Tensor


def all_finite(x: Tensor) -> bool:
    """True when no entry of x is NaN or +-inf.

    One float64 reduction instead of `torch.isfinite(x).all()` (a bool tensor the size of x,
    then a second pass): any NaN or inf makes the sum NaN or inf, and a float64 sum of float32
    or float16 entries cannot overflow (|sum| <= 3.4e38 * numel). float64 input falls back to
    isfinite, where a finite sum could overflow.
    """
    if not x.is_floating_point():
        return True
    if x.dtype == torch.float64:
        return bool(torch.isfinite(x).all())
    return bool(torch.isfinite(x.sum(dtype=torch.float64)))


def as_tensor(values) -> Tensor:
    """torch.as_tensor without a copy, also of read-only arrays (a memory-mapped feature file):
    torch warns that writing to such a tensor is undefined; callers here only read it."""
    if torch.is_tensor(values):
        return values
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(np.asarray(values))
