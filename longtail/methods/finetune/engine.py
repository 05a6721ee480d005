"""The one fine-tuning loop (Hugging Face accelerate: AMP, gradient accumulation, DDP).

Every trained model of the package goes through `train_loop`: `fit` runs (LIFT, LIFT+, Sage,
baselines), LT-Soups ingredients and LT-Soups stage 2. Options (all in FitConfig): epochs or
a step budget, warmup + cosine / constant LR, SGD / AdamW, a weight EMA, best-of-N
selection on a balanced validation split, checkpoints that resume bit-identically.

`batch_size` is the global batch per optimizer step: accelerate splits each loaded batch
across processes (split_batches=True), so 1 GPU and 8 GPUs see the same global batches.
Batch b of epoch e depends only on (seed, e, b) (`data.EpochBatches` over the epoch's index list
from `cfg.sampler`, `longtail.data.sampling`) and the augmentation of micro-batch m only on
(seed, m, rank), so `--resume` continues exactly where a run stopped. With a `tracker`
(`methods.tracking.RunTracker`) the loop logs the loss and lr of every optimizer step, the
validation score at every selection point and the epoch summaries.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from longtail.data.sampling import make_sampler
from longtail.errors import ConfigError, DataError
from longtail.methods.finetune import checkpoint as ckpt
from longtail.methods.finetune.augment import DecodedImages, decode_transform, train_augmentation
from longtail.methods.finetune.data import EpochBatches
from longtail.methods.finetune.optim import (
    OPTIMIZERS,
    WeightEMA,
    eval_points,
    make_scheduler,
    swap_in,
)
from longtail.methods.finetune.predict import evaluation_logits


@dataclass
class FitResult:
    model: Any  # FineTuneModel with the final (selected) weights
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None
    interrupted: bool = False
    selection: list[dict[str, Any]] = field(default_factory=list)
    splits: Any = None


@dataclass
class LoopState:
    """Everything a checkpoint restores besides tensors: position, logs, selection."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # micro-batches done in the current epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: tuple = (0.0, 0, 0, 0.0)  # loss sum, correct, seen, seconds of the current epoch
    seconds: float = 0.0  # training seconds of the epochs logged so far (across resumes)
    best: float = -math.inf
    selection: list[dict[str, Any]] = field(default_factory=list)


