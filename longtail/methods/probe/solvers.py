"""Solvers that train a probe head (registry `SOLVERS`, chosen by `solver=`): full-batch L-BFGS
and minibatch AdamW. Named solvers, not optimizers, so as not to collide with the fine-tuning
engine's optimizers (`sgd`, `adamw` on image batches).

Each solver is `fn(head, loss_fn, x, y, *, anchor, generator, **options) -> info dict` with its
own explicit keyword options (`solver_options(name)` lists them); `anchor` is None for plain L2
towards zero, or the frozen initial weights for L2-SP (Li et al. 2018).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.maths.lbfgs import minimize_lbfgs
from longtail.registry import Registry

SOLVERS: Registry[Callable[..., dict[str, Any]]] = Registry("probe solver")
_COMMON = ("head", "loss_fn", "x", "y", "anchor", "generator")  # not user options


def solver_options(name: str) -> list[str]:
    """The option names solver `name` accepts (its keyword parameters beyond the common ones)."""
    return [p for p in inspect.signature(SOLVERS.get(name)).parameters if p not in _COMMON]


_EPS = 1e-12  # F.normalize's clamp on the norm


def _linear_head(head: nn.Module) -> tuple[Callable, Callable]:
    """LinearHead, z = f W^T + b: input f, effective matrix W, identity backward."""
    return (lambda features: features), (lambda weight: (weight, lambda grad: grad))


def _cosine_head(head: nn.Module) -> tuple[Callable, Callable]:
    """CosineHead, z = s normalize(f) normalize(W)^T + b: backward through the row normalisation."""

    def matrix(weight: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        norm = weight.norm(dim=1, keepdim=True)
        radius = norm.clamp_min(_EPS)
        unit = weight / radius

        def backward(grad: Tensor) -> Tensor:  # dL/dW from dL/d(s * unit)
            grad = head.scale * grad
            radial = torch.where(norm > _EPS, unit * (unit * grad).sum(1, keepdim=True), 0.0)
            return (grad - radial) / radius

        return head.scale * unit, backward

    return (lambda features: F.normalize(features, dim=-1)), matrix


# Head type -> (features -> head input x, W -> (effective matrix V, dL/dV -> dL/dW)): z = x V^T + b.
_CLOSED_FORM_HEADS: dict[str, Callable[[nn.Module], tuple[Callable, Callable]]] = {
    "linear": _linear_head,
    "cosine": _cosine_head,
}


class _SoftmaxObjective:
    """mean_i w[y_i] CE(z_i + shift, y_i) + l2/2 ||W - anchor||^2 and its gradient in closed form.

    Written out because autograd's graph and engine cost about half of each L-BFGS evaluation
    here: this is two matmuls and a handful of fused passes over the (N, C) logits (log_softmax,
    nll_loss, exp, one scatter). Few passes matter most on a busy CPU, where every parallel
    kernel waits for all its threads. Equal to autograd's loss and gradient up to rounding
    (tests/test_solvers.py).

    For a linear head the logits along a search line are z + t dz, so `along` gives the line
    search its values and slopes without any matmul per trial step: one matmul for dz and one
    for the gradient at the accepted step, per L-BFGS iteration.
    """

    def __init__(self, head: nn.Module, x: Tensor, y: Tensor, shift: Tensor | None,
                 class_weights: Tensor | None, l2: float, anchor: Tensor | float) -> None:
        self.weight = head.weight.detach()  # aliases: `__call__` evaluates the head's current parameters
        self.bias = None if head.bias is None else head.bias.detach()
        self.linear = head.spec()["type"] == "linear"
        head_input, self.matrix = _CLOSED_FORM_HEADS[head.spec()["type"]](head)
        dtype = self.weight.dtype
        self.x = head_input(x).contiguous()  # (N, d)
        self.y = y
        self.shift = None if shift is None else shift.to(dtype)
        self.class_weights = None if class_weights is None else class_weights.to(dtype)
        self.sample_weight = None if class_weights is None else self.class_weights[y][:, None]
        self.rows = torch.arange(x.shape[0], device=y.device)
        self.minus_one = torch.tensor(-1.0, dtype=dtype, device=x.device)
        self.n, self.l2, self.anchor = x.shape[0], l2, anchor
        self.logits_at: tuple[Tensor, Tensor] | None = None  # (flat point, its logits (N, C)), linear head

    def flat(self) -> Tensor:
        """The head's parameters as one vector (weight row-major, then bias)."""
        parts = [self.weight.reshape(-1)] + ([] if self.bias is None else [self.bias])
        return torch.cat(parts)

    def unflat(self, v: Tensor) -> tuple[Tensor, Tensor | None]:
        """(weight, bias) views into a flat vector."""
        size = self.weight.numel()
        return v[:size].view(self.weight.shape), None if self.bias is None else v[size:]

    def _logits(self, matrix: Tensor, bias: Tensor | None, shift: bool = True) -> Tensor:
        """x matrix^T + bias (+ shift), (N, C)."""
        offset = bias  # b + shift enters as one per-class offset
        if shift and self.shift is not None:
            offset = self.shift if offset is None else offset + self.shift
        return self.x @ matrix.T if offset is None else torch.addmm(offset, self.x, matrix.T)

    def _softmax_ce(self, z: Tensor, grad: bool) -> tuple[Tensor, Tensor | None]:
        """(mean_i w_i CE_i, R = w (softmax - onehot) or None) from logits z (N, C), left intact."""
        log_p = torch.log_softmax(z, dim=1)
        loss = F.nll_loss(log_p, self.y, weight=self.class_weights, reduction="sum") / self.n
        if not grad:
            return loss, None
        residual = log_p.exp_()
        residual.index_put_((self.rows, self.y), self.minus_one, accumulate=True)
        if self.sample_weight is not None:
            residual.mul_(self.sample_weight)
        return loss, residual

    def _gradient(self, residual: Tensor, backward: Callable[[Tensor], Tensor], delta: Tensor | None,
                  with_bias: bool) -> tuple[Tensor, Tensor | None]:
        grad_w = backward(torch.mm(residual.T, self.x).div_(self.n))
        if delta is not None:
            grad_w.add_(delta, alpha=self.l2)
        return grad_w, residual.sum(0).div_(self.n) if with_bias else None

    def evaluate(self, weight: Tensor, bias: Tensor | None, grad: bool = True,
                 keep_at: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(objective, dL/dW, dL/db) at (weight, bias); keep_at: remember the logits as those of that flat point."""
        matrix, backward = self.matrix(weight)
        z = self._logits(matrix, bias)
        if keep_at is not None:
            self.logits_at = (keep_at.clone(), z)
        loss, residual = self._softmax_ce(z, grad)
        delta = weight - self.anchor if self.l2 else None
        if delta is not None:
            loss = loss + 0.5 * self.l2 * delta.square().sum()
        if not grad:
            return loss, None, None
        return (loss, *self._gradient(residual, backward, delta, bias is not None))

    def __call__(self, grad: bool = True) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(objective, dL/dW, dL/db) at the head's current parameters; no gradients if grad=False."""
        return self.evaluate(self.weight, self.bias, grad)

    def fun(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """(objective, flat gradient) at the flat point v."""
        weight, bias = self.unflat(v)
        loss, grad_w, grad_b = self.evaluate(weight, bias, keep_at=v if self.linear else None)
        return loss, grad_w.reshape(-1) if grad_b is None else torch.cat([grad_w.reshape(-1), grad_b])

    def along(self, v: Tensor, d: Tensor) -> _LinearLine:
        """The objective on the line v + t d (linear head only)."""
        if self.logits_at is None or not torch.equal(self.logits_at[0], v):
            self.evaluate(*self.unflat(v), grad=False, keep_at=v)
        return _LinearLine(self, v.clone(), d, self.logits_at[1])


class _LinearLine:
    """`_SoftmaxObjective` on v + t d for a linear head: logits z0 + t dz, one matmul for dz."""

    def __init__(self, obj: _SoftmaxObjective, v: Tensor, d: Tensor, z0: Tensor) -> None:
        self.obj, self.v, self.d, self.z0 = obj, v, d, z0
        self.d_weight, d_bias = obj.unflat(d)
        self.dz = obj._logits(self.d_weight, d_bias, shift=False)
        self.delta = obj.unflat(v)[0] - obj.anchor if obj.l2 else None
        if self.delta is not None:  # l2/2 ||delta + t dW||^2 = l2/2 (a + 2 b t + c t^2)
            delta, dw = self.delta.reshape(-1), self.d_weight.reshape(-1)
            self.pen = (float(delta.dot(delta)), float(delta.dot(dw)), float(dw.dot(dw)))
        self.trials: dict[float, tuple[Tensor, Tensor]] = {}  # t -> (logits, residual)

    def __call__(self, t: float) -> tuple[float, float]:
        z = torch.add(self.z0, self.dz, alpha=t)
        loss, residual = self.obj._softmax_ce(z, True)
        slope = float(torch.dot(residual.view(-1), self.dz.view(-1))) / self.obj.n
        value = float(loss)
        if self.delta is not None:
            a, b, c = self.pen
            value += 0.5 * self.obj.l2 * (a + 2.0 * t * b + t * t * c)
            slope += self.obj.l2 * (b + t * c)
        self.trials[t] = (z, residual)
        return value, slope

    def gradient(self, t: float) -> Tensor:
        obj, (z, residual) = self.obj, self.trials[t]
        delta = None if self.delta is None else torch.add(self.delta, self.d_weight, alpha=t)
        grad_w, grad_b = obj._gradient(residual, lambda grad: grad, delta, obj.bias is not None)
        obj.logits_at = (torch.add(self.v, self.d, alpha=t), z)
        return grad_w.reshape(-1) if grad_b is None else torch.cat([grad_w.reshape(-1), grad_b])


def _closed_form(head: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, l2: float,
                 anchor: Tensor | float) -> _SoftmaxObjective | None:
    """The closed-form objective when the loss is a (shifted, class-weighted) CE and the head is known."""
    terms = getattr(loss_fn, "softmax_ce_terms", None)
    if terms is None or head.spec()["type"] not in _CLOSED_FORM_HEADS:
        return None
    return _SoftmaxObjective(head, x, y, *terms(), l2=l2, anchor=anchor)


@torch.no_grad()
def _set_flat(params: list[Tensor], v: Tensor) -> None:
    """Copy the flat vector v into the parameters, in order (their storage is kept)."""
    offset = 0
    for p in params:
        p.copy_(v[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


def _autograd_fun(head: nn.Module, objective: Callable[[], Tensor]) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """fun(v) -> (objective, flat gradient) by autograd, v = the head's parameters flattened in order."""
    params = list(head.parameters())

    def fun(v: Tensor) -> tuple[Tensor, Tensor]:
        _set_flat(params, v)
        with torch.enable_grad():
            loss = objective()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        flat = [torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, grads)]
        return loss.detach(), torch.cat([gr.reshape(-1) for gr in flat])

    return fun


PRECONDITION_ROWS = 2048  # rows (evenly strided) that estimate the feature second moment
PRECONDITION_DAMPING = 30.0  # lambda in units of the mean eigenvalue (trace / dim) of that moment


def feature_preconditioner(head: nn.Module, x: Tensor,
                           class_mass: Tensor | None = None) -> Callable[[Tensor], Tensor] | None:
    """M v for the flat parameters [W (C, d) row-major, b (C,)] of a linear or cosine head:
    row c of [W, b] -> q_c [W, b]_c P, P = (E[a a^T] + lambda I)^-1, a = (head input, 1 if the
    head has a bias), q_c = 1 / (pi_c + 1/C) scaled to mean 1, pi = class_mass / sum (None: 1/C).

    The Hessian of a softmax head is close to (per-class curvature, about the class's share
    of the loss pi_c) x E[a a^T]. L2-normalised image features share a large mean direction and
    a fast-decaying spectrum, so plain L-BFGS spends most iterations on a few stiff directions
    (the mean and the bias); on a long tail the head classes' rows are ~100x stiffer than the
    tail's. Damping lambda = PRECONDITION_DAMPING x trace/dim keeps P well conditioned and
    leaves all but the ~dim/30 strongest directions alone; 1/C does the same for q. Used only
    as L-BFGS's initial inverse Hessian: the objective and the stopping rule are unchanged.
    None for other heads.
    """
    kind = head.spec()["type"] if hasattr(head, "spec") else None
    if kind not in _CLOSED_FORM_HEADS:
        return None
    with torch.no_grad():
        a = _CLOSED_FORM_HEADS[kind](head)[0](x[:: max(1, -(-x.shape[0] // PRECONDITION_ROWS))])
        if head.bias is not None:
            a = torch.cat([a, torch.ones_like(a[:, :1])], 1)
        moment = (a.T @ a).double() / a.shape[0]
        damping = PRECONDITION_DAMPING * float(moment.diagonal().mean())
        eye = torch.eye(moment.shape[0], dtype=moment.dtype, device=moment.device)
        # cholesky_solve against I: ~10x faster than cholesky_inverse on CPU for d ~ 1000
        p = torch.cholesky_solve(eye, torch.linalg.cholesky(moment + damping * eye)).to(head.weight.dtype)
    num_classes, dim = head.weight.shape
    size = num_classes * dim
    q = None
    if class_mass is not None:
        share = class_mass.to(p.dtype) / class_mass.sum()
        q = 1.0 / (share + 1.0 / num_classes)
        q = (q / q.mean())[:, None]

    def apply(v: Tensor) -> Tensor:
        out = torch.empty_like(v)
        weight, out_w = v[:size].view(num_classes, dim), out[:size].view(num_classes, dim)
        torch.mm(weight, p[:dim, :dim], out=out_w)
        if head.bias is not None:
            bias = v[size:]
            out_w.addr_(bias, p[dim, :dim])
            out_b = torch.mv(weight, p[:dim, dim], out=out[size:]).add_(bias, alpha=float(p[dim, dim]))
            if q is not None:
                out_b.mul_(q[:, 0])
        if q is not None:
            out_w.mul_(q)
        return out

    return apply


@SOLVERS.register("lbfgs")
def lbfgs(head: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, *, anchor: Tensor | None = None,
          generator: torch.Generator | None = None, l2: float | None = None, lr: float = 1.0,
          max_iter: int = 1000, tol: float = 1e-4, history_size: int = 10) -> dict[str, Any]:
    """Full-batch L-BFGS with strong-Wolfe line search on mean loss + l2/2 ||W - anchor||^2.

    l2 None: 1/N for a linear head (scikit-learn's C = 1), 0 for a cosine head. Stops when
    max |gradient| <= tol (scikit-learn's tol), as torch.optim.LBFGS does (longtail.maths.lbfgs).
    CE-type losses on linear/cosine heads use closed-form gradients, and on a linear head a
    line search that needs no matmul per trial step; others (CCAR, LWS) use autograd. Linear
    and cosine heads get `feature_preconditioner` as L-BFGS's initial inverse Hessian.
    """
    if l2 is None:  # scikit-learn: C * sum(loss) + ||W||^2 / 2  ==  N C (mean loss + ||W||^2 / (2 N C))
        l2 = 1.0 / x.shape[0] if head.spec()["type"] == "linear" else 0.0
    target = 0.0 if anchor is None else anchor
    closed = _closed_form(head, loss_fn, x, y, l2, target)

    def objective() -> Tensor:
        loss = loss_fn(head(x), y)
        return loss + 0.5 * l2 * (head.weight - target).square().sum() if l2 else loss

    params = list(head.parameters())
    if closed is not None:
        fun, along, start = closed.fun, (closed.along if closed.linear else None), closed.flat()
    else:
        fun, along = _autograd_fun(head, objective), None
        start = torch.nn.utils.parameters_to_vector(params).detach()
    with torch.no_grad():
        weights = getattr(loss_fn, "class_weights", None)  # per-class loss weights (weighted-ce), if any
        mass = torch.bincount(y, weights=None if weights is None else weights.to(x.device, torch.float64)[y],
                              minlength=head.weight.shape[0])
        precondition = feature_preconditioner(head, x, mass)
        result = minimize_lbfgs(fun, start, along=along, precondition=precondition, lr=lr,
                                max_iter=max_iter, max_eval=int(max_iter * 1.25) + 1, tol=tol,
                                tolerance_change=1e-9, history_size=history_size)
        _set_flat(params, result.x)
        final = float(objective() if closed is None else closed(grad=False)[0])
    return {"iterations": result.iterations, "evaluations": result.evaluations, "stop": result.stop,
            "max_gradient": float(result.grad.abs().max()), "l2": float(l2), "final_objective": final,
            "gradient": "autograd" if closed is None else "closed-form"}


@SOLVERS.register("adamw")
def adamw(head: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, *, anchor: Tensor | None = None,
          generator: torch.Generator | None = None, lr: float = 1e-2, epochs: int = 30,
          weight_decay: float = 1e-4, batch_size: int = 256) -> dict[str, Any]:
    """Minibatch AdamW with a cosine learning-rate schedule; batches drawn from `generator`.

    With an anchor (L2-SP) AdamW's decoupled decay is off and the loss gets an explicit
    weight_decay/2 ||W - anchor||^2 instead.
    """
    n = x.shape[0]
    steps_per_epoch = -(-n // batch_size)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0 if anchor is not None else weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * steps_per_epoch))
    last = float("nan")
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for idx in order.split(batch_size):
            opt.zero_grad()
            loss = loss_fn(head(x[idx]), y[idx])
            if anchor is not None:  # L2-SP: explicit pull towards the initial weights
                loss = loss + 0.5 * weight_decay * (head.weight - anchor).square().sum()
            loss.backward()
            opt.step()
            sched.step()
        last = float(loss.detach())
    return {"steps": epochs * steps_per_epoch, "final_loss": last}
