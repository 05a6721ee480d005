"""vMF maths (longtail.maths.vmf): reference values (docs/methods.md §4.7), scipy and mpmath
agreement, sampler distribution."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import stats

from longtail.errors import DataError
from longtail.maths.vmf import (
    _log_ive_debye,
    banerjee_kappa,
    log_bessel_iv,
    log_ive,
    log_vmf_normalizer,
    mean_resultant_length,
    sample_vmf,
)

F64 = torch.float64
# (d, kappa, A_d(kappa)) from docs/methods.md §4.7
REFERENCE_A = [
    (3, 5.0, 1.0 / math.tanh(5.0) - 0.2),
    (3, 50.0, 0.980000),
    (768, 100.0, 0.128078),
    (768, 384.0, 0.414325),
    (768, 1000.0, 0.687400),
    (768, 14953.0, 0.974681),
]


def unit(rows: int, d: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(rows, d, generator=g, dtype=dtype), dim=1)


@pytest.mark.parametrize("d,kappa,expected", REFERENCE_A)
def test_mean_resultant_length_reference_values(d, kappa, expected):
    got = float(mean_resultant_length(d, torch.tensor(kappa, dtype=F64)))
    assert got == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("d,kappa", [(3, 0.5), (10, 7.0), (64, 300.0), (768, 2000.0), (1024, 5.0)])
def test_log_normalizer_matches_mpmath(d, kappa):
    mpmath.mp.dps = 40
    v = d / 2 - 1
    ref = v * mpmath.log(kappa) - d / 2 * mpmath.log(2 * mpmath.pi) - mpmath.log(mpmath.besseli(v, kappa))
    got = float(log_vmf_normalizer(d, torch.tensor([kappa], dtype=F64))[0])
    assert got == pytest.approx(float(ref), rel=1e-10, abs=1e-9)
    ratio = mpmath.besseli(v + 1, kappa) / mpmath.besseli(v, kappa)
    assert float(mean_resultant_length(d, torch.tensor(kappa, dtype=F64))) == pytest.approx(float(ratio), rel=1e-10)


@pytest.mark.parametrize("d,kappa", [(3, 2.0), (16, 40.0), (300, 900.0)])
def test_log_pdf_matches_scipy(d, kappa):
    mu = unit(1, d, 1, F64)[0]
    x = unit(5, d, 2, F64)
    ref = stats.vonmises_fisher(mu.numpy(), kappa).logpdf(x.numpy())
    got = log_vmf_normalizer(d, torch.tensor([kappa], dtype=F64)) + kappa * (x @ mu)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-9)


def test_extreme_values_are_finite_and_consistent():
    kappa = torch.tensor([1e-6, 1.0, 1e3, 1e5, 1e7], dtype=F64)
    for d in (2, 3, 768, 4096):
        assert torch.isfinite(log_vmf_normalizer(d, kappa)).all()
        a = mean_resultant_length(d, kappa)
        assert torch.isfinite(a).all() and (a > 0).all() and (a < 1).all()
        assert (a.diff() > 0).all()  # A_d increases with kappa
    # d = 4096, kappa = 1e7: A ~ 1 - (d-1)/(2 kappa); small kappa: A ~ kappa / d
    a = mean_resultant_length(4096, torch.tensor([1e7, 1e-3], dtype=F64))
    assert float(a[0]) == pytest.approx(1 - 4095 / 2e7, rel=1e-7)
    assert float(a[1]) == pytest.approx(1e-3 / 4096, rel=1e-6)
    # kappa = 0: uniform density, -log of the sphere's area
    log_area = math.log(2) + 384 * math.log(math.pi) - math.lgamma(384)
    assert float(log_vmf_normalizer(768, torch.tensor([0.0], dtype=F64))[0]) == pytest.approx(-log_area)
    assert float(mean_resultant_length(768, torch.tensor(0.0, dtype=F64))) == 0.0


def test_debye_fallback_agrees_with_scipy_where_both_work():
    x = torch.logspace(-1, 5, 25, dtype=F64)
    for v in (50.0, 383.0, 2047.0):
        scipy_ok = log_ive(v, x)
        debye = _log_ive_debye(v, x)
        finite = torch.isfinite(scipy_ok)
        torch.testing.assert_close(debye[finite], scipy_ok[finite], rtol=1e-9, atol=1e-9)
    # order 2047 at x = 1 underflows ive: the value comes from the expansion, vs mpmath
    mpmath.mp.dps = 40
    ref = float(mpmath.log(mpmath.besseli(2047, 1)))
    assert float(log_bessel_iv(2047.0, torch.tensor([1.0], dtype=F64))[0]) == pytest.approx(ref, rel=1e-12)


def test_banerjee_self_consistency():
    # kappa_hat = r (d - r^2) / (1 - r^2) at r = 0.97468 (docs/methods.md quotes 14,952.6; the formula gives 14,952.90)
    k = banerjee_kappa(0.97468, 768)
    r = 0.97468
    assert float(k) == pytest.approx(r * (768 - r * r) / (1 - r * r), rel=1e-12)
    assert float(k) == pytest.approx(14952.6, rel=5e-5)
    assert float(mean_resultant_length(768, k)) == pytest.approx(0.97468, abs=2e-5)
    assert float(banerjee_kappa(1.0, 768)) == 1e7  # duplicates: capped


def test_banerjee_recovers_known_kappa_from_samples():
    for d, kappa in ((16, 20.0), (128, 500.0)):
        mu = unit(1, d, 3)
        x = sample_vmf(mu.expand(4000, d), torch.full((4000,), kappa), torch.Generator().manual_seed(4))
        total = x.double().sum(0)
        kappa_hat = banerjee_kappa(total.norm() / x.shape[0], d)
        assert float(kappa_hat) == pytest.approx(kappa, rel=0.05)
        assert float(torch.nn.functional.normalize(total, dim=0).float() @ mu[0]) > 0.99


def test_sampler_mean_cosine_matches_reference_in_one_batched_call():
    for d, n in ((3, 20000), (768, 4000)):  # d = 768: std(mu.x) ~ 0.036, so 4k samples give SE < 6e-4
        rows = [(k, a) for dd, k, a in REFERENCE_A if dd == d]
        mu = unit(len(rows), d, 5).repeat_interleave(n, 0)
        kappa = torch.tensor([k for k, _ in rows]).repeat_interleave(n)
        x = sample_vmf(mu, kappa, torch.Generator().manual_seed(6))
        assert (x.norm(dim=1) - 1).abs().max() < 1e-6
        cos = (x * mu).sum(1).view(len(rows), n).double().mean(1)
        np.testing.assert_allclose(cos.numpy(), [a for _, a in rows], atol=3e-3)


def test_w_marginal_d3_ks_against_closed_form():
    kappa = 4.0
    mu = unit(1, 3, 7, F64)
    x = sample_vmf(mu.expand(4000, 3), torch.full((4000,), kappa), torch.Generator().manual_seed(8))
    w = (x @ mu[0]).numpy()

    def cdf(t):  # density prop. to exp(kappa w) on [-1, 1]
        return np.expm1(kappa * (np.asarray(t) + 1)) / np.expm1(2 * kappa)

    assert stats.kstest(w, cdf).pvalue > 0.01


@pytest.mark.parametrize("d,kappa", [(5, 2.0), (64, 50.0), (256, 1500.0)])
def test_sampler_agrees_with_scipy_vonmises_fisher(d, kappa):
    mu = unit(1, d, 9, F64)
    ours = sample_vmf(mu.expand(1500, d), torch.full((1500,), kappa), torch.Generator().manual_seed(10))
    theirs = stats.vonmises_fisher(mu[0].numpy(), kappa).rvs(1500, random_state=np.random.default_rng(11))
    assert stats.ks_2samp((ours @ mu[0]).numpy(), theirs @ mu[0].numpy()).pvalue > 0.01


def test_limits_seed_returned_and_uniform_and_mean_direction():
    mu = unit(4, 768, 12, F64)
    x = sample_vmf(mu, torch.tensor([math.inf, 1e12, 1e10, 1e7], dtype=F64), torch.Generator().manual_seed(0))
    torch.testing.assert_close(x[0], mu[0], rtol=0, atol=1e-15)
    one_minus = 1 - (x * mu).sum(1)
    assert 0 < float(one_minus[2]) < 1e-6  # 1 - A ~ (d-1)/(2 kappa) = 3.8e-8: precise, not rounded to 0
    assert float(one_minus[2]) == pytest.approx(767 / 2e10, rel=0.3)
    g = torch.Generator().manual_seed(1)
    flat = sample_vmf(unit(1, 3).expand(6000, 3), torch.zeros(6000), g)
    assert abs(float(flat[:, 0].mean())) < 0.03 and abs(float(flat.mean(0).norm())) < 0.05
    m = unit(1, 50, 13)
    direction = torch.nn.functional.normalize(sample_vmf(m.expand(5000, 50), torch.full((5000,), 20.0), g).mean(0), dim=0)
    assert float(direction @ m[0]) > 0.999


def test_householder_edge_cases_and_reproducibility():
    mu = torch.zeros(2, 6, dtype=F64)
    mu[0, -1], mu[1, -1] = 1.0, -1.0  # mu = e_d (identity) and mu = -e_d
    x = sample_vmf(mu, torch.full((2,), 1e9, dtype=F64), torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, mu, rtol=0, atol=1e-4)
    m, k = unit(50, 20, 14), torch.linspace(1, 500, 50)
    a = sample_vmf(m, k, torch.Generator().manual_seed(3))
    b = sample_vmf(m, k, torch.Generator().manual_seed(3))
    c = sample_vmf(m, k, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float32 and a.shape == (50, 20)


def test_bad_inputs_raise_data_error():
    with pytest.raises(DataError, match="shape"):
        sample_vmf(torch.ones(3), torch.ones(3))
    with pytest.raises(DataError, match="kappa must have shape"):
        sample_vmf(torch.ones(3, 4), torch.ones(2))
    with pytest.raises(DataError, match="non-negative"):
        sample_vmf(torch.ones(3, 4), torch.tensor([1.0, -1.0, 2.0]))
    with pytest.raises(DataError, match="d >= 2"):
        mean_resultant_length(1, torch.tensor(1.0))