def make_accelerator(cfg):
    """accelerate's Accelerator for `cfg` (mixed precision on CUDA only; CPU runs in fp32)."""
    from accelerate import Accelerator, DataLoaderConfiguration

    from longtail.device import resolve_device

    device = resolve_device(cfg.device)
    precision = cfg.precision
    if device.type != "cuda":
        precision = "no"
    elif precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return Accelerator(cpu=device.type == "cpu", mixed_precision=precision,
                       gradient_accumulation_steps=cfg.grad_accum,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


def train_loop(cfg, acc, model, criterion, train_set, val_set=None, run=None,
               stop_after_steps: int | None = None,
               on_step: Callable[[int], None] | None = None, prefix=None, tracker=None) -> FitResult:
    """Train `model` (its trainable parameters) on `train_set` per `cfg`; with a `run`
    (longtail.runs.Run) checkpoint into it and resume from its latest checkpoint.

    stop_after_steps: stop (as if interrupted) after that many optimizer steps in total;
    on_step(step) runs after every optimizer step and its checkpoint. prefix: a
    `prefix.PrefixSource`: batches are cached frozen-prefix states of `train_set`'s images (one
    cached view per image and epoch) fed to `model(states, from_depth=depth)`, not pixels.
    tracker: a `methods.tracking.RunTracker` (or None) that receives the training curves.
    """
    if cfg.micro_batch % acc.num_processes:
        raise ConfigError(f"batch_size/grad_accum = {cfg.micro_batch} must be divisible by the "
                          f"{acc.num_processes} processes")
    spec = model.input_spec
    drop_last = cfg.steps is not None
    sampling = make_sampler(cfg.sampler, train_set.labels, cfg.seed, cfg.sampler_options)
    n_epoch = sampling.epoch_length  # draws per epoch: len(train_set) unless the sampler repeats images
    per_epoch = EpochBatches.per_epoch(n_epoch, cfg.micro_batch, drop_last)
    steps_per_epoch = math.ceil(per_epoch / cfg.grad_accum)
    total = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    n_epochs = math.ceil(total / steps_per_epoch)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params and total > 0:
        raise ConfigError("nothing to train: the adapter and head are frozen (set epochs=0 to only evaluate)")
    optimizer = OPTIMIZERS.get(cfg.optimizer)(params, cfg) if params else None
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch, total) if optimizer else None
    if optimizer is not None:
        model, optimizer = acc.prepare(model, optimizer)
    else:
        model = model.to(acc.device)
    net = acc.unwrap_model(model)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    stats = net.stat_buffers() if hasattr(net, "stat_buffers") else {}  # BN statistics that train
    criterion = criterion.to(acc.device)
    ema = WeightEMA(params, cfg.ema_decay) if cfg.ema_decay is not None and params else None
    checks = set(eval_points(total, cfg.n_evals)) if val_set is not None else set()
    state, best_state = LoopState(), None
    saved = ckpt.load_checkpoint(run.dir) if run is not None else None
    if saved is not None:
        best_state = _restore(saved, state, params, names, ema, optimizer, scheduler, stats)
        if acc.is_main_process:
            import sys

            print(f"resuming {run.dir} from step {state.step} of {total}", file=sys.stderr)
    decode = decode_transform(cfg.decode_size or round(spec["size"] * cfg.test_resize_ratio),
                              spec["mean"], spec["std"], cfg.interpolation)
    images = DecodedImages(train_set, decode)
    rank, world = acc.process_index, acc.num_processes
    rng_devices = [acc.device] if acc.device.type == "cuda" else []
    bar = _progress(cfg, acc, total, state.step)
    interrupted, images_seen, train_time = False, 0, 0.0

    def save() -> None:
        if run is not None:
            _checkpoint(acc, run, params, names, ema, best_state, optimizer, scheduler, state, stats)

    while state.step < total and not interrupted:
        epoch = state.epoch
        augment = train_augmentation(cfg.augment, spec["size"], spec["mean"], spec["std"],
                                     (cfg.crop_scale_min, cfg.crop_scale_max), cfg.crop_schedule,
                                     epoch, n_epochs, cfg.interpolation)
        sampler = EpochBatches(n_epoch, cfg.micro_batch, cfg.seed, epoch, state.batch, drop_last, sampling)
        data = images if prefix is None else prefix.dataset(epoch)  # memory-mapped: no workers needed
        loader = acc.prepare(DataLoader(data, batch_sampler=sampler, num_workers=cfg.num_workers if prefix is None else 0,
                                        pin_memory=acc.device.type == "cuda"))
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        loss_sum, correct, seen, spent = state.partial if state.batch else (0.0, 0, 0, 0.0)
        start = time.perf_counter() - spent
        step_from = (loss_sum, seen)  # the running sums when the current optimizer step began
        for batch_images, labels in loader:
            micro = epoch * per_epoch + state.batch
            with acc.accumulate(model):
                if prefix is None:
                    with torch.random.fork_rng(devices=rng_devices):
                        torch.manual_seed(cfg.seed * 1_000_003 + (micro + 1) * world + rank)
                        pixels = augment(batch_images)
                    out = model(pixels)
                else:
                    out = model(batch_images, from_depth=prefix.depth)
                real, scale = _real_share(state.batch, per_epoch, n_epoch, cfg.micro_batch, rank, world,
                                          drop_last)
                if real == 0:  # only padding here: a zero loss through the same graph (DDP wants every grad)
                    loss = criterion(out, labels) * 0.0
                    out, labels = {k: v[:0] for k, v in out.items()}, labels[:0]
                elif real is not None:  # the last batch, uneven across processes: drop accelerate's padding
                    out, labels = {k: v[:real] for k, v in out.items()}, labels[:real]
                    loss = criterion(out, labels) * scale
                else:
                    loss = criterion(out, labels)
                acc.backward(loss)
                optimizer.step()  # the package's one optimizer step
                optimizer.zero_grad(set_to_none=True)
            state.batch += 1
            loss_sum += loss.item() / scale * len(labels) if real != 0 else 0.0
            correct += int((out["z_hat"].argmax(1) == labels).sum())
            seen += len(labels)
            if not acc.sync_gradients:
                continue
            step_lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            state.step += 1
            if ema is not None:
                ema.update()
            elapsed = time.perf_counter() - start
            state.partial = (loss_sum, correct, seen, elapsed)
            bar.update(1)
            if tracker is not None:
                step_loss = (loss_sum - step_from[0]) / max(seen - step_from[1], 1)
                tracker.log({"train/loss": step_loss, "train/lr": step_lr}, state.step)
                step_from = (loss_sum, seen)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", img_s=f"{seen * world / max(elapsed, 1e-9):.1f}")
            if state.step in checks:
                score = _validate(cfg, acc, net, params, ema, val_set)
                state.selection.append({"step": state.step, "loss": float(loss.detach()), "val_class_mean": score,
                                        "lr": scheduler.get_last_lr()[0]})
                if tracker is not None:
                    tracker.log({"val/class_mean": score}, state.step)
                if score > state.best or best_state is None:
                    state.best = score
                    best_state = [t.detach().cpu().clone() for t in (ema.state() if ema else params)]
                model.train()
            due = (cfg.save_every and state.step % cfg.save_every == 0) or state.step == total
            if due or (drop_last and state.step in checks):
                save()
            if on_step is not None:
                on_step(state.step)
            if stop_after_steps is not None and state.step >= stop_after_steps:
                interrupted = True
                break
            if state.step >= total:
                break
        elapsed = time.perf_counter() - start
        images_seen += seen * world
        train_time += elapsed
        epoch_done = state.batch >= per_epoch
        if interrupted and not epoch_done:
            save()
            break
        state.seconds += elapsed  # `elapsed` includes the time spent before a resume
        state.history.append({"epoch": epoch + 1, "step": state.step, "loss": loss_sum / max(seen, 1),
                              "train_acc": correct / max(seen, 1), "lr": lr,
                              "images_per_s": seen * world / max(elapsed, 1e-9)})
        if tracker is not None:
            tracker.log({f"epoch/{k}": state.history[-1][k] for k in ("loss", "train_acc", "images_per_s")}
                        | {"epoch/epoch": epoch + 1}, state.step)
        if epoch_done:
            state.epoch, state.batch, state.partial = epoch + 1, 0, (0.0, 0, 0, 0.0)
            if not drop_last and state.step < total:
                save()
    bar.close()
    if not interrupted:
        _final_weights(params, ema, best_state)
    throughput = {"train_seconds": state.seconds,
                  "train_images_per_s": images_seen / train_time if train_time else None,
                  "max_gpu_memory_gb": _gpu_memory_gb(), "optimizer_steps": state.step,
                  "num_trainable": net.num_trainable(), "num_processes": world}
    return FitResult(net, {"throughput": throughput}, state.history, run.dir if run else None,
                     interrupted, state.selection)


