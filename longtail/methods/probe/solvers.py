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

    Written out because autograd's graph, engine and extra passes cost about half of each L-BFGS
    evaluation here: this is two matmuls and one softmax, with logits laid out (C, N) so the
    softmax reduces over the leading dimension (vectorised across samples; faster on CPU).
    Equal to autograd's loss and gradient up to rounding (tests/test_optimizers.py).
    """

    def __init__(self, head: nn.Module, x: Tensor, y: Tensor, shift: Tensor | None,
                 class_weights: Tensor | None, l2: float, anchor: Tensor | float) -> None:
        self.weight = head.weight.detach()  # aliases: L-BFGS updates the parameters in place
        self.bias = None if head.bias is None else head.bias.detach()
        head_input, self.matrix = _CLOSED_FORM_HEADS[head.spec()["type"]](head)
        n, dtype = x.shape[0], self.weight.dtype
        self.x = head_input(x)
        self.x_t = self.x.T.contiguous()  # (d, N) copy: the forward matmul is ~15% faster on CPU than on x.T
        self.shift = None if shift is None else shift.to(dtype)
        self.sample_weight = None if class_weights is None else class_weights.to(dtype)[y]
        self.target = y * n + torch.arange(n, device=y.device)  # flat index of (y_i, i) in (C, N)
        self.minus_one = torch.tensor(-1.0, dtype=dtype, device=x.device)
        self.n, self.l2, self.anchor = n, l2, anchor

    def __call__(self, grad: bool = True) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(objective, dL/dW, dL/db) at the head's current parameters; no gradients if grad=False."""
        matrix, backward = self.matrix(self.weight)
        offset = self.bias  # b + shift enters as one per-class offset
        if self.shift is not None:
            offset = self.shift if offset is None else offset + self.shift
        z = matrix @ self.x_t if offset is None else torch.addmm(offset[:, None], matrix, self.x_t)  # (C, N)
        z = z.sub_(z.amax(0))
        z_target = torch.take(z, self.target)
        total = z.exp_().sum(0)
        per_sample = total.log() - z_target  # CE_i = logsumexp(z_i) - z_{i, y_i}
        if self.sample_weight is not None:
            per_sample = per_sample * self.sample_weight
        loss = per_sample.mean()
        delta = self.weight - self.anchor if self.l2 else None
        if delta is not None:
            loss = loss + 0.5 * self.l2 * delta.square().sum()
        if not grad:
            return loss, None, None
        z.mul_(total.reciprocal_()).view(-1).index_put_((self.target,), self.minus_one, accumulate=True)  # softmax - onehot
        if self.sample_weight is not None:
            z.mul_(self.sample_weight)
        grad_w = backward(torch.mm(z, self.x).div_(self.n))
        if delta is not None:
            grad_w.add_(delta, alpha=self.l2)
        return loss, grad_w, None if self.bias is None else z.sum(1).div_(self.n)


def _closed_form(head: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, l2: float,
                 anchor: Tensor | float) -> _SoftmaxObjective | None:
    """The closed-form objective when the loss is a (shifted, class-weighted) CE and the head is known."""
    terms = getattr(loss_fn, "softmax_ce_terms", None)
    if terms is None or head.spec()["type"] not in _CLOSED_FORM_HEADS:
        return None
    return _SoftmaxObjective(head, x, y, *terms(), l2=l2, anchor=anchor)


@SOLVERS.register("lbfgs")
def lbfgs(head: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, *, anchor: Tensor | None = None,
          generator: torch.Generator | None = None, l2: float | None = None, lr: float = 1.0,
          max_iter: int = 1000, tol: float = 1e-4, history_size: int = 10) -> dict[str, Any]:
    """Full-batch L-BFGS with strong-Wolfe line search on mean loss + l2/2 ||W - anchor||^2.

    l2 None: 1/N for a linear head (scikit-learn's C = 1), 0 for a cosine head. Stops when
    max |gradient| <= tol (scikit-learn's tol). CE-type losses on linear/cosine heads use
    closed-form gradients; others (CCAR) use autograd.
    """
    if l2 is None:  # scikit-learn: C * sum(loss) + ||W||^2 / 2  ==  N C (mean loss + ||W||^2 / (2 N C))
        l2 = 1.0 / x.shape[0] if head.spec()["type"] == "linear" else 0.0
    opt = torch.optim.LBFGS(head.parameters(), lr=lr, max_iter=max_iter,
                            max_eval=int(max_iter * 1.25) + 1, tolerance_grad=tol,
                            tolerance_change=1e-9, history_size=history_size,
                            line_search_fn="strong_wolfe")

    target = 0.0 if anchor is None else anchor
    closed = _closed_form(head, loss_fn, x, y, l2, target)

    def objective() -> Tensor:
        loss = loss_fn(head(x), y)
        return loss + 0.5 * l2 * (head.weight - target).square().sum() if l2 else loss

    def closure() -> Tensor:
        if closed is not None:
            with torch.no_grad():
                loss, head.weight.grad, bias_grad = closed()
                if head.bias is not None:
                    head.bias.grad = bias_grad
            return loss
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    if max_iter > 0:
        opt.step(closure)
    state = opt.state[head.weight]
    with torch.no_grad():
        final = float(objective() if closed is None else closed(grad=False)[0])
    return {"iterations": int(state.get("n_iter", 0)), "evaluations": int(state.get("func_evals", 0)),
            "l2": float(l2), "final_objective": final, "gradient": "autograd" if closed is None else "closed-form"}


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
