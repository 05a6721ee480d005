"""Full-batch L-BFGS and minibatch AdamW trainers for probe heads (registry `OPTIMIZERS`).

Each trainer is `fn(head, loss_fn, x, y, cfg, generator) -> info dict`; `cfg` is a ProbeConfig.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from longtail.registry import Registry

if TYPE_CHECKING:
    from longtail.methods.probe import ProbeConfig

OPTIMIZERS: Registry = Registry("probe optimizer")


def _l2_anchor(head: nn.Module, cfg: ProbeConfig) -> Tensor | float:
    """What the L2 penalty pulls W towards: 0, or a frozen copy of the initial weights (L2-SP)."""
    return head.weight.detach().clone() if cfg.l2_target == "init" else 0.0


@OPTIMIZERS.register("lbfgs")
def _train_lbfgs(head: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, cfg: ProbeConfig,
                 generator: torch.Generator) -> dict[str, Any]:
    """Full-batch L-BFGS with strong-Wolfe line search on mean loss + l2/2 ||W||^2."""
    l2 = cfg.l2
    if l2 is None:  # scikit-learn: C * sum(loss) + ||W||^2 / 2  ==  N C (mean loss + ||W||^2 / (2 N C))
        l2 = 1.0 / x.shape[0] if head.spec()["type"] == "linear" else 0.0
    opt = torch.optim.LBFGS(head.parameters(), lr=cfg.lr or 1.0, max_iter=cfg.max_iter,
                            max_eval=int(cfg.max_iter * 1.25) + 1, tolerance_grad=cfg.tol,
                            tolerance_change=1e-9, history_size=cfg.history_size,
                            line_search_fn="strong_wolfe")

    anchor = _l2_anchor(head, cfg)

    def objective() -> Tensor:
        loss = loss_fn(head(x), y)
        return loss + 0.5 * l2 * (head.weight - anchor).square().sum() if l2 else loss

    def closure() -> Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    if cfg.max_iter > 0:
        opt.step(closure)
    state = opt.state[head.weight]
    with torch.no_grad():
        final = float(objective())
    return {"iterations": int(state.get("n_iter", 0)), "evaluations": int(state.get("func_evals", 0)),
            "l2": float(l2), "final_objective": final}


@OPTIMIZERS.register("adamw")
def _train_adamw(head: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, cfg: ProbeConfig,
                 generator: torch.Generator) -> dict[str, Any]:
    """Minibatch AdamW with a cosine learning-rate schedule; batches drawn from the seeded generator."""
    n = x.shape[0]
    steps_per_epoch = -(-n // cfg.batch_size)
    anchor = _l2_anchor(head, cfg) if cfg.l2_target == "init" else None
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr or 1e-2,
                            weight_decay=0.0 if anchor is not None else cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.epochs * steps_per_epoch))
    last = float("nan")
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for idx in order.split(cfg.batch_size):
            opt.zero_grad()
            loss = loss_fn(head(x[idx]), y[idx])
            if anchor is not None:  # L2-SP: explicit pull towards the initial weights
                loss = loss + 0.5 * cfg.weight_decay * (head.weight - anchor).square().sum()
            loss.backward()
            opt.step()
            sched.step()
        last = float(loss.detach())
    return {"steps": cfg.epochs * steps_per_epoch, "final_loss": last}
