"""Fine-tuning CLIP for long-tailed recognition: LIFT, LIFT+ and Sage recipes on accelerate.

    from longtail.methods.finetune import build_config, fit
    result = fit(build_config("synthetic_images", "tiny_clip", "lift", {"epochs": 1}), out="runs/x")

Importing this package registers the "fit" run kind for `longtail eval` / `report`.
"""

from longtail.methods.finetune.config import FitConfig, apply_overrides
from longtail.methods.finetune.model import FineTuneModel, FitLoss, build_model
from longtail.methods.finetune.predict import predict_logits
from longtail.methods.finetune.presets import (
    BACKBONE_PRESETS,
    DATA_PRESETS,
    METHOD_PRESETS,
    build_config,
)
from longtail.methods.finetune.runner import config_from_run, evaluate_fit_run, fit, load_finetuned
from longtail.methods.finetune.trainer import FitResult, train

__all__ = [
    "BACKBONE_PRESETS",
    "DATA_PRESETS",
    "METHOD_PRESETS",
    "FineTuneModel",
    "FitConfig",
    "FitLoss",
    "FitResult",
    "apply_overrides",
    "build_config",
    "build_model",
    "config_from_run",
    "evaluate_fit_run",
    "fit",
    "load_finetuned",
    "predict_logits",
    "train",
]
