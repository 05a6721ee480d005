"""The fine-tuning loop on Hugging Face accelerate (AMP, gradient accumulation, DDP).

`batch_size` is the global batch per optimizer step: accelerate splits each loaded batch
across processes (split_batches=True), so 1 GPU and 8 GPUs see the same global batches.
Augmentation randomness is re-seeded from (seed, micro-batch index, rank) every micro-batch
and the sample order from (seed, epoch), so `--resume` continues exactly where a run stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from longtail.errors import ConfigError
from longtail.methods.finetune import checkpoint as ckpt
from longtail.methods.finetune.augment import DecodedImages, decode_transform, train_augmentation
from longtail.methods.finetune.config import FitConfig
from longtail.methods.finetune.model import FineTuneModel, FitLoss, build_model
from longtail.methods.finetune.predict import frozen_features, input_spec, predict_logits
from longtail.registry import Registry

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
OPTIMIZERS.register("sgd", lambda params, cfg: torch.optim.SGD(
    params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay))
OPTIMIZERS.register("adamw", lambda params, cfg: torch.optim.AdamW(
    params, lr=cfg.lr, weight_decay=cfg.weight_decay))
SCHEDULES: Registry[Callable[[float], float]] = Registry("lr schedule")  # progress in [0,1] -> factor
SCHEDULES.register("cosine", lambda p: 0.5 * (1.0 + math.cos(math.pi * p)))
SCHEDULES.register("constant", lambda p: 1.0)


def lr_factor(cfg: FitConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """LR multiplier per optimizer step: linear warmup, then the schedule per epoch (LIFT) or step."""
    total, warm = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)
    schedule = SCHEDULES.get(cfg.lr_schedule)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule_unit == "epoch":
            return schedule((step // steps_per_epoch) / max(cfg.epochs, 1))
        return schedule((step - warm) / max(total - warm, 1))

    return factor


class EpochPermutation(Sampler[int]):
    """A shuffle that depends only on (seed, epoch), identical on every process.

    The method is deliberately not called `set_epoch`: accelerate would call that with its own
    iteration counter, which restarts at 0 on the loader that skips batches after a resume.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


@dataclass
class FitResult:
    model: FineTuneModel
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None
    interrupted: bool = False


def open_split(cfg: FitConfig, split: str):
    """The dataset of one split through `open_images` (list files from train_list / test_list)."""
    from longtail.data.images import open_images

    options = dict(cfg.data_options)
    list_file = cfg.train_list if split == "train" else cfg.test_list
    if list_file:
        options["list_file"] = list_file
    return open_images(cfg.data_spec, split=split, root=cfg.root, **options)


