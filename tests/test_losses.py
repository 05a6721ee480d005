"""Losses: identities and reference values of docs/methods.md §1.2, §5.9 and §6.5."""

import math

import pytest
import torch
import torch.nn.functional as F

from longtail.errors import ConfigError, DataError, UnknownNameError
from longtail.methods.losses import CCAR_WEIGHTS, LOSSES, make_loss

COUNTS = [500, 200, 50, 10, 5]
Z = torch.tensor([[1.0, 0.5, 0.0, -0.5, 2.0]], dtype=torch.float64)
Y = torch.tensor([3])


def _random(seed=0, b=16, c=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g, dtype=torch.float64), torch.randint(0, c, (b,), generator=g)


def test_registry_names():
    assert set(LOSSES.names()) >= {"ce", "la", "balanced-softmax", "cf", "ccar", "ccar-la", "ccar-bs"}


def test_la_tau0_is_ce():
    z, y = _random()
    assert torch.allclose(make_loss("la", COUNTS, tau=0.0)(z, y), F.cross_entropy(z, y), atol=1e-12)


def test_la_uniform_priors_is_ce():
    z, y = _random()
    for tau in (0.5, 1.0, 2.0):
        assert torch.allclose(make_loss("la", [7] * 5, tau=tau)(z, y), F.cross_entropy(z, y), atol=1e-12)


def test_la_constant_shift_invariance():
    z, y = _random(1)
    a = make_loss("la", COUNTS, tau=1.3).per_sample(z, y)
    b = make_loss("la", [c * 37 for c in COUNTS], tau=1.3).per_sample(z, y)  # log n + log 37
    assert torch.allclose(a, b, atol=1e-12)
    assert torch.allclose(make_loss("ce", COUNTS).per_sample(z + 4.2, y), make_loss("ce", COUNTS).per_sample(z, y))


def test_la_gradient():
    z, y = _random(2)
    z.requires_grad_(True)
    tau = 0.7
    make_loss("la", COUNTS, tau=tau).per_sample(z, y).sum().backward()
    log_pi = torch.log(torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS))
    expected = torch.softmax(z.detach() + tau * log_pi, dim=1) - F.one_hot(y, 5)
    assert torch.allclose(z.grad, expected, atol=1e-12)


def test_balanced_softmax_is_la_tau1():
    z, y = _random(3)
    assert torch.allclose(make_loss("balanced-softmax", COUNTS)(z, y), make_loss("la", COUNTS, tau=1.0)(z, y))


def test_cf_worked_example():
    assert make_loss("cf", COUNTS, gamma=0.06, mu=0.5)(Z, Y).item() == pytest.approx(5.898144, abs=1e-6)
    assert make_loss("cf", COUNTS, gamma=0.06, mu=1.0)(Z, Y).item() == pytest.approx(5.898144, abs=1e-6)
    assert make_loss("cf", COUNTS, gamma=0.0)(Z, Y).item() == pytest.approx(5.682848, abs=1e-6)
    assert make_loss("la", COUNTS, tau=1.0)(Z, Y).item() == pytest.approx(5.682848, abs=1e-6)
    assert make_loss("ce", COUNTS)(Z, Y).item() == pytest.approx(3.092459, abs=1e-6)


def test_cf_identity_and_mu_independence():
    z, y = _random(4)
    log_n = torch.log(torch.tensor(COUNTS, dtype=torch.float64))
    for gamma in (0.0, 0.03, 0.09):
        ref = F.cross_entropy(z + (1 + gamma) * log_n, y)
        for mu in (0.1, 0.5, 1.0):
            assert torch.allclose(make_loss("cf", COUNTS, gamma=gamma, mu=mu)(z, y), ref, atol=1e-9)


@pytest.mark.parametrize("f,p,expected", [
    (0.1, 0.2, 1.6405), (0.1, 0.5, 1.2523), (0.1, 0.95, 0.9802),
    (0.001, 0.2, 1.7323), (0.001, 0.95, 0.9998),
    (1.0, 0.3, 1.0), (1.0, 0.95, 0.8187), (1.0, 1.0, 0.7788),
])
def test_ccar_reference_weights(f, p, expected):
    w = CCAR_WEIGHTS.get("exp")(torch.tensor([p], dtype=torch.float64), torch.tensor([f], dtype=torch.float64), 0.75)
    assert w.item() == pytest.approx(expected, abs=1e-4)


def test_ccar_weight_is_one_at_pivot_and_decreasing():
    f = torch.tensor([0.0, 0.3, 0.9], dtype=torch.float64)
    w = CCAR_WEIGHTS.get("exp")
    assert torch.allclose(w(torch.full((3,), 0.75, dtype=torch.float64), f, 0.75), torch.ones(3, dtype=torch.float64))
    p = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    values = w(p, torch.full_like(p, 0.3), 0.75)
    assert (values[1:] < values[:-1]).all()


def _two_class_logits(p_true):
    """Logits over 2 classes whose softmax gives probability p_true to class 0."""
    return torch.tensor([[math.log(p_true / (1 - p_true)), 0.0]], dtype=torch.float64)