def _real_share(batch: int, per_epoch: int, n: int, micro: int, rank: int, world: int,
                drop_last: bool) -> tuple[int | None, float]:
    """(real rows of this process's share, loss scale) of the epoch's last batch when it is
    shorter than `micro` and split across processes, else (None, 1.0). accelerate pads such a
    batch with the epoch's first images so every process gets micro / world rows
    (`even_batches`); leaving the padding out and weighting each share by its real size makes
    the averaged gradient the batch mean, as in one process."""
    last = n - (per_epoch - 1) * micro
    if world == 1 or drop_last or batch != per_epoch - 1 or last >= micro:
        return None, 1.0
    share = micro // world
    real = min(max(last - share * rank, 0), share)
    return real, real * world / last


def _final_weights(params, ema: WeightEMA | None, best_state) -> None:
    """The weights a run keeps: the best validated ones, else the EMA, else the last ones."""
    if best_state is not None:
        swap_in(params, best_state)
    elif ema is not None:
        swap_in(params, ema.state())


def _validate(cfg, acc, net, params, ema: WeightEMA | None, val_set) -> float:
    """Balanced (mean per-class) accuracy of the current (EMA) weights on the validation split."""
    import numpy as np

    from longtail.eval.metrics import balanced_accuracy

    live = swap_in(params, ema.state()) if ema is not None else None
    try:
        logits = evaluation_logits(net, cfg, val_set, acc.device, tte=False)
    finally:
        if live is not None:
            swap_in(params, live)
    return float(balanced_accuracy(logits, np.asarray(val_set.labels), logits.shape[1]))


