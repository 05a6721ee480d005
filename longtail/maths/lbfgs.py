"""L-BFGS with a strong-Wolfe line search on a flat torch vector, for objectives whose values
along a search line are cheaper than full gradients.

The iteration, line search and stopping rule are those of `torch.optim.LBFGS(line_search_fn=
"strong_wolfe")` (the line search is a port of torch's `_strong_wolfe`, itself from Torch7's
lswolfe.lua): stop when max |gradient| <= tol, when a step or the change of the objective is
below `tolerance_change`, or after `max_iter` iterations / `max_eval` objective evaluations.
From the same start, this follows torch.optim.LBFGS step for step (tests/test_solvers.py).

Why not torch.optim.LBFGS: its line search asks for the full gradient at every trial step.
Here the line search only needs phi(t) = f(x + t d) and phi'(t) = g(x + t d) . d, and the full
gradient is asked for once per iteration, at the accepted step. For a linear model that is
the difference between two matrix products per trial step and none (the logits along the line
are z + t * dz, with dz computed once per iteration): the probe solver's `SoftmaxObjective`
uses that. A plain `fun(x) -> (f, g)` gets a generic line that evaluates the gradient.

Optional preconditioning: the initial inverse Hessian of every iteration is gamma M instead of
gamma I, M a fixed symmetric positive-definite matrix (`precondition(v) = M v`). The objective
and the stopping rule do not involve M; only the path, and the number of iterations, do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


class Line(Protocol):
    """The objective along x + t d: values and slopes at trial steps, gradient at the chosen one."""

    def __call__(self, t: float) -> tuple[float, float]:
        """(f(x + t d), g(x + t d) . d)."""

    def gradient(self, t: float) -> Tensor:
        """g(x + t d) for a step t > 0 already passed to __call__ (the accepted step)."""


@dataclass
class LBFGSResult:
    """Final point, objective and gradient, counts, and why the iteration stopped."""

    x: Tensor
    f: float
    grad: Tensor
    iterations: int
    evaluations: int
    stop: str


class _GenericLine:
    """A Line from fun(x) -> (f, g): every trial step evaluates (and keeps) the full gradient."""

    def __init__(self, fun: Callable[[Tensor], tuple[Tensor | float, Tensor]], x: Tensor, d: Tensor) -> None:
        self.fun, self.x, self.d = fun, x, d
        self.grads: dict[float, Tensor] = {}

    def __call__(self, t: float) -> tuple[float, float]:
        f, g = self.fun(self.x + t * self.d)
        self.grads[t] = g
        return float(f), float(g.dot(self.d))

    def gradient(self, t: float) -> Tensor:
        return self.grads[t]


def _cubic_interpolate(x1: float, f1: float, g1: float, x2: float, f2: float, g2: float,
                       bounds: tuple[float, float] | None = None) -> float:
    """Minimiser of the cubic through (x1, f1, g1), (x2, f2, g2), clipped to bounds (torch's rule)."""
    lo, hi = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 ** 2 - g1 * g2
    if d2_square < 0:
        return (lo + hi) / 2.0
    d2 = math.sqrt(d2_square)
    if x1 <= x2:
        min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(min_pos, lo), hi)


