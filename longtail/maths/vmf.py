"""Von Mises-Fisher maths in torch: stable log-normaliser, A_d(kappa), Banerjee's kappa
estimate and Wood's (1994) sampler vectorised over a batch of (mu, kappa) pairs
(docs/methods.md §4.3-4.6).

In the core layer because both the `synthetic_features` benchmark (data) and the latent
oversamplers (methods) use it. Written by hand because no library covers it: torch has no
Bessel I_v of arbitrary order, and `scipy.stats.vonmises_fisher` draws from one (mu, kappa)
per call on the CPU only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import ive
from torch import Tensor

from longtail.errors import DataError

# ive values below this are treated as underflowed (subnormal, imprecise) -> Debye expansion.
_IVE_TINY = 1e-280
# Largest number of rejection rounds before we call the sampler stuck (acceptance is > 0.5).
_MAX_ROUNDS = 1000
# Entries per row block of sample_vmf's reflection step (its only temporaries: 16 MiB in float32).
_BLOCK_ELEMENTS = 1 << 22


def _as_f64(x: Tensor | float, device: torch.device | None = None) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64, device=device)


def _log_ive_debye(v: float, x: Tensor) -> Tensor:
    """log(I_v(x) e^-x) by the uniform asymptotic (Debye) expansion, 4 terms (DLMF 10.41.3).

    Relative error O(v^-5); used only where scipy's `ive` underflows (large order v).
    """
    z = x / v
    s = torch.sqrt(1.0 + z * z)
    t = 1.0 / s
    t2 = t * t
    u1 = t * (3.0 - 5.0 * t2) / 24.0
    u2 = t2 * (81.0 + t2 * (-462.0 + 385.0 * t2)) / 1152.0
    u3 = t * t2 * (30375.0 + t2 * (-369603.0 + t2 * (765765.0 - 425425.0 * t2))) / 414720.0
    u4 = t2 * t2 * (
        4465125.0 + t2 * (-94121676.0 + t2 * (349922430.0 + t2 * (-446185740.0 + 185910725.0 * t2)))
    ) / 39813120.0
    series = u1 / v + u2 / v**2 + u3 / v**3 + u4 / v**4
    # v*eta - x, with eta = s + log(z / (1 + s)), rearranged to avoid cancellation for z >> 1.
    exponent = v / (s + z) - v * torch.log1p((1.0 + 1.0 / (s + z)) / z)
    return exponent - 0.5 * math.log(2.0 * math.pi * v) - 0.5 * torch.log(s) + torch.log1p(series)


def log_ive(v: float, x: Tensor) -> Tensor:
    """log of the exponentially scaled Bessel function, log I_v(x) - x, float64, for x > 0.

    scipy.special.ive where it is representable, the Debye expansion where it underflows
    (e.g. order 2047 at small x); finite for v up to ~1e4 and x up to 1e7 and beyond.
    """
    x = _as_f64(x)
    x_np = np.asarray(x.detach().cpu().numpy())
    with np.errstate(all="ignore"):
        scaled = np.asarray(ive(v, x_np))
    ok = np.isfinite(scaled) & (scaled > _IVE_TINY)
    out = torch.as_tensor(np.log(np.where(ok, scaled, 1.0)), device=x.device)
    if v > 0 and not ok.all():
        bad = torch.as_tensor(~ok, device=x.device)
        out = torch.where(bad, _log_ive_debye(v, x.clamp_min(1e-300)), out)
    return out


def log_bessel_iv(v: float, x: Tensor) -> Tensor:
    """log I_v(x) in float64 for x > 0 (overflow-free: log ive + x)."""
    x = _as_f64(x)
    return log_ive(v, x) + x


def log_vmf_normalizer(d: int, kappa: Tensor) -> Tensor:
    """log C_d(kappa) = (d/2-1) log kappa - (d/2) log 2pi - log I_(d/2-1)(kappa), float64.

    kappa = 0 gives the uniform density's -log(surface area of S^(d-1)).
    """
    _check_dim(d)
    kappa = _as_f64(kappa)
    v = d / 2.0 - 1.0
    k = kappa.clamp_min(1e-300)
    log_c = v * torch.log(k) - (d / 2.0) * math.log(2.0 * math.pi) - log_bessel_iv(v, k)
    uniform = math.lgamma(d / 2.0) - math.log(2.0) - (d / 2.0) * math.log(math.pi)
    return torch.where(kappa > 0, log_c, torch.full_like(log_c, uniform))


def mean_resultant_length(d: int, kappa: Tensor) -> Tensor:
    """A_d(kappa) = E[mu . x] = I_(d/2)(kappa) / I_(d/2-1)(kappa), float64 (0 at kappa = 0)."""
    _check_dim(d)
    kappa = _as_f64(kappa)
    k = kappa.clamp_min(1e-300)
    ratio = torch.exp(log_ive(d / 2.0, k) - log_ive(d / 2.0 - 1.0, k))
    return torch.where(kappa > 0, ratio, torch.zeros_like(ratio))


def banerjee_kappa(r_bar: Tensor | float, d: int, max_kappa: float = 1e7) -> Tensor:
    """Banerjee et al. (2005): kappa_hat = r (d - r^2) / (1 - r^2), capped at `max_kappa`."""
    r = _as_f64(r_bar)
    denom = (1.0 - r) * (1.0 + r)  # 1 - r^2 without cancellation near r = 1
    kappa = torch.where(denom > 0, r * (d - r * r) / denom.clamp_min(1e-300), torch.full_like(r, max_kappa))
    return kappa.clamp(max=max_kappa)


def _check_dim(d: int) -> None:
    if d < 2:
        raise DataError(f"vMF needs dimension d >= 2, got d={d}")


def _sample_w(kappa: Tensor, d: int, generator: torch.Generator | None) -> Tensor:
    """Wood's rejection step: 1 - W (W = mu . x) per row, float64; loops only over rejected rows.

    Works with 1 - W = 2bZ / (1 - (1-b)Z) and 1 - x0 = 2b / (1+b) so that kappa up to 1e12
    keeps full precision; kappa = inf gives W = 1 exactly.
    """
    m1 = float(d - 1)
    b = m1 / (2.0 * kappa + torch.sqrt(4.0 * kappa * kappa + m1 * m1))  # stable form, step 1
    b = torch.where(torch.isinf(kappa), torch.zeros_like(b), b)
    one_minus_x0 = 2.0 * b / (1.0 + b)
    x0 = 1.0 - one_minus_x0
    log_1m_x0sq = torch.log(one_minus_x0 * (1.0 + x0))
    out = torch.empty_like(kappa)
    pending = torch.arange(kappa.numel(), device=kappa.device)
    alpha = torch.full((kappa.numel(),), m1 / 2.0, dtype=torch.float64, device=kappa.device)
    for _ in range(_MAX_ROUNDS):
        n = pending.numel()
        if n == 0:
            return out
        bp, kp, x0p, om_x0p = b[pending], kappa[pending], x0[pending], one_minus_x0[pending]
        g1 = torch._standard_gamma(alpha[:n], generator=generator)  # Beta(a, a) = G1 / (G1 + G2)
        g2 = torch._standard_gamma(alpha[:n], generator=generator)
        z = g1 / (g1 + g2)
        u = torch.rand(n, dtype=torch.float64, device=kappa.device, generator=generator)
        one_minus_w = 2.0 * bp * z / (1.0 - (1.0 - bp) * z)
        # kappa W + (m-1) log(1 - x0 W) - c, with c = kappa x0 + (m-1) log(1 - x0^2)
        lhs = kp * (om_x0p - one_minus_w) + m1 * (
            torch.log(om_x0p + x0p * one_minus_w) - log_1m_x0sq[pending]
        )
        accept = (lhs >= torch.log(u)) | (bp == 0)
        out[pending[accept]] = one_minus_w[accept]
        pending = pending[~accept]
    raise RuntimeError(f"vMF rejection sampler did not finish in {_MAX_ROUNDS} rounds")


def sample_vmf(mu: Tensor, kappa: Tensor | float, generator: torch.Generator | None = None) -> Tensor:
    """Draw one sample x_i ~ vMF(mu_i, kappa_i) per row: mu (n, d), kappa (n,) or scalar -> (n, d).

    Rows of mu are normalised; output has mu's dtype/device and unit-norm rows. Draws use
    `generator` (on mu's device) so results are reproducible.
    """
    if mu.ndim != 2:
        raise DataError(f"sample_vmf expects mu of shape (n, d), got {tuple(mu.shape)}")
    n, d = mu.shape
    _check_dim(d)
    dtype = mu.dtype if mu.dtype.is_floating_point else torch.float32
    mu = mu.to(dtype)
    kappa = _as_f64(kappa, mu.device)
    if kappa.ndim == 0:
        kappa = kappa.expand(n).contiguous()
    if kappa.shape != (n,):
        raise DataError(f"kappa must have shape ({n},), got {tuple(kappa.shape)}")
    if torch.isnan(kappa).any() or (kappa < 0).any():
        raise DataError("kappa must be non-negative and not NaN")
    if n == 0:
        return mu.clone()
    one_minus_w = _sample_w(kappa, d, generator)
    # Steps 5-6, in place: y = (sqrt(1 - W^2) V, W), V uniform on S^(d-2); mean direction e_d.
    y = torch.randn(n, d, dtype=dtype, device=mu.device, generator=generator)
    radial = torch.sqrt(one_minus_w * (2.0 - one_minus_w))
    y[:, :-1] *= (radial / y[:, :-1].norm(dim=1).double().clamp_min(1e-30)).to(dtype)[:, None]
    y[:, -1] = (1.0 - one_minus_w).to(dtype)
    # Step 7: Householder reflection H = I - 2 h h^T, h = (e_d - m) / ||e_d - m||, m = mu/||mu||,
    # without forming h: H y = y + c (m - e_d), c = (y_d - y.m) / (1 - m_d); identity at m = e_d.
    # In place on y, row block by row block: no n x d temporaries besides y (the output) itself.
    mu_norm = mu.norm(dim=1).double().clamp_min(1e-30)
    m_d = mu[:, -1].double() / mu_norm
    rows = max(1, _BLOCK_ELEMENTS // d)
    for r0 in range(0, n, rows):
        yb, mb, nb = y[r0 : r0 + rows], mu[r0 : r0 + rows], mu_norm[r0 : r0 + rows]
        y_dot_m = (yb * mb).sum(1).double() / nb
        gap = 1.0 - m_d[r0 : r0 + rows]
        c = torch.where(gap > 1e-12, (yb[:, -1].double() - y_dot_m) / gap.clamp_min(1e-12), torch.zeros_like(gap))
        yb.addcmul_(mb, (c / nb).to(dtype)[:, None])
        yb[:, -1] -= c.to(dtype)
        yb.div_(yb.norm(dim=1, keepdim=True).clamp_min(1e-30))
    return y
