"""Fine-tuning any backbone (CLIP ViTs, EfficientNet-Lite CNNs) for long-tailed recognition: one
engine for LIFT, LIFT+, Sage, partial / full fine-tuning, baselines and the LT-Soups
ingredients / stage 2.

    from longtail.methods.finetune import build_config, fit
    result = fit(build_config("synthetic_images", "tiny_clip", "lift", {"epochs": 1}), out="runs/x")

Modules: config (FitConfig), presets (-d/-b/-m), data (splits, LT-Soups subsets, step-indexed
batches), augment (decoding, device augmentation), model (FineTuneModel, FitLoss), optim
(optimizers, schedules, EMA), engine (the training loop), predict (the prediction loop),
checkpoint (files), runner (a run folder), loading (reload / evaluate a run), prefix (training
from the frozen-prefix cache).
Importing this package registers the "fit" run kind for `longtail eval` / `report`.
"""

from longtail.methods.finetune.config import FitConfig
from longtail.methods.finetune.engine import FitResult, train_loop
from longtail.methods.finetune.loading import (
    RunModel,
    evaluate_fit_run,
    evaluate_model,
    is_fit_layout,
    load_finetuned,
    load_fit_config,
    zero_shot_weights,
)
from longtail.methods.finetune.model import FineTuneModel, FitLoss, build_model
from longtail.methods.finetune.predict import predict_logits
from longtail.methods.finetune.presets import (
    BACKBONE_PRESETS,
    DATASET_SETTINGS,
    METHOD_PRESETS,
    build_config,
)
from longtail.methods.finetune.runner import config_from_run, fit, train
from longtail.runs import RunKind, register_kind

register_kind(RunKind("fit", evaluate=evaluate_fit_run, load_config=load_fit_config, description="A fine-tuned backbone + head (longtail fit, LT-Soups ingredients): weights, classes, curves."))

__all__ = [
    "BACKBONE_PRESETS",
    "DATASET_SETTINGS",
    "METHOD_PRESETS",
    "FineTuneModel",
    "FitConfig",
    "FitLoss",
    "FitResult",
    "RunModel",
    "build_config",
    "build_model",
    "config_from_run",
    "evaluate_fit_run",
    "evaluate_model",
    "fit",
    "is_fit_layout",
    "load_finetuned",
    "load_fit_config",
    "predict_logits",
    "train",
    "train_loop",
    "zero_shot_weights",
]
