"""Solvers that train a probe head (registry `SOLVERS`, chosen by `solver=`): full-batch L-BFGS
and minibatch AdamW. Named solvers, not optimizers, so as not to collide with the fine-tuning
engine's optimizers (`sgd`, `adamw` on image batches).

Each solver is `fn(head, loss_fn, x, y, *, anchor, generator, **options) -> info dict` with its
own explicit keyword options (`solver_options(name)` lists them); `anchor` is None for plain L2
towards zero, or the frozen initial weights for L2-SP (Li et al. 2018).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from longtail.device import memory_budget
from longtail.maths.lbfgs import minimize_lbfgs
from longtail.methods.probe.objective import (
    CLOSED_FORM_HEADS,
    autograd_objective,
    chunk_rows,
    closed_form_objective,
    set_flat,
)
from longtail.registry import Registry

SOLVERS: Registry[Callable[..., dict[str, Any]]] = Registry("probe solver")
_COMMON = ("head", "loss_fn", "x", "y", "anchor", "generator")  # not user options


def solver_options(name: str) -> list[str]:
    """The option names solver `name` accepts (its keyword parameters beyond the common ones)."""
    return [p for p in inspect.signature(SOLVERS.get(name)).parameters if p not in _COMMON]


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
    if kind not in CLOSED_FORM_HEADS:
        return None
    with torch.no_grad():
        a = CLOSED_FORM_HEADS[kind](head)[0](x[:: max(1, -(-x.shape[0] // PRECONDITION_ROWS))])
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
          max_iter: int = 1000, tol: float = 1e-4, history_size: int = 10,
          memory: str | int = "auto") -> dict[str, Any]:
    """Full-batch L-BFGS with strong-Wolfe line search on mean loss + l2/2 ||W - anchor||^2.

    l2 None: 1/N for a linear head (scikit-learn's C = 1), 0 for a cosine head. Stops when
    max |gradient| <= tol (scikit-learn's tol), as torch.optim.LBFGS does (longtail.maths.lbfgs).
    CE-type losses on linear/cosine heads use closed-form gradients, and on a linear head a
    line search that needs no matmul per trial step; others (CCAR, LWS) use autograd. Linear
    and cosine heads get `feature_preconditioner` as L-BFGS's initial inverse Hessian.
    `memory` ('auto': half the free RAM / GPU memory, or a size such as '4GB') bounds the
    logit-sized work arrays: over it, the objective is summed over row chunks (same objective,
    memory O(B C) instead of O(N C); longtail.methods.probe.objective).
    """
    if l2 is None:  # scikit-learn: C * sum(loss) + ||W||^2 / 2  ==  N C (mean loss + ||W||^2 / (2 N C))
        l2 = 1.0 / x.shape[0] if head.spec()["type"] == "linear" else 0.0
    target = 0.0 if anchor is None else anchor
    rows = chunk_rows(x.shape[0], head.weight.shape[0], memory_budget(memory, x.device), x.element_size())
    closed = closed_form_objective(head, loss_fn, x, y, l2, target, rows)
    params = list(head.parameters())
    if closed is not None:
        fun, along, start = closed.fun, (closed.along if closed.linear else None), closed.flat()
    else:
        fun, along = autograd_objective(head, loss_fn, x, y, l2, target, rows), None
        start = torch.nn.utils.parameters_to_vector(params).detach()
    with torch.no_grad():
        weights = getattr(loss_fn, "class_weights", None)  # per-class loss weights (weighted-ce), if any
        mass = torch.bincount(y, weights=None if weights is None else weights.to(x.device, torch.float64)[y],
                              minlength=head.weight.shape[0])
        precondition = feature_preconditioner(head, x, mass)
        result = minimize_lbfgs(fun, start, along=along, precondition=precondition, lr=lr,
                                max_iter=max_iter, max_eval=int(max_iter * 1.25) + 1, tol=tol,
                                tolerance_change=1e-9, history_size=history_size)
        set_flat(params, result.x)
        final = float(fun(None)[0] if closed is None else closed(grad=False)[0])
    if result.iterations == 0 and result.stop == "gradient" and max_iter > 0:
        # the mean objective's gradient entries shrink like n_c / N: at thousands of classes a
        # start point can meet scikit-learn's absolute tol without any training
        warnings.warn(f"L-BFGS stopped at its start point: max |gradient| {float(result.grad.abs().max()):.2g} "
                      f"<= tol={tol:g} before any step ({head.weight.shape[0]:,} classes); set a smaller tol "
                      "(e.g. tol=1e-6) to train", stacklevel=2)
    return {"iterations": result.iterations, "evaluations": result.evaluations, "stop": result.stop,
            "max_gradient": float(result.grad.abs().max()), "l2": float(l2), "final_objective": final,
            "gradient": "autograd" if closed is None else "closed-form", "chunk_rows": rows}


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