def _checkpoint(acc, run, params, names, ema, best_state, optimizer, scheduler, state: LoopState,
                stats: dict) -> None:
    acc.wait_for_everyone()
    if acc.is_main_process:
        tensors = {f"model.{n}": p for n, p in zip(names, params)}
        tensors.update({f"stats.{n}": b for n, b in stats.items()})
        if ema is not None:
            tensors.update({f"ema.{n}": t for n, t in zip(names, ema.state())})
        if best_state is not None:
            tensors.update({f"best.{n}": t for n, t in zip(names, best_state)})
        training = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": ckpt.rng_state(), "step": state.step, "epoch": state.epoch,
                    "batch_in_epoch": state.batch, "history": state.history,
                    "partial_epoch": list(state.partial), "best": state.best, "selection": state.selection,
                    "seconds": state.seconds,
                    "ema_count": ema.count if ema is not None else 0}
        ckpt.save_checkpoint(run.dir, state.step, tensors, training)
    acc.wait_for_everyone()


def _restore(saved, state: LoopState, params, names, ema, optimizer, scheduler, stats: dict):
    """Load a checkpoint into the loop's objects; returns the best-so-far weights (or None)."""
    tensors, training = saved
    expected = {f"model.{n}" for n in names} | {f"stats.{n}" for n in stats}
    if ema is not None:
        expected |= {f"ema.{n}" for n in names}
    has_best = bool(names) and f"best.{names[0]}" in tensors
    if has_best:
        expected |= {f"best.{n}" for n in names}
    if set(tensors) != expected:
        raise DataError("the checkpoint does not match this run's trainable tensors (another config?)")
    with torch.no_grad():
        for n, p in zip(names, params):
            p.copy_(tensors[f"model.{n}"])
        for n, b in stats.items():
            b.copy_(tensors[f"stats.{n}"])
        if ema is not None:
            for n, t in zip(names, ema.state()):
                t.copy_(tensors[f"ema.{n}"])
            ema.count = int(training["ema_count"])
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    ckpt.set_rng_state(training["rng"])
    state.step, state.epoch, state.batch = training["step"], training["epoch"], training["batch_in_epoch"]
    state.history = list(training["history"])
    state.partial = tuple(training["partial_epoch"])
    state.best, state.selection = float(training["best"]), list(training["selection"])
    state.seconds = float(training.get("seconds", 0.0))  # a timing only: 0 for older checkpoints
    return [tensors[f"best.{n}"] for n in names] if has_best else None


def _progress(cfg, acc, total: int, initial: int):
    from longtail.progress import progress_bar  # a bar on a terminal, a line every 30 s in a log

    return progress_bar(total=total, initial=initial, desc="fit", unit="step",
                        enabled=cfg.progress and acc.is_local_main_process)


def _gpu_memory_gb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
