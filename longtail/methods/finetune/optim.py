"""Optimizers, learning-rate schedules, selection points and the weight EMA of the fine-tuning engine.

Schedules (docs/methods.md §1.4, §2.4): a linear warmup, then a cosine from lr down to
`final_lr_fraction * lr` (or a constant lr). With `schedule_unit="epoch"` the cosine moves once
per epoch and the warmup goes (step + 1) / w (LIFT's code); with `"step"` they are torch's
chainable `LinearLR` (from `warmup_start_factor * lr`) followed by `CosineAnnealingLR`, per
optimizer step (the LT-Soups code).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from longtail.registry import Registry

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
OPTIMIZERS.register("sgd", lambda params, cfg: torch.optim.SGD(
    params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay))
OPTIMIZERS.register("adamw", lambda params, cfg: torch.optim.AdamW(
    params, lr=cfg.lr, weight_decay=cfg.weight_decay))  # betas (0.9, 0.999), eps 1e-8

SCHEDULES: Registry[Callable[[float], float]] = Registry("lr schedule")  # progress in [0,1] -> factor
SCHEDULES.register("cosine", lambda p: 0.5 * (1.0 + math.cos(math.pi * p)))
SCHEDULES.register("constant", lambda p: 1.0)


def warmup_length(cfg, steps_per_epoch: int) -> int:
    """Warmup in optimizer steps: `warmup_steps`, else `warmup_epochs` whole epochs' worth."""
    if cfg.warmup_steps is not None:
        return int(cfg.warmup_steps)
    return round(cfg.warmup_epochs * steps_per_epoch)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int,
                   total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The LR schedule of `cfg` over `total_steps` optimizer steps (stepped once per step)."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearLR, SequentialLR

    warm = warmup_length(cfg, steps_per_epoch)
    final = cfg.final_lr_fraction
    if cfg.schedule_unit == "step":
        if cfg.lr_schedule == "constant":
            if warm == 0:
                return LambdaLR(optimizer, lambda step: 1.0)
            return LinearLR(optimizer, cfg.warmup_start_factor, 1.0, total_iters=warm)
        # built in this order, as the LT-Soups code, so the chained float values match it
        cosine = CosineAnnealingLR(optimizer, T_max=max(total_steps - warm, 1), eta_min=final * cfg.lr)
        if warm == 0:
            return cosine
        linear = LinearLR(optimizer, cfg.warmup_start_factor, 1.0, total_iters=warm)
        return SequentialLR(optimizer, [linear, cosine], milestones=[warm])
    schedule = SCHEDULES.get(cfg.lr_schedule)
    epochs = max(math.ceil(total_steps / max(steps_per_epoch, 1)), 1)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return final + (1.0 - final) * schedule((step // steps_per_epoch) / epochs)

    return LambdaLR(optimizer, factor)


def eval_points(steps: int, n_evals: int) -> list[int]:
    """Optimizer steps after which the weights are validated: every floor(T / n) steps, n times."""
    if n_evals <= 0:
        return []
    every = max(steps // n_evals, 1)
    return sorted({min(steps, every * (j + 1)) for j in range(n_evals)})


class WeightEMA:
    """Exponential moving average of a list of tensors: the first update copies, then
    ema <- ema + (1 - decay) (p - ema) (torch's `get_ema_multi_avg_fn`, as LT-Soups uses)."""

    def __init__(self, params: list[nn.Parameter], decay: float) -> None:
        self.params, self.decay = params, float(decay)
        self.shadow = [p.detach().clone() for p in params]
        self.count = 0

    @torch.no_grad()
    def update(self) -> None:
        current = [p.detach() for p in self.params]
        if self.count == 0:
            for s, p in zip(self.shadow, current):
                s.copy_(p)
        else:
            torch._foreach_lerp_(self.shadow, current, 1.0 - self.decay)
        self.count += 1

    def state(self) -> list[Tensor]:
        return self.shadow


def swap_in(params: list[nn.Parameter], values: list[Tensor]) -> list[Tensor]:
    """Copy `values` into `params`; return the previous values (to put them back later)."""
    with torch.no_grad():
        old = [p.detach().clone() for p in params]
        for p, v in zip(params, values):
            p.copy_(v)
    return old
