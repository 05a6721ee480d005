"""LT-Soups' trainable model and its training loop: AdamW, warm-up + cosine, EMA, best-of-N.

The loop is specific to LT-Soups (METHODS.md 2.4-2.5): a fixed number of steps measured on a
subset, a weight EMA updated every step, and N evaluations of the EMA weights on the
validation split keeping the best by mean per-class accuracy. Data decoding and the device
augmentation are the fine-tuning package's (`longtail.methods.finetune.augment`);
accelerate handles device placement and mixed precision.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, RandomSampler

from longtail.eval.metrics import balanced_accuracy
from longtail.methods.heads import CosineHead


class SoupModel(nn.Module):
    """CLIP image encoder (HF vision tower) + text-initialised cosine classifier.

    Its state dict (keys 'encoder.*', 'head.weight') is what ingredients store and soups average.
    """

    def __init__(self, encoder: nn.Module, head: CosineHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def features(self, pixels: Tensor) -> Tensor:
        return self.encoder(pixel_values=pixels).pooler_output  # METHODS.md 1.1 feature

    def forward(self, pixels: Tensor) -> Tensor:
        return self.head(self.features(pixels))


def zero_shot_model(backbone, class_names: list[str], templates: str, scale: float) -> SoupModel:
    """theta_0: the pretrained encoder with the classifier initialised from class-name text."""
    from longtail.models.templates import get_templates

    weight = backbone.text_embeddings(class_names, get_templates(templates)).float().cpu()
    head = CosineHead(len(class_names), weight.shape[1], weight=weight, scale=scale)
    return SoupModel(copy.deepcopy(backbone.model.vision_model), head)


@dataclass
class TrainSpec:
    """One training run: steps, AdamW, warm-up + cosine schedule, EMA, selection checks."""

    steps: int
    lr: float = 3e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    batch_size: int = 128
    ema_decay: float = 0.99
    n_evals: int = 5
    final_lr_fraction: float = 0.1  # cosine ends at 0.1 * lr
    seed: int = 0


def ingredient_steps(subset_size: int, batch_size: int, epochs: int, min_steps: int) -> int:
    """T_i = epochs * (floor(|subset| / batch) + 1), at least `min_steps` (METHODS.md 2.4)."""
    return max(epochs * (subset_size // batch_size + 1), min_steps)


def warmup_steps(steps: int) -> int:
    """w = max(20, floor(0.01 T)), never more than T - 1."""
    return max(min(max(20, int(0.01 * steps)), steps - 1), 0)


def scheduler(opt: torch.optim.Optimizer, spec: TrainSpec) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up from 1e-6 lr to lr, then cosine from lr to final_lr_fraction * lr."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    w = warmup_steps(spec.steps)
    cosine = CosineAnnealingLR(opt, T_max=max(spec.steps - w, 1), eta_min=spec.final_lr_fraction * spec.lr)
    if w == 0:
        return cosine
    return SequentialLR(opt, [LinearLR(opt, 1e-6, 1.0, total_iters=w), cosine], milestones=[w])


def eval_points(steps: int, n_evals: int) -> set[int]:
    """Steps after which the EMA weights are validated: every floor(T / n) steps, n times."""
    every = max(steps // n_evals, 1)
    return {min(steps, every * (j + 1)) for j in range(n_evals)}


def batches(dataset, batch_size: int, seed: int, num_workers: int = 0):
    """Endless batches drawn without replacement (with replacement if smaller than a batch)."""
    g = torch.Generator().manual_seed(seed)
    small = len(dataset) < batch_size
    sampler = RandomSampler(dataset, replacement=small, num_samples=batch_size if small else None, generator=g)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=not small,
                        num_workers=num_workers, persistent_workers=num_workers > 0)
    while True:
        yield from loader


@torch.no_grad()
def predict(forward: Callable[[Tensor], Tensor], dataset, batch_size: int, device,
            num_workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, C), labels (N,)) of `forward` over a (input, label) dataset."""
    outs, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        outs.append(forward(x.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(outs).numpy(), torch.cat(labels).numpy()


def train_with_selection(
    model: nn.Module,
    trainable: list[nn.Parameter],
    train_set,
    loss_fn: nn.Module,
    prepare: Callable[[Tensor], Tensor],
    validate: Callable[[nn.Module], float],
    spec: TrainSpec,
    precision: str = "no",
    device: str = "auto",
    progress: bool = False,
    num_workers: int = 0,
) -> tuple[dict[str, Tensor], list[dict]]:
    """Train `trainable` for spec.steps; return the best validated EMA state dict and a log.

    `prepare` maps a raw batch to model inputs (device augmentation); `validate(model)`
    returns the balanced validation accuracy of a model (evaluated in eval mode).
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from longtail.device import resolve_device

    dev = resolve_device(device)
    acc = Accelerator(cpu=dev.type == "cpu", mixed_precision=precision if dev.type == "cuda" else "no")
    torch.manual_seed(spec.seed)
    opt = torch.optim.AdamW(trainable, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
    sched = scheduler(opt, spec)
    model, opt = acc.prepare(model, opt)
    loss_fn = loss_fn.to(acc.device)
    ema = AveragedModel(acc.unwrap_model(model), multi_avg_fn=get_ema_multi_avg_fn(spec.ema_decay))
    checks = eval_points(spec.steps, spec.n_evals)
    best, best_state, log = -math.inf, None, []
    stream = batches(train_set, spec.batch_size, spec.seed, num_workers)
    model.train()
    for step in tqdm(range(1, spec.steps + 1), disable=not progress, desc="train", leave=False):
        x, y = next(stream)
        x, y = x.to(acc.device), y.to(acc.device)
        with acc.autocast():
            loss = loss_fn(model(prepare(x)).float(), y)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        sched.step()
        ema.update_parameters(acc.unwrap_model(model))
        if step in checks:
            score = validate(ema.module)
            log.append({"step": step, "loss": float(loss.detach()), "val_class_mean": score, "lr": sched.get_last_lr()[0]})
            if score > best or best_state is None:
                best = score
                best_state = {k: v.detach().float().cpu().clone() for k, v in ema.module.state_dict().items()
                              if v.is_floating_point()}
            model.train()
    return best_state, log


def validator(prepare_eval: Callable[[Tensor], Tensor], val_set, batch_size: int, device,
              num_workers: int = 0) -> Callable[[nn.Module], float]:
    """validate(model) -> mean per-class accuracy on `val_set` (raw inputs through prepare_eval)."""

    def validate(model: nn.Module) -> float:
        was_training = model.training
        model.eval()
        logits, labels = predict(lambda x: model(prepare_eval(x)), val_set, batch_size, device, num_workers)
        model.train(was_training)
        return balanced_accuracy(logits, labels, logits.shape[1])

    return validate
