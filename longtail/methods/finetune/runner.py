"""A whole fine-tuning run: run folder, training (resumable), final weights, metrics, report.

Also what `longtail eval` / `report` use on fit runs: `load_finetuned(run_dir)` rebuilds the
model from the folder and `evaluate_fit_run` is registered for run kind "fit".
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from longtail.errors import ConfigError, DataError
from longtail.eval.evaluators import RUN_EVALUATORS
from longtail.io import read_json
from longtail.methods.finetune import checkpoint as ckpt
from longtail.methods.finetune.config import FitConfig, valid_keys
from longtail.methods.finetune.trainer import (
    FitResult,
    evaluate_model,
    make_accelerator,
    open_split,
    train,
)

KIND = "fit"
CLASSES = "classes.json"
RESUME_SAFE_KEYS = ("num_workers", "progress", "eval_batch_size", "device")


def config_from_run(run_dir: str | Path) -> FitConfig:
    """The FitConfig a run folder was made with."""
    from longtail.runs import load_run

    return FitConfig(**{k: v for k, v in load_run(run_dir)["config"].items() if k in valid_keys()})


def fit(cfg: FitConfig, out: str | Path | None = None, resume: bool = False,
        stop_after_steps: int | None = None, report: bool = True) -> FitResult:
    """Train and evaluate per `cfg` in a new run folder `out` (or continue the run at `out`)."""
    from accelerate.utils import broadcast_object_list

    from longtail.data.stats import class_stats
    from longtail.runs import create_run

    acc = make_accelerator(cfg)
    run = None
    if acc.is_main_process:
        if resume:
            if out is None or not (Path(out) / "config.yaml").is_file():
                raise ConfigError(f"--resume needs the folder of an existing fit run, got {out}")
            run = create_run(out, KIND, cfg.to_dict(), staged=False, resume=True)
        else:
            run = create_run(out, KIND, cfg.to_dict(), seed=cfg.seed, device=cfg.device, staged=False)
    folder = broadcast_object_list([str(run.dir) if run else None])[0] if acc.num_processes > 1 else str(run.dir)
    if run is None:  # other ranks: same folder, checkpoints are written by the main process
        run = create_run(folder, KIND, cfg.to_dict(), staged=False, resume=True)
    try:
        result = train(cfg, run=run, stop_after_steps=stop_after_steps, accelerator=acc)
    except BaseException:
        # A new run that fails before its first checkpoint has nothing to resume: remove it,
        # so the same --out can be used again. Runs with a checkpoint stay for --resume.
        if not resume and acc.is_main_process and not (run.dir / "checkpoints" / ckpt.LATEST).exists():
            shutil.rmtree(run.dir, ignore_errors=True)
        raise
    if result.interrupted or not acc.is_main_process:
        return result
    train_set = open_split(cfg, "train")
    counts = train_set.class_counts()
    stats = class_stats(counts, train_set.class_names, group_counts=train_set.group_counts)
    run.write_json("data_stats.json", stats.to_dict())
    run.write_json(CLASSES, {"class_names": train_set.class_names, "train_counts": counts,
                             "group_counts": train_set.group_counts})
    ckpt.save_weights(run.dir, result.model.trainable_state_dict(),
                      {"kind": KIND, "config": cfg.to_dict(), "input_spec": result.model.input_spec})
    test_set = open_split(cfg, cfg.test_split)
    metrics = evaluate_model(result.model, cfg, test_set, counts, train_set.group_counts, train_set.class_names)
    metrics.update(result.metrics["throughput"])
    metrics["history"] = result.history
    metrics["method"], metrics["label"] = cfg.method, f"{cfg.method}/{cfg.backbone}/{cfg.dataset}"
    from longtail.experiment import write_per_class_csv

    write_per_class_csv(run.path("per_class.csv"), metrics.get("per_class", []))
    run.finish(metrics)
    if report:
        from longtail.eval.report import write_report

        write_report(run.dir)
    result.metrics = metrics
    return result


def load_finetuned(run_dir: str | Path, device: str = "auto"):
    """(model ready for predict_logits, class info dict) rebuilt from a finished fit run."""
    from longtail.device import resolve_device
    from longtail.methods.finetune.model import build_model
    from longtail.models.backbone import load_backbone

    run_dir = Path(run_dir)
    state, meta = ckpt.load_weights(run_dir)
    cfg = FitConfig(**{k: v for k, v in meta["config"].items() if k in valid_keys()})
    info = read_json(run_dir / CLASSES)
    backbone = load_backbone(cfg.backbone, **cfg.backbone_options)
    model = build_model(cfg, backbone, info["class_names"], init=False)
    model.load_trainable_state_dict(state)
    model.input_spec = meta["input_spec"]
    return model.to(resolve_device(device)).eval(), {**info, "config": cfg}


@RUN_EVALUATORS.register(KIND)
def evaluate_fit_run(run: dict[str, Any], test: str | None = None) -> dict[str, Any]:
    """`longtail eval RUN [--test SPEC]`: rebuild the fine-tuned model and evaluate it."""
    from longtail.data.images import open_images
    from longtail.methods.finetune.trainer import evaluate_model

    model, info = load_finetuned(run["folder"])
    cfg: FitConfig = info["config"]
    test_set = open_split(cfg, cfg.test_split) if test is None else open_images(test, split="test")
    if test_set.class_names != info["class_names"]:
        raise DataError(f"test set classes differ from the run's {len(info['class_names'])} training classes")
    counts = np.asarray(info["train_counts"])
    groups = None if info.get("group_counts") is None else np.asarray(info["group_counts"])
    return evaluate_model(model, cfg, test_set, counts, groups, info["class_names"])
