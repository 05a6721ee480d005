"""longtail.maths.lbfgs: torch.optim.LBFGS's iteration without a preconditioner, the compact
direction equal to the BFGS recursion with H0 = gamma M, and the probe solver's pieces built on
it (the matmul-free line of a linear head, the feature preconditioner)."""

import numpy as np
import pytest
import torch

from longtail.maths.lbfgs import _History, minimize_lbfgs
from longtail.methods.heads import CosineHead, LinearHead
from longtail.methods.losses import make_loss
from longtail.methods.probe.objective import closed_form_objective as _closed_form
from longtail.methods.probe.solvers import PRECONDITION_DAMPING, feature_preconditioner


def _softplus_problem(seed=0, n=30, d=8):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)

    def f(x):
        return torch.nn.functional.softplus(a @ x - b).sum() + 0.01 * x.square().sum()

    def fun(x):
        x = x.detach().requires_grad_(True)
        value = f(x)
        (grad,) = torch.autograd.grad(value, x)
        return value.detach(), grad

    return f, fun, d


def test_without_preconditioner_follows_torch_lbfgs_step_for_step():
    f, fun, d = _softplus_problem()
    x0 = torch.zeros(d, dtype=torch.float64)
    ours = minimize_lbfgs(fun, x0, tol=1e-10, max_iter=200, history_size=5)
    p = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([p], lr=1, max_iter=200, max_eval=250, tolerance_grad=1e-10, tolerance_change=1e-9,
                            history_size=5, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = f(p)
        value.backward()
        return value

    opt.step(closure)
    state = opt.state[p]
    assert (ours.iterations, ours.evaluations) == (state["n_iter"], state["func_evals"])
    assert ours.iterations > 10  # the history wrapped around
    assert torch.allclose(ours.x, p.detach(), rtol=0, atol=1e-10)
    assert torch.equal(x0, torch.zeros(d, dtype=torch.float64))  # the start is not modified


def test_compact_direction_equals_the_bfgs_recursion_with_gamma_m():
    g = torch.Generator().manual_seed(1)
    n, size = 7, 3
    root = torch.randn(n, n, generator=g, dtype=torch.float64)
    m = root @ root.T + 0.5 * torch.eye(n, dtype=torch.float64)  # SPD preconditioner
    hessian = torch.randn(n, n, generator=g, dtype=torch.float64)
    hessian = hessian @ hessian.T + torch.eye(n, dtype=torch.float64)  # pairs with y = B s: curvature > 0
    history = _History(size, torch.zeros(n, dtype=torch.float64), lambda v: m @ v)
    pairs = []
    grad = torch.randn(n, generator=g, dtype=torch.float64)
    direction = history.direction(grad)  # as in minimize_lbfgs: direction, update, direction, ...
    assert torch.allclose(direction, -m @ grad)
    for _ in range(5):  # more pairs than the memory keeps
        d, t = torch.randn(n, generator=g, dtype=torch.float64), 0.7
        new_grad = grad + hessian @ (t * d)
        history.update(d, t, new_grad, grad)
        direction = history.direction(new_grad)
        pairs.append((t * d, new_grad - grad))
        grad = new_grad
    kept = pairs[-size:]
    s_last, y_last = kept[-1]
    h = float(s_last @ y_last) / float(y_last @ m @ y_last) * m
    eye = torch.eye(n, dtype=torch.float64)
    for s, y in kept:  # H <- (I - rho s y^T) H (I - rho y s^T) + rho s s^T, oldest first
        rho = 1.0 / float(y @ s)
        h = (eye - rho * torch.outer(s, y)) @ h @ (eye - rho * torch.outer(y, s)) + rho * torch.outer(s, s)
    assert torch.allclose(direction, -h @ grad, rtol=1e-10, atol=1e-12)


def test_preconditioned_run_meets_the_same_stopping_rule_at_the_same_optimum():
    _, fun, d = _softplus_problem(seed=2)
    x0 = torch.zeros(d, dtype=torch.float64)
    plain = minimize_lbfgs(fun, x0, tol=1e-6, tolerance_change=1e-20)
    g = torch.Generator().manual_seed(3)
    root = torch.randn(d, d, generator=g, dtype=torch.float64)
    m = root @ root.T / d + 0.1 * torch.eye(d, dtype=torch.float64)
    pre = minimize_lbfgs(fun, x0, tol=1e-6, tolerance_change=1e-20, precondition=lambda v: m @ v)
    for result in (plain, pre):
        assert result.stop == "gradient" and result.grad.abs().max() <= 1e-6
    assert torch.allclose(plain.x, pre.x, atol=1e-5)
    assert pre.f == pytest.approx(plain.f, rel=1e-12)


COUNTS = np.array([30, 12, 5, 2])


def _data(n=60, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.rand(n, d, generator=g, dtype=torch.float64) + 0.2, dim=1)
    y = torch.randint(0, COUNTS.size, (n,), generator=g)
    y[: COUNTS.size] = torch.arange(COUNTS.size)
    return x, y, g


@pytest.mark.parametrize("loss", ["ce", "la", "weighted-ce"])
def test_linear_line_equals_fresh_evaluations(loss):
    x, y, g = _data()
    head = LinearHead(COUNTS.size, x.shape[1], weight=torch.randn(COUNTS.size, x.shape[1], generator=g)).double()
    anchor = torch.randn(COUNTS.size, x.shape[1], generator=g, dtype=torch.float64)
    obj = _closed_form(head, make_loss(loss, COUNTS), x, y, 0.3, anchor)
    v = obj.flat().clone()
    d = torch.randn(v.shape, generator=g, dtype=torch.float64)
    f0, g0 = obj.fun(v)
    line = obj.along(v, d)
    for t in (0.0, 0.25, 1.0, 3.0):
        value, slope = line(t)
        f_t, g_t = obj.fun(v + t * d)
        assert value == pytest.approx(float(f_t), rel=1e-12)
        assert slope == pytest.approx(float(g_t @ d), rel=1e-10, abs=1e-12)
        assert torch.allclose(line.gradient(t), g_t, rtol=1e-10, atol=1e-12)
    assert float(f0) == pytest.approx(line(0.0)[0], rel=1e-12)


@pytest.mark.parametrize("kind,options", [("linear", {}), ("linear", {"use_bias": False}), ("cosine", {})])
def test_feature_preconditioner_is_the_damped_inverse_second_moment(kind, options):
    x, _, g = _data(n=40, d=4)
    head = {"linear": LinearHead, "cosine": CosineHead}[kind](COUNTS.size, 4, generator=g, **options).double()
    apply = feature_preconditioner(head, x)
    a = x if head.bias is None else torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
    moment = a.T @ a / a.shape[0]
    p = torch.linalg.inv(moment + PRECONDITION_DAMPING * moment.diagonal().mean() * torch.eye(a.shape[1],
                                                                                             dtype=x.dtype))
    size = head.weight.numel()
    v = torch.randn(size + (0 if head.bias is None else COUNTS.size), generator=g, dtype=torch.float64)
    block = v[:size].view(COUNTS.size, 4) if head.bias is None else torch.cat(
        [v[:size].view(COUNTS.size, 4), v[size:, None]], 1)
    expected = block @ p
    got = apply(v)
    assert torch.allclose(got[:size].view(COUNTS.size, 4), expected[:, :4], rtol=1e-10, atol=1e-12)
    if head.bias is not None:
        assert torch.allclose(got[size:], expected[:, 4], rtol=1e-10, atol=1e-12)
    u = torch.randn(v.shape, generator=g, dtype=torch.float64)
    assert float(u @ apply(v)) == pytest.approx(float(v @ apply(u)), rel=1e-10)  # symmetric
    assert float(v @ apply(v)) > 0  # positive definite


def test_class_mass_scales_each_row_by_inverse_share_plus_one_over_c():
    x, _, g = _data(n=40, d=4)
    head = LinearHead(COUNTS.size, 4, generator=g).double()
    mass = torch.tensor([30.0, 12.0, 5.0, 2.0], dtype=torch.float64)
    plain, scaled = feature_preconditioner(head, x), feature_preconditioner(head, x, mass)
    q = 1.0 / (mass / mass.sum() + 1.0 / COUNTS.size)
    q = q / q.mean()
    v = torch.randn(head.weight.numel() + COUNTS.size, generator=g, dtype=torch.float64)
    size = head.weight.numel()
    base, got = plain(v), scaled(v)
    assert torch.allclose(got[:size].view(COUNTS.size, 4), q[:, None] * base[:size].view(COUNTS.size, 4))
    assert torch.allclose(got[size:], q * base[size:])
    assert q[0] < q[-1]  # the head class gets the smaller steps
    uniform = feature_preconditioner(head, x, torch.full((COUNTS.size,), 7.0, dtype=torch.float64))
    assert torch.allclose(uniform(v), base)  # balanced classes: no class scaling