def strong_wolfe(phi: Callable[[float], tuple[float, float]], t: float, f: float, gtd: float, d_norm: float,
                 c1: float = 1e-4, c2: float = 0.9, tolerance_change: float = 1e-9,
                 max_ls: int = 25) -> tuple[float, float, int]:
    """Step t satisfying the strong Wolfe conditions for phi (torch's `_strong_wolfe` on scalars).

    phi(t) -> (value, slope); f, gtd: value and slope at 0; d_norm: max |d| (bracket-size test).
    Returns (t, phi(t) value, number of phi evaluations).
    """
    f_new, gtd_new = phi(t)
    evals, ls_iter, done = 1, 0, False
    t_prev, f_prev, gtd_prev = 0.0, f, gtd
    bracket = bracket_f = bracket_gtd = None
    while ls_iter < max_ls:  # bracketing phase
        if f_new > f + c1 * t * gtd or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f, bracket_gtd = [t_prev, t], [f_prev, f_new], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, done = [t], [f_new], True
            break
        if gtd_new >= 0:
            bracket, bracket_f, bracket_gtd = [t_prev, t], [f_prev, f_new], [gtd_prev, gtd_new]
            break
        min_step, max_step = t + 0.01 * (t - t_prev), t * 10
        t_next = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        t_prev, f_prev, gtd_prev, t = t, f_new, gtd_new, t_next
        f_new, gtd_new = phi(t)
        evals += 1
        ls_iter += 1
    if ls_iter == max_ls:
        bracket, bracket_f, bracket_gtd = [0.0, t], [f, f_new], [gtd, gtd_new]

    insufficient = False
    low, high = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:  # zoom phase
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:  # too close to an end of the bracket
            if insufficient or t >= max(bracket) or t <= min(bracket):
                t = max(bracket) - eps if abs(t - max(bracket)) < abs(t - min(bracket)) else min(bracket) + eps
                insufficient = False
            else:
                insufficient = True
        else:
            insufficient = False
        f_new, gtd_new = phi(t)
        evals += 1
        ls_iter += 1
        if f_new > f + c1 * t * gtd or f_new >= bracket_f[low]:
            bracket[high], bracket_f[high], bracket_gtd[high] = t, f_new, gtd_new
            low, high = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high] - bracket[low]) >= 0:
                bracket[high], bracket_f[high], bracket_gtd[high] = bracket[low], bracket_f[low], bracket_gtd[low]
            bracket[low], bracket_f[low], bracket_gtd[low] = t, f_new, gtd_new
    return bracket[low], bracket_f[low], evals


class _History:
    """The last m curvature pairs (s_i, y_i) as rows of buffers, and -H g in the compact form.

    H = gamma M + [S, gamma M Y] K [S, gamma M Y]^T (Byrd, Nocedal & Schnabel 1994, Thm 2.2,
    with initial matrix gamma M; K from the small matrices S^T Y and Y^T M Y) gives the
    direction of the two-loop recursion with a handful of matrix-vector products instead of 4m
    vector operations per iteration (each a parallel kernel; on a busy CPU every kernel waits
    for all its threads). The m x m algebra runs in float64.
    """

    def __init__(self, size: int, like: Tensor, precondition: Callable[[Tensor], Tensor] | None) -> None:
        self.size, self.precondition = size, precondition
        self.s = like.new_zeros(size + 1, like.numel())  # one spare row for the candidate pair
        self.y = like.new_zeros(size + 1, like.numel())
        self.my = self.y if precondition is None else like.new_zeros(size + 1, like.numel())  # M y_i
        self.sy = like.new_zeros(size + 1, size + 1, dtype=torch.float64)  # sy[i, j] = s_i . y_j
        self.ymy = like.new_zeros(size + 1, size + 1, dtype=torch.float64)  # y_i . M y_j
        self.order: list[int] = []  # slots, oldest first
        self.gamma = 1.0
        self.mg_last: Tensor | None = None  # M g of the last direction
        self.mg_next: Tensor | None = None  # M g of the gradient passed to update, for direction

    def update(self, d: Tensor, t: float, g: Tensor, g_prev: Tensor) -> None:
        """Add the pair s = t d, y = g - g_prev if its curvature s.y exceeds 1e-10 (torch's test)."""
        slot = next(i for i in range(self.size + 1) if i not in self.order)
        s_new = torch.mul(d, t, out=self.s[slot])
        y_new = torch.sub(g, g_prev, out=self.y[slot])
        if self.precondition is not None:  # M y = M g - M g_prev: one application of M per iteration
            self.mg_next = self.precondition(g)
        ys = float(y_new.dot(s_new))
        if ys <= 1e-10:
            return
        if len(self.order) == self.size:
            self.order.pop(0)
        self.order.append(slot)
        if self.precondition is not None:
            torch.sub(self.mg_next, self.mg_last, out=self.my[slot])
        self.sy[:, slot] = (self.s @ y_new).double()
        self.sy[slot, :] = (self.y @ s_new).double()
        self.ymy[:, slot] = self.ymy[slot, :] = (self.y @ self.my[slot]).double()
        self.gamma = ys / float(self.ymy[slot, slot])

    def direction(self, g: Tensor) -> Tensor:
        """-H g (-M g before any pair is stored), for the gradient last passed to `update` if any."""
        if self.precondition is None:
            mg = g
        else:
            mg = self.mg_next if self.mg_next is not None else self.precondition(g)
            self.mg_last, self.mg_next = mg, None
        if not self.order:
            return mg.neg()
        idx = torch.tensor(self.order, device=g.device)
        sy = self.sy[idx][:, idx]
        upper = torch.triu(sy)
        a = (self.s @ g).double()[idx]
        b = self.gamma * (self.my @ g).double()[idx]  # gamma (M Y)^T g = gamma Y^T M g
        u = torch.linalg.solve_triangular(upper, a[:, None], upper=True)
        rhs = torch.diag(sy)[:, None] * u + self.gamma * (self.ymy[idx][:, idx] @ u) - b[:, None]
        p = torch.linalg.solve_triangular(upper.T, rhs, upper=False)
        coef_s = self.sy.new_zeros(self.size + 1)
        coef_y = self.sy.new_zeros(self.size + 1)
        coef_s[idx], coef_y[idx] = -p[:, 0], self.gamma * u[:, 0]
        d = torch.addmv(self.s.T @ coef_s.to(g.dtype), self.my.T, coef_y.to(g.dtype))
        return d.add_(mg, alpha=-self.gamma)


