"""Probe solvers: L-BFGS closed-form loss/gradients equal autograd's (same optimum, same path);
the solver options a ProbeConfig passes are exactly each solver's keyword options."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longtail.methods.heads import CosineHead, LinearHead
from longtail.methods.losses import make_loss
from longtail.methods.probe import ProbeConfig
from longtail.methods.probe.objective import closed_form_objective as _closed_form
from longtail.methods.probe.solvers import SOLVERS, solver_options

COUNTS = np.array([40, 20, 8, 3, 1])
LOSSES = [("ce", {}), ("la", {"tau": 0.7}), ("balanced-softmax", {}), ("cf", {}),
          ("weighted-ce", {}), ("weighted-ce", {"weighting": "effective", "beta": 0.9})]
HEADS = [("linear", {}), ("linear", {"use_bias": False}), ("cosine", {"scale": 7.0}),
         ("cosine", {"scale": 7.0, "use_bias": True})]


def _problem(seed=0, n=72, d=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randint(0, COUNTS.size, (n,), generator=g)
    y[: COUNTS.size] = torch.arange(COUNTS.size)  # every class present
    return x, y, g


def _head(kind, options, d, g, dtype=torch.float64):
    cls = {"linear": LinearHead, "cosine": CosineHead}[kind]
    head = cls(COUNTS.size, d, weight=torch.randn(COUNTS.size, d, generator=g), generator=g, **options)
    if head.bias is not None:
        head.bias.data.normal_(generator=g)
    return head.to(dtype)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("loss,params", LOSSES)
@pytest.mark.parametrize("kind,options", HEADS)
def test_closed_form_equals_autograd(loss, params, kind, options, device):
    x, y, g = _problem()
    head = _head(kind, options, x.shape[1], g)
    anchor = torch.randn(head.weight.shape, generator=g, dtype=torch.float64).to(device)
    x, y, head, loss_fn = x.to(device), y.to(device), head.to(device), make_loss(loss, COUNTS, **params).to(device)
    for l2, target in ((0.0, 0.0), (0.3, 0.0), (0.3, anchor)):
        closed = _closed_form(head, loss_fn, x, y, l2, target)
        value, grad_w, grad_b = closed()
        head.zero_grad()
        expected = loss_fn(head(x), y) + 0.5 * l2 * (head.weight - target).square().sum()
        expected.backward()
        assert float(value) == pytest.approx(float(expected.detach()), rel=1e-13, abs=1e-13)
        assert torch.allclose(grad_w, head.weight.grad, rtol=1e-11, atol=1e-13)
        if head.bias is None:
            assert grad_b is None
        else:
            assert torch.allclose(grad_b, head.bias.grad, rtol=1e-11, atol=1e-13)
        assert float(closed(grad=False)[0]) == float(value)


def test_ccar_falls_back_to_autograd():
    x, y, g = _problem()
    head = _head("linear", {}, x.shape[1], g)
    assert _closed_form(head, make_loss("ccar", COUNTS), x, y, 0.1, 0.0) is None
    assert _closed_form(head, make_loss("ce", COUNTS), x, y, 0.1, 0.0) is not None


class _AutogradOnly(torch.nn.Module):
    """The same loss without the closed-form hook: forces the autograd closure. Its class weights
    stay visible: the solver's preconditioner (not the objective) reads them."""

    def __init__(self, loss):
        super().__init__()
        self.loss = loss
        self.class_weights = getattr(loss, "class_weights", None)

    def forward(self, z, y):
        return self.loss(z, y)


def _fit_both(loss, kind, dtype, tol):
    """Fit with the closed-form and with the autograd closure from the same start."""
    x, y, _ = _problem(seed=3, n=300, d=8, dtype=dtype)
    x = F.normalize(x + 2.0 * F.one_hot(y, 8).to(dtype), dim=-1)
    results = []
    for wrap in (False, True):
        g = torch.Generator().manual_seed(0)
        head = _head(kind, {"scale": 10.0} if kind == "cosine" else {}, 8, g, dtype)
        loss_fn = make_loss(loss, COUNTS)
        info = SOLVERS.get("lbfgs")(head, _AutogradOnly(loss_fn) if wrap else loss_fn, x, y,
                                    generator=g, tol=tol)
        assert info["gradient"] == ("autograd" if wrap else "closed-form")
        z = head(x).detach()
        results.append((info, z - z.mean(1, keepdim=True)))  # bias unpenalised: logits up to a row constant
    return results


@pytest.mark.parametrize("loss,kind", [("la", "linear"), ("weighted-ce", "linear"), ("ce", "cosine")])
def test_lbfgs_closed_form_follows_the_autograd_path(loss, kind):
    (closed, z_closed), (auto, z_auto) = _fit_both(loss, kind, torch.float64, tol=1e-9)
    assert (closed["iterations"], closed["evaluations"]) == (auto["iterations"], auto["evaluations"])
    assert closed["final_objective"] == pytest.approx(auto["final_objective"], rel=1e-12)
    assert torch.allclose(z_closed, z_auto, atol=1e-8)


def test_lbfgs_closed_form_float32_same_optimum_and_predictions():
    (closed, z_closed), (auto, z_auto) = _fit_both("la", "linear", torch.float32, tol=1e-4)
    # float32 rounding differs between the two line searches (logits z + t dz vs a fresh matmul), so
    # the paths part; both stop at max |gradient| <= 1e-4, which pins the objective to ~1e-6 and
    # the logits to ~1e-2: predictions agree except on near-ties.
    assert closed["final_objective"] == pytest.approx(auto["final_objective"], rel=1e-5)
    assert torch.allclose(z_closed, z_auto, atol=0.05)
    top2 = z_auto.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.1
    assert clear.float().mean() > 0.9
    assert torch.equal(z_closed.argmax(1)[clear], z_auto.argmax(1)[clear])


def test_config_passes_each_solver_its_own_options():
    assert solver_options("lbfgs") == ["l2", "lr", "max_iter", "tol", "history_size", "memory"]
    assert solver_options("adamw") == ["lr", "epochs", "weight_decay", "batch_size"]
    lbfgs = ProbeConfig(method="linear", loss="ce", max_iter=7, epochs=3, l2=0.5).head_training()
    assert lbfgs["solver_options"] == {"l2": 0.5, "max_iter": 7, "tol": 1e-4, "history_size": 10, "memory": "auto"}
    adamw = ProbeConfig(method="linear", loss="ce", solver="adamw", epochs=3, lr=0.1).head_training()
    assert adamw["solver_options"] == {"lr": 0.1, "epochs": 3, "weight_decay": 1e-4, "batch_size": 256}


def test_adamw_l2_sp_pulls_towards_the_anchor():
    x, y, g = _problem(n=40, d=4, dtype=torch.float32)
    start = torch.randn(COUNTS.size, 4, generator=g)
    results = {}
    for anchored in (False, True):
        head = LinearHead(COUNTS.size, 4, weight=start)
        SOLVERS.get("adamw")(head, make_loss("ce", COUNTS), x, y, anchor=start.clone() if anchored else None,
                             generator=torch.Generator().manual_seed(0), epochs=20, weight_decay=50.0, lr=0.05)
        results[anchored] = float((head.weight.detach() - start).norm())
    assert results[True] < 0.5 * results[False]
