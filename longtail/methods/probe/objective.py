"""The probe's training objective, mean_i loss(z_i, y_i) + l2/2 ||W - anchor||^2, and its
gradient, evaluated over row chunks so that memory is O(B C + N d + C d), not O(N C).

One logit matrix of iNaturalist-2018 (437,513 rows x 8,142 classes) is 14 GB in fp32. The sum
over rows splits exactly into sums over chunks of B rows, so the objective and gradient are
the same (up to the order of floating-point additions) for any B; `chunk_rows` picks B from a
memory budget. When all N rows fit (B = N) a linear head also gets the matmul-free line
search (`along`: logits z + t dz along a search line); chunked, every trial step is one
evaluation (two matmuls per chunk), which is what a search that cannot keep N x C logits costs.

Written out rather than with autograd for CE-type losses (CE, LA, balanced softmax, CF,
weighted CE) on linear and cosine heads: autograd's graph and engine cost about half of each
evaluation here. Other losses (CCAR) and heads go through autograd, chunk by chunk, with
each loss's `per_sample` terms (tests/test_solvers.py checks both against autograd on all rows).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_EPS = 1e-12  # F.normalize's clamp on the norm
FULL_MATRICES = 6  # N x C arrays alive at once on the unchunked path (logits, step, trial, residual, temporaries)
CHUNK_MATRICES = 3  # B x C arrays alive at once per chunk (logits, residual, a temporary)


def chunk_rows(num_rows: int, num_classes: int, budget: int | None, itemsize: int = 4) -> int:
    """Rows per chunk B for an N x C problem within `budget` bytes of logit-sized work arrays:
    N (no chunking, the fast line search) when FULL_MATRICES N x C arrays fit, else
    budget / (CHUNK_MATRICES C itemsize), at least 1. budget None: no limit."""
    if budget is None or FULL_MATRICES * num_rows * num_classes * itemsize <= budget:
        return num_rows
    return max(1, min(num_rows, budget // (CHUNK_MATRICES * num_classes * itemsize)))


def _spans(n: int, rows: int) -> list[tuple[int, int]]:
    return [(start, min(start + rows, n)) for start in range(0, n, rows)]


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
CLOSED_FORM_HEADS: dict[str, Callable[[nn.Module], tuple[Callable, Callable]]] = {
    "linear": _linear_head,
    "cosine": _cosine_head,
}


class SoftmaxObjective:
    """mean_i w[y_i] CE(z_i + shift, y_i) + l2/2 ||W - anchor||^2 and its gradient in closed form,
    over chunks of `rows` rows: two matmuls and a handful of fused passes (log_softmax,
    nll_loss, exp, one scatter) per chunk. Equal to autograd's loss and gradient up to rounding.

    Unchunked (rows >= N), a linear head's logits along a search line are z + t dz, so `along`
    gives the line search its values and slopes without any matmul per trial step.
    """

    def __init__(self, head: nn.Module, x: Tensor, y: Tensor, shift: Tensor | None,
                 class_weights: Tensor | None, l2: float, anchor: Tensor | float, rows: int | None = None) -> None:
        self.weight = head.weight.detach()  # aliases: `__call__` evaluates the head's current parameters
        self.bias = None if head.bias is None else head.bias.detach()
        self.head_input, self.matrix = CLOSED_FORM_HEADS[head.spec()["type"]](head)
        dtype = self.weight.dtype
        self.n, self.l2, self.anchor = x.shape[0], l2, anchor
        self.rows = self.n if rows is None else max(1, min(int(rows), self.n))
        self.chunked = self.rows < self.n
        self.linear = head.spec()["type"] == "linear" and not self.chunked  # the matmul-free line
        # unchunked: the head input once; chunked: per chunk (no second N x d copy)
        self.x = x if self.chunked else self.head_input(x).contiguous()
        self.y = y
        self.shift = None if shift is None else shift.to(dtype)
        self.class_weights = None if class_weights is None else class_weights.to(dtype)
        self.minus_one = torch.tensor(-1.0, dtype=dtype, device=x.device)
        self.logits_at: tuple[Tensor, Tensor] | None = None  # (flat point, its logits (N, C)), linear head

    def flat(self) -> Tensor:
        """The head's parameters as one vector (weight row-major, then bias)."""
        parts = [self.weight.reshape(-1)] + ([] if self.bias is None else [self.bias])
        return torch.cat(parts)

    def unflat(self, v: Tensor) -> tuple[Tensor, Tensor | None]:
        """(weight, bias) views into a flat vector."""
        size = self.weight.numel()
        return v[:size].view(self.weight.shape), None if self.bias is None else v[size:]

    def _inputs(self, start: int, stop: int) -> Tensor:
        return self.head_input(self.x[start:stop]) if self.chunked else self.x[start:stop]

    def _logits(self, x: Tensor, matrix: Tensor, bias: Tensor | None, shift: bool = True) -> Tensor:
        """x matrix^T + bias (+ shift), (rows, C)."""
        offset = bias  # b + shift enters as one per-class offset
        if shift and self.shift is not None:
            offset = self.shift if offset is None else offset + self.shift
        return x @ matrix.T if offset is None else torch.addmm(offset, x, matrix.T)

    def _softmax_ce(self, z: Tensor, y: Tensor, grad: bool) -> tuple[Tensor, Tensor | None]:
        """(sum_i w_i CE_i, R = w (softmax - onehot) or None) from logits z (rows, C), left intact."""
        log_p = torch.log_softmax(z, dim=1)
        loss = F.nll_loss(log_p, y, weight=self.class_weights, reduction="sum")
        if not grad:
            return loss, None
        residual = log_p.exp_()
        residual.index_put_((torch.arange(y.shape[0], device=y.device), y), self.minus_one, accumulate=True)
        if self.class_weights is not None:
            residual.mul_(self.class_weights[y][:, None])
        return loss, residual

    def evaluate(self, weight: Tensor, bias: Tensor | None, grad: bool = True,
                 keep_at: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(objective, dL/dW, dL/db) at (weight, bias); keep_at: remember the (unchunked) logits as
        those of that flat point."""
        matrix, backward = self.matrix(weight)
        loss = grad_v = grad_b = None  # sums over chunks (one chunk: exactly the unchunked arithmetic)
        for start, stop in _spans(self.n, self.rows):
            x, y = self._inputs(start, stop), self.y[start:stop]
            z = self._logits(x, matrix, bias)
            if keep_at is not None and not self.chunked:
                self.logits_at = (keep_at.clone(), z)
            part, residual = self._softmax_ce(z, y, grad)
            loss = part if loss is None else loss + part
            if grad:
                grad_v = torch.mm(residual.T, x) if grad_v is None else grad_v.addmm_(residual.T, x)
                if bias is not None:
                    grad_b = residual.sum(0) if grad_b is None else grad_b.add_(residual.sum(0))
            del z, residual
        loss = loss / self.n
        delta = weight - self.anchor if self.l2 else None
        if delta is not None:
            loss = loss + 0.5 * self.l2 * delta.square().sum()
        if not grad:
            return loss, None, None
        grad_w = backward(grad_v.div_(self.n))
        if delta is not None:
            grad_w.add_(delta, alpha=self.l2)
        return loss, grad_w, None if grad_b is None else grad_b.div_(self.n)

    def __call__(self, grad: bool = True) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(objective, dL/dW, dL/db) at the head's current parameters; no gradients if grad=False."""
        return self.evaluate(self.weight, self.bias, grad)

    def fun(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """(objective, flat gradient) at the flat point v."""
        weight, bias = self.unflat(v)
        loss, grad_w, grad_b = self.evaluate(weight, bias, keep_at=v if self.linear else None)
        return loss, grad_w.reshape(-1) if grad_b is None else torch.cat([grad_w.reshape(-1), grad_b])

    def along(self, v: Tensor, d: Tensor) -> LinearLine:
        """The objective on the line v + t d (unchunked linear head only)."""
        if self.logits_at is None or not torch.equal(self.logits_at[0], v):
            self.evaluate(*self.unflat(v), grad=False, keep_at=v)
        return LinearLine(self, v.clone(), d, self.logits_at[1])


class LinearLine:
    """`SoftmaxObjective` on v + t d for a linear head: logits z0 + t dz, one matmul for dz.
    Only the latest trial's logits and residual are kept (an earlier accepted step recomputes
    them from z0 + t dz without a matmul), so a search holds four N x C arrays, not 2 per trial."""

    def __init__(self, obj: SoftmaxObjective, v: Tensor, d: Tensor, z0: Tensor) -> None:
        self.obj, self.v, self.d, self.z0 = obj, v, d, z0
        self.d_weight, d_bias = obj.unflat(d)
        self.dz = obj._logits(obj.x, self.d_weight, d_bias, shift=False)
        self.delta = obj.unflat(v)[0] - obj.anchor if obj.l2 else None
        if self.delta is not None:  # l2/2 ||delta + t dW||^2 = l2/2 (a + 2 b t + c t^2)
            delta, dw = self.delta.reshape(-1), self.d_weight.reshape(-1)
            self.pen = (float(delta.dot(delta)), float(delta.dot(dw)), float(dw.dot(dw)))
        self.last: tuple[float, Tensor, Tensor] | None = None  # (t, logits, residual) of the latest trial

    def _trial(self, t: float) -> tuple[Tensor, Tensor, Tensor]:
        self.last = None  # free the previous trial's arrays first
        z = torch.add(self.z0, self.dz, alpha=t)
        loss, residual = self.obj._softmax_ce(z, self.obj.y, True)
        self.last = (t, z, residual)
        return loss, z, residual

    def __call__(self, t: float) -> tuple[float, float]:
        loss, _, residual = self._trial(t)
        slope = float(torch.dot(residual.view(-1), self.dz.view(-1))) / self.obj.n
        value = float(loss / self.obj.n)
        if self.delta is not None:
            a, b, c = self.pen
            value += 0.5 * self.obj.l2 * (a + 2.0 * t * b + t * t * c)
            slope += self.obj.l2 * (b + t * c)
        return value, slope

    def gradient(self, t: float) -> Tensor:
        obj = self.obj
        _, z, residual = self.last if self.last is not None and self.last[0] == t else self._trial(t)
        grad_w = torch.mm(residual.T, obj.x).div_(obj.n)
        if self.delta is not None:
            grad_w.add_(torch.add(self.delta, self.d_weight, alpha=t), alpha=obj.l2)
        obj.logits_at = (torch.add(self.v, self.d, alpha=t), z)
        self.last = None
        if obj.bias is None:
            return grad_w.reshape(-1)
        return torch.cat([grad_w.reshape(-1), residual.sum(0).div_(obj.n)])


def closed_form_objective(head: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, l2: float,
                          anchor: Tensor | float, rows: int | None = None) -> SoftmaxObjective | None:
    """The closed-form objective when the loss is a (shifted, class-weighted) CE and the head is known."""
    terms = getattr(loss_fn, "softmax_ce_terms", None)
    if terms is None or head.spec()["type"] not in CLOSED_FORM_HEADS:
        return None
    return SoftmaxObjective(head, x, y, *terms(), l2=l2, anchor=anchor, rows=rows)


@torch.no_grad()
def set_flat(params: list[Tensor], v: Tensor) -> None:
    """Copy the flat vector v into the parameters, in order (their storage is kept)."""
    offset = 0
    for p in params:
        p.copy_(v[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


def autograd_objective(head: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, l2: float,
                       anchor: Tensor | float, rows: int | None = None
                       ) -> Callable[[Tensor | None], tuple[Tensor, Tensor]]:
    """fun(v) -> (objective, flat gradient) by autograd, chunk by chunk: the loss's `per_sample`
    terms summed over chunks of `rows` rows (divided by N), then the L2 term. v = the head's
    parameters flattened in order (None: evaluate at the current parameters). A loss without
    `per_sample` is evaluated on all rows at once."""
    params = list(head.parameters())
    n = x.shape[0]
    per_sample = getattr(loss_fn, "per_sample", None)
    spans = _spans(n, n if rows is None or per_sample is None else max(1, int(rows)))

    def fun(v: Tensor | None) -> tuple[Tensor, Tensor]:
        if v is not None:
            set_flat(params, v)
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        grads = [torch.zeros_like(p) for p in params]
        with torch.enable_grad():
            for start, stop in spans:
                z = head(x[start:stop])
                if len(spans) == 1:  # all rows: the loss's own mean (exactly the unchunked arithmetic)
                    loss = loss_fn(z, y)
                else:
                    loss = per_sample(z, y[start:stop]).sum() / n
                if l2 and start == 0:
                    loss = loss + 0.5 * l2 * (head.weight - anchor).square().sum()
                for acc, part in zip(grads, torch.autograd.grad(loss, params, allow_unused=True)):
                    if part is not None:
                        acc += part
                total += loss.detach()
        return total.to(params[0].dtype), torch.cat([g.reshape(-1) for g in grads])

    return fun
