"""Presets on three axes, as in LIFT+: data (-d), backbone (-b) and method (-m).

-d takes any dataset name of the data layer (`longtail.data.presets.DATASETS`, e.g.
`cifar100_ir100`, `synthetic_images`); `DATASET_SETTINGS` holds the fine-tuning settings
that depend on the dataset (decode size, epochs). Backbone and method presets are dicts of
FitConfig fields. They apply in the order dataset settings, backbone, method, the method's
per-dataset entry (e.g. Sage's Table 8), then the user's KEY=VALUE pairs.
"""

from __future__ import annotations

from typing import Any

from longtail.config import apply_overrides
from longtail.methods.finetune.config import FitConfig
from longtail.registry import Registry

BACKBONE_PRESETS: Registry[dict[str, Any]] = Registry("backbone preset")
METHOD_PRESETS: Registry[dict[str, Any]] = Registry("method preset")
# dataset name -> fine-tuning settings; method -> {dataset -> overrides} (per-dataset hyperparameters)
DATASET_SETTINGS: dict[str, dict[str, Any]] = {}
PER_DATASET: dict[str, dict[str, dict[str, Any]]] = {}

# --- datasets (docs/methods.md §7) ------------------------------------------------------------
DATASET_SETTINGS["synthetic_images"] = {"num_workers": 0}
_CIFAR = {"decode_size": 32}  # keep the 32-px originals; the device crop-resize upsamples (LIFT)
for _name in ("cifar10_lt", "cifar100_lt", "cifar100_controlled",
              *(f"cifar{c}_ir{ir}" for c in (10, 100) for ir in (100, 50, 10))):
    DATASET_SETTINGS[_name] = dict(_CIFAR)

# --- backbones: fine-tuning settings per backbone; any other name goes to load_backbone ---------
BACKBONE_PRESETS.register("tiny_clip", {"backbone": "tiny_clip", "eval_batch_size": 64, "num_workers": 0})
BACKBONE_PRESETS.register("clip_vit_b16", {"backbone": "clip_vit_b16"})
BACKBONE_PRESETS.register("clip_vit_b32", {"backbone": "clip_vit_b32"})
BACKBONE_PRESETS.register("clip_vit_l14", {"backbone": "clip_vit_l14"})
# CNNs: 128 px, small batches and 2 decode workers suit a CPU (backbone_options.image_size=224
# for the native resolution); head_init auto = the ImageNet classifier rows when the class names
# are WordNet ids or a bundled map covers them (CIFAR-10), else class means.
for _cnn in ("efficientnet_lite0", "efficientnet_lite2"):
    BACKBONE_PRESETS.register(_cnn, {"backbone": _cnn, "backbone_options": {"image_size": 128},
                                     "head_init": "auto", "batch_size": 64, "eval_batch_size": 128,
                                     "num_workers": 2, "scale": 25.0})

# --- methods ---------------------------------------------------------------------------------
_LIFT_OPTIM = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
               "batch_size": 128, "lr_schedule": "cosine", "schedule_unit": "epoch",
               "interpolation": "bilinear"}  # LIFT's code resizes bilinearly

METHOD_PRESETS.register("lift", {  # docs/methods.md §1.3-1.4 (LIFT code defaults)
    **_LIFT_OPTIM, "epochs": 10, "adapter": "adaptformer", "head_init": "text",
    "templates": "lift", "loss": "la", "loss_options": {"tau": 1.0}, "feature_interchange": False,
    "augment": "rrc_flip", "crop_schedule": "none",
})
METHOD_PRESETS.register("lift_plus", {  # LIFT+ code defaults: 5 epochs, lr 0.02, minimalist crops
    **_LIFT_OPTIM, "lr": 0.02, "epochs": 5, "interpolation": "bicubic", "adapter": "adaptformer", "head_init": "text",
    "templates": "lift", "loss": "la", "loss_options": {"tau": 1.0}, "feature_interchange": False,
    "augment": "rrc_flip", "crop_schedule": "convex",
})
METHOD_PRESETS.register("sage", {  # docs/methods.md §5.5; defaults = the CIFAR-100-LT rho=100 row
    **_LIFT_OPTIM, "epochs": 10, "adapter": "sg-adapter", "adapter_options": {"alpha": 0.1},
    "head_init": "text", "templates": "sage60", "loss": "cf",
    "loss_options": {"gamma": 0.05, "mu": 0.5}, "feature_interchange": True,
    "lambda1": 0.015, "lambda2": 0.015, "lambda3": 0.4, "augment": "rrc_flip",
})
METHOD_PRESETS.register("zero_shot", {
    "epochs": 0, "adapter": "none", "head_init": "text", "templates": "lift", "feature_interchange": False,
})
METHOD_PRESETS.register("linear_probe", {  # classifier only, on the frozen backbone
    **_LIFT_OPTIM, "epochs": 10, "adapter": "none", "head_init": "text", "templates": "lift",
    "loss": "la", "loss_options": {"tau": 1.0}, "feature_interchange": False,
})
METHOD_PRESETS.register("full_ft", {  # heavy fine-tuning baseline of LIFT (every weight trained)
    **_LIFT_OPTIM, "epochs": 10, "adapter": "full", "head_init": "text",
    "templates": "lift", "loss": "la", "loss_options": {"tau": 1.0}, "feature_interchange": False,
})