def test_ccar_loss_value_and_weight_from_frequency():
    counts = [90, 10]  # f = 0.9, 0.1 with freq="total"
    z = _two_class_logits(0.2)
    y = torch.tensor([0])
    loss = make_loss("ccar", counts, omega=0.75)
    expected_w = math.exp((1 - 0.9) * (0.75 - 0.2))
    assert loss(z, y).item() == pytest.approx(expected_w * -math.log(0.2), rel=1e-9)
    # freq="max": f = n / n_max = 1 for class 0 -> weight exp(0) = 1 below the pivot
    assert make_loss("ccar", counts, freq="max")(z, y).item() == pytest.approx(-math.log(0.2), rel=1e-9)


def test_ccar_unit_weight_reproduces_base():
    z, y = _random(5)
    for name, base in (("ccar", "ce"), ("ccar-la", "la"), ("ccar-bs", "balanced-softmax")):
        a = make_loss(name, COUNTS, weight="one")(z, y)
        assert torch.allclose(a, make_loss(base, COUNTS)(z, y), atol=1e-12)


def test_ccar_gradient_is_scaled_base_gradient():
    z, y = _random(6)
    loss = make_loss("ccar-la", COUNTS, tau=1.0)
    weights = loss.weights(z, y)
    z1 = z.clone().requires_grad_(True)
    loss(z1, y).backward()
    z2 = z.clone().requires_grad_(True)
    make_loss("la", COUNTS).per_sample(z2, y).sum().backward()
    assert torch.allclose(z1.grad, weights[:, None] * z2.grad / z.shape[0], atol=1e-12)
    assert not torch.allclose(weights, torch.ones_like(weights))


def test_ccar_p_t_option():
    z, y = _random(7)
    raw = make_loss("ccar-la", COUNTS).weights(z, y)
    adjusted = make_loss("ccar-la", COUNTS, p_t="adjusted").weights(z, y)
    p_adj = torch.softmax(z + torch.log(torch.tensor(COUNTS, dtype=torch.float64)), 1).gather(1, y[:, None])[:, 0]
    f = torch.tensor(COUNTS, dtype=torch.float64)[y] / sum(COUNTS)
    assert torch.allclose(adjusted, CCAR_WEIGHTS.get("exp")(p_adj, f, 0.75))
    assert not torch.allclose(raw, adjusted)


def test_errors():
    with pytest.raises(ConfigError, match="no parameter 'gama'"):
        make_loss("cf", COUNTS, gama=0.1)
    with pytest.raises(ConfigError, match="no parameter 'tau'"):
        make_loss("ce", COUNTS, tau=1.0)
    with pytest.raises(UnknownNameError, match="balanced-softmax"):
        make_loss("focal", COUNTS)
    with pytest.raises(DataError, match="no training samples"):
        make_loss("la", [3, 0, 2])
    with pytest.raises(ConfigError, match="omega"):
        make_loss("ccar", COUNTS, omega=1.5)
    with pytest.raises(ConfigError, match="freq"):
        make_loss("ccar", COUNTS, freq="median")


def test_weighted_ce_weights_by_rule():
    counts = [100, 10]
    z = torch.tensor([[1.0, -1.0], [0.5, 0.25]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    ce = F.cross_entropy(z, y, reduction="none")
    # inverse: w_c = N / (C n_c) = (0.55, 5.5), as scikit-learn's class_weight="balanced"
    inv = make_loss("weighted-ce", counts)
    assert torch.allclose(inv.per_sample(z, y), torch.tensor([0.55, 5.5], dtype=torch.float64) * ce)
    # sqrt: w ∝ n^-1/2, normalised so that sum_c n_c w_c = N
    raw = torch.tensor([0.1, 10 ** -0.5], dtype=torch.float64)
    w = raw * 110 / (raw @ torch.tensor([100.0, 10.0], dtype=torch.float64))
    assert torch.allclose(make_loss("weighted-ce", counts, weighting="sqrt").per_sample(z, y), w * ce)
    # effective number (Cui et al.): w ∝ (1 - beta) / (1 - beta^n)
    eff = make_loss("weighted-ce", counts, weighting="effective", beta=0.9)
    ratio = eff.class_weights[1] / eff.class_weights[0]
    assert float(ratio) == pytest.approx((1 - 0.9**100) / (1 - 0.9**10))


def test_weighted_ce_is_ce_for_balanced_counts_and_rejects_bad_options():
    z, y = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    for weighting in ("inverse", "sqrt", "effective"):
        loss = make_loss("weighted-ce", [7, 7, 7], weighting=weighting)
        assert torch.allclose(loss(z, y), F.cross_entropy(z, y))
    with pytest.raises(UnknownNameError, match="unknown class weighting 'x'"):
        make_loss("weighted-ce", [1, 2], weighting="x")
    with pytest.raises(ConfigError, match="beta"):
        make_loss("weighted-ce", [1, 2], weighting="effective", beta=1.0)
