"""LT-Soups' trainable model and its training loop: AdamW, warm-up + cosine, EMA, best-of-N.

The loop is specific to LT-Soups (METHODS.md 2.4-2.5): a fixed number of steps measured on a
subset, a weight EMA updated every step, and N evaluations of the EMA weights on the
validation split keeping the best by mean per-class accuracy. Data decoding and the device
augmentation are the fine-tuning package's (`longtail.methods.finetune.augment`);
accelerate handles device placement and mixed precision.

Resumable: batch t and the augmentation of step t depend only on (seed, t), and with a
`checkpoint_dir` the loop saves weights, EMA, best-so-far, optimizer, schedule, counters and
RNG states (`longtail.methods.finetune.checkpoint` format, latest.json published last), so a
run started again continues from its last checkpoint and ends with the same weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Sampler

from longtail.errors import DataError
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


class StepBatches(Sampler[list[int]]):
    """Endless index batches where batch t depends only on (seed, t), so a run can restart at any t.

    Batches walk the fine-tuning trainer's per-epoch shuffle (`EpochPermutation`, epoch =
    t // batches per epoch, the incomplete last batch dropped); a set smaller than one batch
    is drawn with replacement from a generator seeded by (seed, t).
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int = 0) -> None:
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start

    def __iter__(self) -> Iterator[list[int]]:
        from longtail.methods.finetune.trainer import EpochPermutation

        per_epoch, bs = self.n // self.batch_size, self.batch_size
        shuffle, epoch, order = EpochPermutation(self.n, self.seed), None, []
        t = self.start
        while True:
            if per_epoch == 0:
                g = torch.Generator().manual_seed(self.seed * 100_003 + t)
                yield torch.randint(self.n, (bs,), generator=g).tolist()
            else:
                e, b = divmod(t, per_epoch)
                if e != epoch:
                    shuffle.use_epoch(e)
                    epoch, order = e, list(shuffle)
                yield order[b * bs:(b + 1) * bs]
            t += 1