METHOD_PRESETS.register("partial_ft", {  # the last block(s) + top; the frozen prefix is cached
    **_LIFT_OPTIM, "epochs": 10, "adapter": "partial", "adapter_options": {"num_blocks": 1},
    "loss": "la", "loss_options": {"tau": 1.0}, "feature_interchange": False,
    "prefix_cache": "auto", "prefix_views": 2, "prefix_view_kind": "flip",
})

# LT-Soups' fine-tuning recipe (docs/methods.md §2.4, the authors' CIFAR-100-LT script): the
# ingredients of `longtail lt-soups` are fit runs of this preset (the plan sets only their step
# budget, warmup, seed, loss and subset); `fit -m lt_soups` is the same recipe on all the data.
# Where it differs from fit's defaults, the authors' script decides: AdamW at 3e-5 with weight
# decay 0.01; warmup + cosine per optimizer step (LinearLR from 1e-6 x lr, down to 0.1 x lr);
# EMA 0.99 and best-of-5 on the first 10 test images of each class (val_rule=first); cosine scale 30; full
# fine-tuning; bf16 on CUDA. keep_checkpoints=false: a pipeline has |F| x K ingredients and each
# resume checkpoint holds the whole model and its AdamW state. The backbone preset's head_init /
# input settings are kept (no head_init here); batch_size and scale here win over it.
METHOD_PRESETS.register("lt_soups", {
    "optimizer": "adamw", "lr": 3e-5, "weight_decay": 0.01, "batch_size": 128, "epochs": 10,
    "lr_schedule": "cosine", "schedule_unit": "step", "warmup_start_factor": 1e-6, "final_lr_fraction": 0.1,
    "ema_decay": 0.99, "n_evals": 5, "val_per_class": 10, "val_rule": "first", "scale": 30.0,
    "adapter": "full",
    "loss": "la", "loss_options": {"tau": 1.0}, "feature_interchange": False, "templates": "lift",
    "augment": "rrc_flip", "interpolation": "bilinear", "crop_schedule": "none",
    "precision": "bf16", "keep_checkpoints": False,
})


def _sage_row(alpha: float, mu: float, gamma: float, l1: float, l2: float, l3: float) -> dict[str, Any]:
    return {"adapter_options": {"alpha": alpha}, "loss_options": {"gamma": gamma, "mu": mu},
            "lambda1": l1, "lambda2": l2, "lambda3": l3}


PER_DATASET["sage"] = {  # docs/methods.md §5.5, Sage Table 8 [P]
    "cifar100_ir100": _sage_row(0.1, 0.5, 0.05, 0.015, 0.015, 0.4),
    "cifar100_ir50": _sage_row(0.1, 0.5, 0.06, 0.0001, 0.010, 0.6),
    "cifar100_ir10": _sage_row(0.1, 0.5, 0.06, 0.002, 0.005, 0.2),
    "places_lt": _sage_row(0.8, 0.5, 0.05, 0.003, 0.010, 0.2),
    "imagenet_lt": _sage_row(0.8, 0.5, 0.05, 0.005, 0.010, 0.2),
    "inat2018": {**_sage_row(1.0, 0.5, 0.085, 1e-7, 1e-7, 1e-7), "epochs": 20},
}
PER_DATASET["lift"] = {"inat2018": {"epochs": 20}}
PER_DATASET["linear_probe"] = {"inat2018": {"epochs": 20}}
PER_DATASET["full_ft"] = {"inat2018": {"epochs": 20}}
PER_DATASET["lift_plus"] = {"inat2018": {"epochs": 15}}  # LIFT+ README: num_epochs 15 on iNat
PER_DATASET["zero_shot"] = {"inat2018": {"epochs": 0}}
# CIFAR-100-LT as the authors' script draws it: `default_rng(0)` per class (selection=lt_soups),
# not LIFT's RandomState(0) that the other presets use (5,585 of 10,847 images coincide)
PER_DATASET["lt_soups"] = {name: {"data_options": {"selection": "lt_soups"}}
                           for name in ("cifar100_lt", "cifar100_ir100", "cifar100_ir50", "cifar100_ir10")}


def build_config(dataset: str, backbone: str, method: str, overrides: dict[str, Any] | None = None) -> FitConfig:
    """FitConfig from the dataset settings, the backbone and method presets plus the user's
    overrides (unknown keys and names are ConfigErrors, before anything is loaded)."""
    layers: list[dict[str, Any]] = [
        DATASET_SETTINGS.get(dataset, {}),
        BACKBONE_PRESETS.get(backbone) if backbone in BACKBONE_PRESETS else {"backbone": backbone},
        METHOD_PRESETS.get(method),  # replaces whole dict fields (e.g. sage's loss_options)
        _flatten(PER_DATASET.get(method, {}).get(dataset, {})),
        dict(overrides or {}),
    ]
    cfg = FitConfig(dataset=dataset, method=method)
    for layer in layers:
        cfg = apply_overrides(cfg, layer)
    cfg.check_backbone_fits()
    return cfg


def _flatten(layer: dict[str, Any]) -> dict[str, Any]:
    """Per-dataset entries update (not replace) dict fields: {'loss_options': {...}} -> 'loss_options.k'."""
    out: dict[str, Any] = {}
    for key, value in layer.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out