def _max_abs(v: Tensor) -> float:
    return float(torch.linalg.vector_norm(v, float("inf")))


def minimize_lbfgs(
    fun: Callable[[Tensor], tuple[Tensor | float, Tensor]],
    x0: Tensor,
    *,
    along: Callable[[Tensor, Tensor], Line] | None = None,
    precondition: Callable[[Tensor], Tensor] | None = None,
    lr: float = 1.0,
    max_iter: int = 1000,
    max_eval: int | None = None,
    tol: float = 1e-4,
    tolerance_change: float = 1e-9,
    history_size: int = 10,
) -> LBFGSResult:
    """Minimise `fun` (x -> (objective, gradient)) from x0 (not modified).

    `along(x, d)` optionally gives a cheaper Line for the search along d from x (the start is
    always evaluated with `fun`). `precondition(v) = M v`, M a fixed symmetric positive-definite
    matrix, makes gamma M the initial inverse Hessian of every iteration instead of gamma I
    (Nocedal & Wright 2006, §7.2; gamma = s'y / y'My): same objective, same stopping rule, other
    path. max_eval defaults to torch's int(1.25 max_iter).
    """
    max_eval = int(max_iter * 1.25) if max_eval is None else max_eval
    x = x0.detach().clone()
    f, g = fun(x)
    f, evals = float(f), 1
    if max_iter <= 0:
        return LBFGSResult(x, f, g, 0, evals, "max_iter")
    if _max_abs(g) <= tol:
        return LBFGSResult(x, f, g, 0, evals, "gradient")

    history = _History(history_size, x, precondition)
    d = g_prev = None
    t = lr
    n_iter, stop = 0, "max_iter"
    while n_iter < max_iter:
        n_iter += 1
        if n_iter > 1:
            history.update(d, t, g, g_prev)
        d = history.direction(g)
        g_prev, f_prev = g, f
        t = min(1.0, 1.0 / float(d.abs().sum())) * lr if n_iter == 1 else lr  # torch's rule (d = -g there)
        gtd = float(g.dot(d))
        if gtd > -tolerance_change:
            stop = "directional derivative"
            break
        line = along(x, d) if along is not None else _GenericLine(fun, x, d)
        d_norm = _max_abs(d)
        t, f, ls_evals = strong_wolfe(line, t, f, gtd, d_norm, max_ls=max_eval - evals)
        g = g_prev if t == 0 else line.gradient(t)
        x.add_(d, alpha=t)
        evals += ls_evals
        if n_iter == max_iter:
            break
        if evals >= max_eval:
            stop = "max_eval"
            break
        if _max_abs(g) <= tol:
            stop = "gradient"
            break
        if abs(t) * d_norm <= tolerance_change:
            stop = "step"
            break
        if abs(f - f_prev) < tolerance_change:
            stop = "objective change"
            break
    return LBFGSResult(x, f, g, n_iter, evals, stop)