def batches(dataset, batch_size: int, seed: int, num_workers: int = 0, start: int = 0):
    """Endless (x, y) batches from batch `start` on (see StepBatches); no draw from the global RNG."""
    loader = DataLoader(dataset, batch_sampler=StepBatches(len(dataset), batch_size, seed, start),
                        num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
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
    checkpoint_dir: str | Path | None = None,
    save_every: int | None = None,
    on_step: Callable[[int], None] | None = None,
) -> tuple[dict[str, Tensor], list[dict]]:
    """Train `trainable` for spec.steps; return the best validated EMA state dict and a log.

    `prepare` maps a raw batch to model inputs (device augmentation); `validate(model)`
    returns the balanced validation accuracy of a model (evaluated in eval mode). With
    `checkpoint_dir`, resume from its latest checkpoint and save one every `save_every` steps
    (None: at every validation; 0: never) and after the last step. `on_step(step)` is called
    after each step (and its checkpoint): progress hooks, or tests stopping a run midway.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from longtail.device import resolve_device
    from longtail.methods.finetune.checkpoint import load_checkpoint

    dev = resolve_device(device)
    acc = Accelerator(cpu=dev.type == "cpu", mixed_precision=precision if dev.type == "cuda" else "no")
    torch.manual_seed(spec.seed)
    opt = torch.optim.AdamW(trainable, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
    sched = scheduler(opt, spec)
    model, opt = acc.prepare(model, opt)
    loss_fn = loss_fn.to(acc.device)
    net = acc.unwrap_model(model)
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(spec.ema_decay))
    ckpt = _Checkpointer(checkpoint_dir, net, ema, trainable, opt, sched) if checkpoint_dir is not None else None
    saved = load_checkpoint(checkpoint_dir) if ckpt is not None else None
    start, best, best_state, log = ckpt.restore(saved) if saved is not None else (0, -math.inf, None, [])
    checks = eval_points(spec.steps, spec.n_evals)
    stream = batches(train_set, spec.batch_size, spec.seed, num_workers, start)
    rng_devices = [acc.device] if acc.device.type == "cuda" else []
    model.train()
    for step in tqdm(range(start + 1, spec.steps + 1), initial=start, total=spec.steps, disable=not progress,
                     desc="train", leave=False):
        x, y = next(stream)
        x, y = x.to(acc.device), y.to(acc.device)
        with torch.random.fork_rng(devices=rng_devices):  # augmentation/dropout: a function of (seed, step)
            torch.manual_seed(spec.seed * 1_000_003 + step)
            with acc.autocast():
                loss = loss_fn(model(prepare(x)).float(), y)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        sched.step()
        ema.update_parameters(net)
        if step in checks:
            score = validate(ema.module)
            log.append({"step": step, "loss": float(loss.detach()), "val_class_mean": score, "lr": sched.get_last_lr()[0]})
            if score > best or best_state is None:
                best = score
                best_state = {k: v.detach().float().cpu().clone() for k, v in ema.module.state_dict().items()
                              if v.is_floating_point()}
            model.train()
        due = step in checks if save_every is None else bool(save_every) and step % save_every == 0
        if ckpt is not None and (due or step == spec.steps):
            ckpt.save(step, best, best_state, log)
        if on_step is not None:
            on_step(step)
    return best_state, log


class _Checkpointer:
    """Saves/restores one training loop: trained, EMA and best weights of the `trainable`
    tensors (one safetensors file, prefixes model./ema./best.) and the rest via torch.save."""

    def __init__(self, folder, net: nn.Module, ema: AveragedModel, trainable, opt, sched) -> None:
        ids = {id(p) for p in trainable}
        self.names = [n for n, p in net.named_parameters() if id(p) in ids]
        self.folder, self.net, self.ema, self.opt, self.sched = Path(folder), net, ema, opt, sched

    def save(self, step: int, best: float, best_state: dict[str, Tensor] | None, log: list[dict]) -> None:
        from longtail.methods.finetune.checkpoint import rng_state, save_checkpoint

        params, ema_params = dict(self.net.named_parameters()), dict(self.ema.module.named_parameters())
        tensors = {**{f"model.{n}": params[n] for n in self.names}, **{f"ema.{n}": ema_params[n] for n in self.names}}
        if best_state is not None:
            tensors.update({f"best.{n}": best_state[n] for n in self.names})
        training = {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "rng": rng_state(),
                    "step": step, "best": best, "log": log, "ema_n_averaged": self.ema.n_averaged}
        save_checkpoint(self.folder, step, tensors, training)

    def restore(self, saved) -> tuple[int, float, dict[str, Tensor] | None, list[dict]]:
        """Load a checkpoint into the loop's objects; (step, best score, best state, log)."""
        from longtail.methods.finetune.checkpoint import set_rng_state

        tensors, training = saved
        has_best = f"best.{self.names[0]}" in tensors
        expected = {f"{p}.{n}" for p in ("model", "ema", *(("best",) if has_best else ())) for n in self.names}
        if set(tensors) != expected:
            raise DataError(f"checkpoint in {self.folder} does not match this model's trainable tensors")
        params, ema_params = dict(self.net.named_parameters()), dict(self.ema.module.named_parameters())
        with torch.no_grad():
            for n in self.names:
                params[n].copy_(tensors[f"model.{n}"])
                ema_params[n].copy_(tensors[f"ema.{n}"])
            self.ema.n_averaged.copy_(training["ema_n_averaged"])
        self.opt.load_state_dict(training["optimizer"])
        self.sched.load_state_dict(training["scheduler"])
        set_rng_state(training["rng"])
        best_state = None
        if has_best:  # tensors outside `trainable` never change: the EMA's current ones are the best's
            best_state = {k: v.detach().float().cpu().clone() for k, v in self.ema.module.state_dict().items()
                          if v.is_floating_point()}
            best_state.update({n: tensors[f"best.{n}"].float() for n in self.names})
        return int(training["step"]), float(training["best"]), best_state, list(training["log"])


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