def make_accelerator(cfg: FitConfig):
    from accelerate import Accelerator, DataLoaderConfiguration

    from longtail.device import resolve_device

    device = resolve_device(cfg.device)
    precision = cfg.precision
    if precision == "auto":
        precision = "no" if device.type != "cuda" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    return Accelerator(cpu=device.type == "cpu", mixed_precision=precision,
                       gradient_accumulation_steps=cfg.grad_accum,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


def train(cfg: FitConfig, run=None, stop_after_steps: int | None = None, accelerator=None) -> FitResult:
    """Fine-tune per `cfg`; with a `run` (longtail.runs.Run) checkpoint into it and resume from it.

    stop_after_steps: stop (as if interrupted) after that many optimizer steps in total.
    """
    acc = accelerator or make_accelerator(cfg)
    if cfg.micro_batch % acc.num_processes:
        raise ConfigError(f"batch_size/grad_accum = {cfg.micro_batch} must be divisible by the "
                          f"{acc.num_processes} processes")
    from longtail.models.backbone import load_backbone

    train_set = open_split(cfg, "train")
    backbone = load_backbone(cfg.backbone, **cfg.backbone_options)
    spec = input_spec(backbone, cfg)
    model = build_model(cfg, backbone, train_set.class_names,
                        lambda: frozen_features(backbone, train_set, cfg, acc.device))
    counts = train_set.class_counts()
    from longtail.methods.losses import make_loss

    criterion = FitLoss(make_loss(cfg.loss, counts, **cfg.loss_options), (cfg.lambda1, cfg.lambda2, cfg.lambda3))
    decode = decode_transform(cfg.decode_size or round(spec["size"] * cfg.test_resize_ratio), spec["mean"], spec["std"])
    sampler = EpochPermutation(len(train_set), cfg.seed)
    loader = DataLoader(DecodedImages(train_set, decode), batch_size=cfg.micro_batch, sampler=sampler,
                        num_workers=cfg.num_workers, pin_memory=acc.device.type == "cuda",
                        persistent_workers=cfg.num_workers > 0)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params and cfg.epochs > 0:
        raise ConfigError("nothing to train: the adapter and head are frozen (set epochs=0 to only evaluate)")
    optimizer = OPTIMIZERS.get(cfg.optimizer)(params, cfg) if params else None
    steps_per_epoch = math.ceil(len(loader) / cfg.grad_accum)
    scheduler = (torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))
                 if optimizer else None)
    if optimizer is not None:
        model, optimizer, loader = acc.prepare(model, optimizer, loader)
    else:
        model = model.to(acc.device)
    step, epoch, batch_in_epoch, history, partial = 0, 0, 0, [], (0.0, 0, 0, 0.0)
    state = ckpt.load_checkpoint(run.dir) if run is not None else None
    if state is not None:  # resume: weights, optimizer, schedule, RNG and position in the data
        trainable, training = state
        acc.unwrap_model(model).load_trainable_state_dict(trainable)
        optimizer.load_state_dict(training["optimizer"])
        scheduler.load_state_dict(training["scheduler"])
        ckpt.set_rng_state(training["rng"])
        step, epoch, batch_in_epoch = training["step"], training["epoch"], training["batch_in_epoch"]
        history = list(training["history"])
        partial = tuple(training["partial_epoch"])  # loss sum, correct, seen, seconds so far
    rank, world = acc.process_index, acc.num_processes
    bar = _progress(cfg, acc, steps_per_epoch * cfg.epochs, step)
    interrupted, images_seen, train_time = False, 0, 0.0
    while epoch < cfg.epochs and not interrupted:
        sampler.use_epoch(epoch)
        augment = train_augmentation(cfg.augment, spec["size"], spec["mean"], spec["std"],
                                     (cfg.crop_scale_min, cfg.crop_scale_max), cfg.crop_schedule,
                                     epoch, cfg.epochs)
        batches = acc.skip_first_batches(loader, batch_in_epoch) if batch_in_epoch else loader
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        loss_sum, correct, seen, spent = partial if batch_in_epoch else (0.0, 0, 0, 0.0)
        start = time.perf_counter() - spent
        for images, labels in batches:
            micro = epoch * len(loader) + batch_in_epoch
            with acc.accumulate(model):
                with torch.random.fork_rng(devices=[acc.device] if acc.device.type == "cuda" else []):
                    torch.manual_seed(cfg.seed * 1_000_003 + micro * world + rank)
                    pixels = augment(images)
                out = model(pixels)
                loss = criterion(out, labels)
                acc.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            batch_in_epoch += 1
            loss_sum += loss.item() * len(labels)
            correct += int((out["z_hat"].argmax(1) == labels).sum())
            seen += len(labels)
            if not acc.sync_gradients:
                continue
            scheduler.step()
            step += 1
            elapsed = time.perf_counter() - start
            rate = seen * world / max(elapsed, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", img_s=f"{rate:.1f}", mem=_gpu_memory_str())
            partial = (loss_sum, correct, seen, elapsed)
            if run is not None and cfg.save_every and step % cfg.save_every == 0:
                _checkpoint(acc, run, model, optimizer, scheduler, step, epoch, batch_in_epoch, history, partial)
            if stop_after_steps is not None and step >= stop_after_steps:
                interrupted = True
                break
        elapsed = time.perf_counter() - start
        images_seen += seen * world
        train_time += elapsed
        if interrupted and batch_in_epoch < len(loader):
            if run is not None:
                _checkpoint(acc, run, model, optimizer, scheduler, step, epoch, batch_in_epoch, history, partial)
            break
        history.append({"epoch": epoch + 1, "step": step, "loss": loss_sum / max(seen, 1),
                        "train_acc": correct / max(seen, 1), "lr": lr,
                        "images_per_s": seen * world / max(elapsed, 1e-9)})
        epoch, batch_in_epoch = epoch + 1, 0
        if run is not None:
            _checkpoint(acc, run, model, optimizer, scheduler, step, epoch, batch_in_epoch, history, partial)
    bar.close()
    unwrapped = acc.unwrap_model(model)
    unwrapped.input_spec = spec
    throughput = {"train_images_per_s": images_seen / train_time if train_time else None,
                  "max_gpu_memory_gb": _gpu_memory_gb(), "optimizer_steps": step,
                  "num_trainable": unwrapped.num_trainable(), "num_processes": world}
    return FitResult(unwrapped, {"throughput": throughput}, history, run.dir if run else None, interrupted)


def _checkpoint(acc, run, model, optimizer, scheduler, step, epoch, batch_in_epoch, history, partial) -> None:
    acc.wait_for_everyone()
    if acc.is_main_process:
        training = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": ckpt.rng_state(), "step": step, "epoch": epoch,
                    "batch_in_epoch": batch_in_epoch, "history": history,
                    "partial_epoch": list(partial)}
        ckpt.save_checkpoint(run.dir, step, acc.unwrap_model(model).trainable_state_dict(), training)
    acc.wait_for_everyone()


def _progress(cfg: FitConfig, acc, total: int, initial: int):
    import sys

    from tqdm.auto import tqdm

    disable = not (cfg.progress and acc.is_local_main_process and sys.stderr.isatty())
    return tqdm(total=total, initial=initial, desc="fit", unit="step", disable=disable)


def _gpu_memory_gb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def _gpu_memory_str() -> str:
    gb = _gpu_memory_gb()
    return "cpu" if gb is None else f"{gb:.1f}G"


def evaluate_model(model: FineTuneModel, cfg: FitConfig, test_set, train_counts, group_counts=None,
                   class_names=None) -> dict[str, Any]:
    """metrics (all/many/medium/few/ece/...) of the model on a test set via longtail.eval.metrics."""
    from longtail.eval.metrics import evaluate

    logits = predict_logits(model, test_set, batch_size=cfg.eval_batch_size, tte=cfg.tte,
                            device=cfg.device, num_workers=cfg.num_workers, precision=cfg.precision,
                            progress=cfg.progress)
    metrics = evaluate(logits, np.asarray(test_set.labels), np.asarray(train_counts),
                       group_counts=group_counts, class_names=class_names)
    metrics["tte"] = cfg.tte
    return metrics
