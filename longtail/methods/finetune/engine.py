"""The one fine-tuning trainer, read top to bottom: build -> loop -> schedule -> validate -> checkpoint.

Every trained model of the package goes through here: `fit` runs (LIFT, LIFT+, Sage, baselines),
LT-Soups ingredients and LT-Soups stage 2.

1. `build(cfg, acc)` -> `Parts`: splits, backbone, model, loss, optimizer, LR scheduler, EMA and the
   epoch loaders of one FitConfig, prepared by Hugging Face accelerate (AMP, gradient
   accumulation, DDP). `runner.train` is `train_loop(build(cfg, acc))`.
2. `train_loop(parts)` -> `FitResult`: micro-batches -> one optimizer step every `grad_accum`,
   then the EMA, the selection points and the checkpoints of that step.
3. `Schedule`: the run's length in optimizer steps, its epochs, its selection points (best-of-N)
   and its checkpoint points; the LR curve itself is `optim.make_scheduler`.
4. `_validate`: balanced accuracy of the current (EMA) weights on the validation split.
5. `_save` / `_restore`: trainable, EMA and best weights + optimizer, scheduler, RNG and loop
   position, so `--resume` continues bit-identically (files: `checkpoint.py`).

`batch_size` is the global batch per optimizer step: accelerate splits each loaded batch across
processes (split_batches=True), so 1 GPU and 8 GPUs see the same global batches. Batch b of
epoch e depends only on (seed, e, b) (`data.EpochBatches` over the epoch's index list from
`cfg.sampler`) and the augmentation of micro-batch m only on (seed, m, rank).

Host syncs: the loss and the correct count are summed on the device (`Meter`); the host reads
them once every `LOG_EVERY` optimizer steps, at a selection point, a checkpoint and an epoch's
end (nanoGPT's log_interval), never per micro-batch. The tracker still gets every step's loss
and lr (sent in order at those reads), the validation score at every selection point and the
epoch summaries.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from longtail.data.sampling import EpochSampler, make_sampler
from longtail.errors import ConfigError, DataError
from longtail.methods.finetune import checkpoint as ckpt
from longtail.methods.finetune.augment import DecodedImages, decode_transform, train_augmentation
from longtail.methods.finetune.config import FitConfig
from longtail.methods.finetune.data import EpochBatches, Splits
from longtail.methods.finetune.optim import (
    OPTIMIZERS,
    WeightEMA,
    eval_points,
    make_scheduler,
    swap_in,
)
from longtail.methods.finetune.predict import evaluation_logits

LOG_EVERY = 50  # optimizer steps between host reads of the running loss (progress bar, tracker)


@dataclass
class FitResult:
    """What a training returns: the model with its kept weights and everything the run folder records."""

    model: Any  # FineTuneModel with the final (selected) weights
    metrics: dict[str, Any]  # {"throughput": ...} from the loop; the runner adds the test metrics
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    run_dir: Path | None = None
    interrupted: bool = False
    selection: list[dict[str, Any]] = field(default_factory=list)  # one row per selection point
    splits: Splits | None = None  # what was trained / validated on


@dataclass
class Parts:
    """Everything one training run is made of; `train_loop` reads nothing else."""

    cfg: FitConfig
    acc: Any  # accelerate.Accelerator
    model: nn.Module  # prepared by `acc` (DDP-wrapped when distributed); `acc.unwrap_model` is the FineTuneModel
    criterion: nn.Module  # FitLoss
    splits: Splits
    schedule: Schedule
    images: DecodedImages  # training images, decoded on the CPU (augmented on the device in the loop)
    sampling: EpochSampler  # the epoch's index list from (seed, epoch)
    optimizer: torch.optim.Optimizer | None  # None: nothing trainable (epochs=0 runs only evaluate)
    scheduler: Any
    ema: WeightEMA | None = None
    prefix: Any = None  # prefix.PrefixSource: batches are cached frozen-prefix states, not pixels
    run: Any = None  # runs.Run: checkpoint into it and resume from its latest checkpoint
    tracker: Any = None  # tracking.RunTracker
    stop_after_steps: int | None = None  # stop (as if interrupted) after that many optimizer steps
    on_step: Callable[[int], None] | None = None  # after every optimizer step and its checkpoint


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


# ----------------------------------------------------------------------------- 1. build


def make_accelerator(cfg: FitConfig):
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


def build(cfg: FitConfig, acc, **hooks: Any) -> Parts:
    """Data, backbone, model, loss, optimizer, schedule and EMA of `cfg`, prepared by `acc`.
    `hooks`: the `Parts` fields run, tracker, stop_after_steps and on_step."""
    from longtail.methods.finetune.data import open_splits
    from longtail.methods.finetune.model import FitLoss, build_model
    from longtail.methods.finetune.predict import frozen_features, input_spec
    from longtail.methods.losses import make_loss
    from longtail.models.backbone import load_backbone

    if cfg.micro_batch % acc.num_processes:
        raise ConfigError(f"batch_size/grad_accum = {cfg.micro_batch} must be divisible by the "
                          f"{acc.num_processes} processes")
    splits = open_splits(cfg, test=False)
    backbone = load_backbone(cfg.backbone, **cfg.backbone_options)
    model = build_model(cfg, backbone, splits.train.class_names,
                        lambda: frozen_features(backbone, splits.train, cfg, acc.device))
    if cfg.init_from:
        model.load_weights(ckpt.load_weights(cfg.init_from)[0])
    model.input_spec = spec = input_spec(backbone, cfg)
    criterion = FitLoss(make_loss(cfg.loss, splits.train.class_counts(), **cfg.loss_options),
                        (cfg.lambda1, cfg.lambda2, cfg.lambda3)).to(acc.device)
    prefix = None
    if cfg.uses_prefix_cache and (cfg.steps if cfg.steps is not None else cfg.epochs) > 0:
        from longtail.methods.finetune.prefix import open_prefix_source

        prefix = open_prefix_source(cfg, model, splits, acc)  # after init_from: the key sees loaded weights
    sampling = make_sampler(cfg.sampler, splits.train.labels, cfg.seed, cfg.sampler_options)
    schedule = make_schedule(cfg, sampling.epoch_length, splits.val is not None)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params and schedule.total > 0:
        raise ConfigError("nothing to train: the adapter and head are frozen (set epochs=0 to only evaluate)")
    optimizer = OPTIMIZERS.get(cfg.optimizer)(params, cfg) if params else None
    scheduler = make_scheduler(optimizer, cfg, schedule.steps_per_epoch, schedule.total) if optimizer else None
    if optimizer is not None:
        model, optimizer = acc.prepare(model, optimizer)
    else:
        model = model.to(acc.device)
    ema = WeightEMA(params, cfg.ema_decay) if cfg.ema_decay is not None and params else None
    decode = decode_transform(cfg.decode_size or spec.resize, spec.mean, spec.std, cfg.interpolation)
    return Parts(cfg, acc, model, criterion, splits, schedule, DecodedImages(splits.train, decode), sampling,
                 optimizer, scheduler, ema, prefix, **hooks)


def _epoch_loader(p: Parts, epoch: int, start: int) -> DataLoader:
    """Epoch `epoch`'s micro-batches from batch `start` on: decoded images, or cached prefix states
    (memory-mapped: no workers needed)."""
    cfg = p.cfg
    batches = EpochBatches(p.sampling.epoch_length, cfg.micro_batch, cfg.seed, epoch, start,
                           p.schedule.drop_last, p.sampling)
    data = p.images if p.prefix is None else p.prefix.dataset(epoch)
    return p.acc.prepare(DataLoader(data, batch_sampler=batches, num_workers=cfg.num_workers if p.prefix is None else 0,
                                    pin_memory=p.acc.device.type == "cuda"))


# ----------------------------------------------------------------------------- 2. the loop


def train_loop(p: Parts) -> FitResult:
    """Train `p.model`'s trainable parameters per `p.cfg`; with `p.run`, checkpoint into it and
    resume from its latest checkpoint. Returns the model with its kept weights (best validated,
    else EMA, else last), the epoch history, the selection rows, throughput and the splits."""
    cfg, acc, sch, model, optimizer = p.cfg, p.acc, p.schedule, p.model, p.optimizer
    net = acc.unwrap_model(model)
    params = [q for q in net.parameters() if q.requires_grad]
    names = [n for n, q in net.named_parameters() if q.requires_grad]
    stats = net.stat_buffers() if hasattr(net, "stat_buffers") else {}  # BN statistics that train
    state, best = LoopState(), None
    saved = ckpt.load_checkpoint(p.run.dir) if p.run is not None else None
    if saved is not None:
        best = _restore(saved, state, params, names, p.ema, optimizer, p.scheduler, stats)
        if acc.is_main_process:
            import sys

            print(f"resuming {p.run.dir} from step {state.step} of {sch.total}", file=sys.stderr)
    spec, rank, world = net.input_spec, acc.process_index, acc.num_processes
    rng_devices = [acc.device] if acc.device.type == "cuda" else []
    bar = _progress(cfg, acc, sch.total, state.step)
    interrupted, images_seen, train_time = False, 0, 0.0

    def save(meter: Meter) -> None:
        if p.run is not None:
            state.partial = meter.flush(p.tracker, bar, world)
            _save(acc, p.run, params, names, p.ema, best, optimizer, p.scheduler, state, stats)

    while state.step < sch.total and not interrupted:
        epoch = state.epoch
        augment = train_augmentation(cfg.augment, spec.size, spec.mean, spec.std,
                                     (cfg.crop_scale_min, cfg.crop_scale_max), cfg.crop_schedule,
                                     epoch, sch.n_epochs, cfg.interpolation)
        loader = _epoch_loader(p, epoch, state.batch)
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        meter = Meter(acc.device, state.partial if state.batch else (0.0, 0, 0, 0.0))
        for inputs, labels in loader:
            micro = epoch * sch.per_epoch + state.batch
            with acc.accumulate(model):
                if p.prefix is None:
                    with torch.random.fork_rng(devices=rng_devices):
                        torch.manual_seed(cfg.seed * 1_000_003 + (micro + 1) * world + rank)
                        pixels = augment(inputs)
                    out = model(pixels)
                else:
                    out = model(inputs, from_depth=p.prefix.depth)
                real, scale = _real_share(state.batch, sch.per_epoch, p.sampling.epoch_length, cfg.micro_batch,
                                          rank, world, sch.drop_last)
                if real == 0:  # only padding here: a zero loss through the same graph (DDP wants every grad)
                    loss = p.criterion(out, labels) * 0.0
                    out, labels = {k: v[:0] for k, v in out.items()}, labels[:0]
                elif real is not None:  # the last batch, uneven across processes: drop accelerate's padding
                    out, labels = {k: v[:real] for k, v in out.items()}, labels[:real]
                    loss = p.criterion(out, labels) * scale
                else:
                    loss = p.criterion(out, labels)
                acc.backward(loss)
                optimizer.step()  # the package's one optimizer step
                optimizer.zero_grad(set_to_none=True)
            state.batch += 1
            meter.add(None if real == 0 else loss, scale, out["z_hat"], labels)  # on the device: no sync
            if not acc.sync_gradients:
                continue
            meter.step_done(state.step + 1, optimizer.param_groups[0]["lr"], p.tracker is not None)
            p.scheduler.step()
            state.step += 1
            if p.ema is not None:
                p.ema.update()
            bar.update(1)
            if state.step % LOG_EVERY == 0:
                meter.flush(p.tracker, bar, world)
            if state.step in sch.checks:
                best = _select(p, state, best, meter, bar, net, params, float(loss.detach()))
                model.train()
            if sch.saves_at(state.step, cfg.save_every):
                save(meter)
            if p.on_step is not None:
                p.on_step(state.step)
            if p.stop_after_steps is not None and state.step >= p.stop_after_steps:
                interrupted = True
                break
            if state.step >= sch.total:
                break
        loss_sum, correct, seen, elapsed = meter.flush(p.tracker, bar, world)  # the epoch's host read
        images_seen += seen * world
        train_time += elapsed
        epoch_done = state.batch >= sch.per_epoch
        if interrupted and not epoch_done:
            save(meter)
            break
        state.seconds += elapsed  # `elapsed` includes the time spent before a resume
        state.history.append({"epoch": epoch + 1, "step": state.step, "loss": loss_sum / max(seen, 1),
                              "train_acc": correct / max(seen, 1), "lr": lr,
                              "images_per_s": seen * world / max(elapsed, 1e-9)})
        if p.tracker is not None:
            p.tracker.log({f"epoch/{k}": state.history[-1][k] for k in ("loss", "train_acc", "images_per_s")}
                          | {"epoch/epoch": epoch + 1}, state.step)
        if epoch_done:
            state.epoch, state.batch, state.partial = epoch + 1, 0, (0.0, 0, 0, 0.0)
            if not sch.drop_last and state.step < sch.total:
                save(Meter(acc.device, state.partial))
    bar.close()
    if not interrupted:
        _final_weights(params, p.ema, best)
    throughput = {"train_seconds": state.seconds,
                  "train_images_per_s": images_seen / train_time if train_time else None,
                  "max_gpu_memory_gb": _gpu_memory_gb(), "optimizer_steps": state.step,
                  "num_trainable": net.num_trainable(), "num_processes": world}
    return FitResult(net, {"throughput": throughput}, state.history, p.run.dir if p.run else None,
                     interrupted, state.selection, p.splits)


class Meter:
    """One epoch's running sums on the device: loss x rows (float64, as the host sums were), correct
    predictions; rows seen are known on the host. `flush` is the one host read: it sends the
    buffered per-step losses to the tracker, updates the progress bar and returns the sums."""

    def __init__(self, device: torch.device, partial: tuple = (0.0, 0, 0, 0.0)) -> None:
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.sums = torch.tensor([float(partial[0]), float(partial[1])], dtype=dtype, device=device)
        self.seen, self.start = int(partial[2]), time.perf_counter() - float(partial[3])
        self.mark = (float(partial[0]), self.seen)  # loss sum and rows when the last logged step ended
        self.steps: list[tuple[int, float, int, Tensor]] = []  # (step, lr, rows, loss sum) not yet logged

    def add(self, loss: Tensor | None, scale: float, logits: Tensor, labels: Tensor) -> None:
        """A micro-batch: `loss / scale` is its mean loss (None: padding only, nothing to add)."""
        if loss is not None:
            self.sums[0] += loss.detach().to(self.sums.dtype) / scale * len(labels)
        self.sums[1] += (logits.argmax(1) == labels).sum()
        self.seen += len(labels)

    def step_done(self, step: int, lr: float, track: bool) -> None:
        """An optimizer step ended (its loss is logged at the next flush when tracking)."""
        if track:
            self.steps.append((step, lr, self.seen, self.sums[0].clone()))

    def flush(self, tracker, bar, world: int) -> tuple[float, int, int, float]:
        """(loss sum, correct, seen, seconds) of the epoch so far: one host sync."""
        values = torch.cat([self.sums, torch.stack([s[3] for s in self.steps])] if self.steps
                           else [self.sums]).tolist()
        elapsed = time.perf_counter() - self.start
        if tracker is not None:
            loss0, seen0 = self.mark
            for (step, lr, seen, _), total in zip(self.steps, values[2:]):
                tracker.log({"train/loss": (total - loss0) / max(seen - seen0, 1), "train/lr": lr}, step)
                loss0, seen0 = total, seen
            self.mark = (loss0, seen0)
        self.steps.clear()
        if self.seen:
            bar.set_postfix(loss=f"{values[0] / self.seen:.4f}", img_s=f"{self.seen * world / max(elapsed, 1e-9):.1f}")
        return values[0], int(values[1]), self.seen, elapsed


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


# ----------------------------------------------------------------------------- 3. schedule


@dataclass(frozen=True)
class Schedule:
    """When things happen, in optimizer steps (the LR curve is `optim.make_scheduler`)."""

    per_epoch: int  # micro-batches per epoch
    steps_per_epoch: int
    total: int  # optimizer steps of the run: `steps`, else `epochs` whole epochs
    drop_last: bool  # a step budget drops the incomplete last batch (LT-Soups), epochs keep it (LIFT)
    checks: frozenset[int]  # selection points: validate and keep the best weights (best-of-N)

    @property
    def n_epochs(self) -> int:
        return math.ceil(self.total / self.steps_per_epoch)

    def saves_at(self, step: int, save_every: int) -> bool:
        """A checkpoint after this step: every `save_every`, the last step, and with a step budget
        every selection point (those runs have no epoch-end checkpoints)."""
        return bool(save_every and step % save_every == 0) or step == self.total or \
            (self.drop_last and step in self.checks)


def make_schedule(cfg: FitConfig, draws: int, validates: bool) -> Schedule:
    """The schedule of `cfg` over epochs of `draws` images (the sampler's epoch length)."""
    drop_last = cfg.steps is not None
    per_epoch = EpochBatches.per_epoch(draws, cfg.micro_batch, drop_last)
    steps_per_epoch = math.ceil(per_epoch / cfg.grad_accum)
    total = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    checks = frozenset(eval_points(total, cfg.n_evals)) if validates else frozenset()
    return Schedule(per_epoch, steps_per_epoch, total, drop_last, checks)



# ----------------------------------------------------------------------------- 4. validate


def _select(p: Parts, state: LoopState, best, meter: Meter, bar, net, params, loss: float):
    """A selection point: validate the current (EMA) weights and keep them if they are the best."""
    meter.flush(p.tracker, bar, p.acc.num_processes)  # the step curve reaches the tracker before the score
    score = _validate(p.cfg, p.acc, net, params, p.ema, p.splits.val)
    state.selection.append({"step": state.step, "loss": loss, "val_class_mean": score,
                            "lr": p.scheduler.get_last_lr()[0]})
    if p.tracker is not None:
        p.tracker.log({"val/class_mean": score}, state.step)
    if score > state.best or best is None:
        state.best = score
        best = [t.detach().cpu().clone() for t in (p.ema.state() if p.ema else params)]
    return best


def _validate(cfg: FitConfig, acc, net, params, ema: WeightEMA | None, val_set) -> float:
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


def _final_weights(params, ema: WeightEMA | None, best) -> None:
    """The weights a run keeps: the best validated ones, else the EMA, else the last ones."""
    if best is not None:
        swap_in(params, best)
    elif ema is not None:
        swap_in(params, ema.state())


# ----------------------------------------------------------------------------- 5. checkpoint


def _save(acc, run, params, names, ema, best, optimizer, scheduler, state: LoopState, stats: dict) -> None:
    """Trainable / BN / EMA / best tensors and the training state, published atomically (main process)."""
    acc.wait_for_everyone()
    if acc.is_main_process:
        tensors = {f"model.{n}": q for n, q in zip(names, params)}
        tensors.update({f"stats.{n}": b for n, b in stats.items()})
        if ema is not None:
            tensors.update({f"ema.{n}": t for n, t in zip(names, ema.state())})
        if best is not None:
            tensors.update({f"best.{n}": t for n, t in zip(names, best)})
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
        for n, q in zip(names, params):
            q.copy_(tensors[f"model.{n}"])
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


def _progress(cfg: FitConfig, acc, total: int, initial: int):
    from longtail.progress import progress_bar  # a bar on a terminal, a line every 30 s in a log

    return progress_bar(total=total, initial=initial, desc="fit", unit="step",
                        enabled=cfg.progress and acc.is_local_main_process)


def _gpu_memory_gb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
