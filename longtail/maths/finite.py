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
