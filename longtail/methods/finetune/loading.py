"""Reloading and evaluating fit runs (and anything saved in their layout: soups, MonoSoup edits).

`load_finetuned(folder)` rebuilds the model from model.safetensors + model_config.json (or
their old names) + classes.json and the FitConfig `fit_config_of` finds (a fit run's
config.yaml, else model_config.json's copy); `RunModel` evaluates any state dict of that layout on
the run's test (or validation) images and rebuilds its zero-shot weights theta_0 (what soups
and MonoSoup need); `evaluate_fit_run` is the "fit" run kind's `evaluate`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longtail.errors import DataError
from longtail.io import read_json, read_yaml
from longtail.methods.finetune import checkpoint as ckpt
from longtail.methods.finetune.config import FitConfig, config_from_dict
from longtail.methods.finetune.predict import evaluation_logits
from longtail.models.preprocess import InputSpec

CLASSES = "classes.json"  # class names, full training counts and group counts of a fit run


def train_counts(info: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """(training counts, group counts) recorded in a run's classes.json."""
    groups = info.get("group_counts")
    return np.asarray(info["train_counts"]), None if groups is None else np.asarray(groups)


def is_fit_layout(folder: str | Path) -> bool:
    """Whether a folder holds weights in the fit layout (a fit run, or a soup / edit of fit runs)."""
    return ckpt.weights_path(folder).is_file() and ckpt.config_path(folder).is_file()


def fit_config_of(folder: str | Path) -> FitConfig:
    """The FitConfig of a fit-layout folder: a fit run's config.yaml (the copy `--resume` reads
    too), else the copy in model_config.json of a folder whose config.yaml is about something else
    (a soup, a MonoSoup edit) or that has none (a `longtail export --format longtail` folder)."""
    folder = Path(folder)
    run_config = read_yaml(folder / "config.yaml") if (folder / "config.yaml").is_file() else None
    if isinstance(run_config, dict) and run_config.get("kind") == "fit":
        return config_from_dict(run_config, str(folder / "config.yaml"))
    meta = ckpt.read_model_config(folder)
    if not isinstance(meta.get("config"), dict):
        raise DataError(f"{ckpt.config_path(folder)}: records no fit config, and {folder} is not a fit run")
    return config_from_dict(meta["config"], str(ckpt.config_path(folder)))


def model_config_of(folder: str | Path) -> tuple[FitConfig, InputSpec]:
    """(FitConfig, input spec) of a fit-layout folder, in the new or the old file names."""
    meta = ckpt.read_model_config(folder)
    return fit_config_of(folder), InputSpec.from_dict(meta["input_spec"], str(ckpt.config_path(folder)))


def test_data_record(test_set) -> dict[str, Any]:
    """What a run's metrics record of the images they were computed on (name, count and the
    dataset's content fingerprint), so `longtail eval` can tell whether they changed since."""
    return {"name": getattr(test_set, "name", None), "images": len(test_set), "fingerprint": test_set.fingerprint()}


def evaluate_model(model, cfg: FitConfig, test_set, counts, group_counts=None, class_names=None) -> dict[str, Any]:
    """metrics (all/many/medium/few/ece/...) of the model on a test set via longtail.eval.metrics."""
    from longtail.data.stats import class_stats
    from longtail.eval.metrics import evaluate

    logits = evaluation_logits(model, cfg, test_set, cfg.device, cfg.progress)
    metrics = evaluate(logits, np.asarray(test_set.labels), np.asarray(counts),
                       group_counts=group_counts, class_names=class_names)
    metrics["tte"] = cfg.tte
    metrics["test_data"] = test_data_record(test_set)
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(counts))]
    metrics["head_tail_ratio"] = class_stats(np.asarray(counts), names).to_dict()["head_tail_ratio"]
    return metrics


def load_finetuned(run_dir: str | Path, device: str = "auto"):
    """(model ready for predict_logits, class info dict) rebuilt from a folder in the fit layout."""
    from longtail.device import resolve_device
    from longtail.methods.finetune.model import build_model
    from longtail.models.backbone import load_backbone

    run_dir = Path(run_dir)
    cfg, spec = model_config_of(run_dir)
    state = ckpt.load_weights(run_dir)[0]
    if not (run_dir / CLASSES).is_file():
        raise DataError(f"{run_dir} has no {CLASSES}; not a fit run (or a soup of fit runs)")
    info = read_json(run_dir / CLASSES)
    backbone = load_backbone(cfg.backbone, **cfg.backbone_options)
    model = build_model(cfg, backbone, info["class_names"], init=False)
    model.load_weights(state)
    model.input_spec = spec
    return model.to(resolve_device(device)).eval(), {**info, "config": cfg}


class RunModel:
    """A fit-layout folder's model, evaluable with any weights of its layout."""

    def __init__(self, folder: str | Path, device: str = "auto", val_per_class: int | None = None) -> None:
        from longtail.methods.finetune.data import open_splits

        self.folder = Path(folder)
        self.model, self.info = load_finetuned(folder, device)
        cfg: FitConfig = dataclasses.replace(self.info["config"], device=device, progress=False)
        if val_per_class is not None:
            # the soups' --val-per-class protocol: the first N test images of each class (val_rule=first)
            cfg = dataclasses.replace(cfg, val_per_class=val_per_class, val_rule="first", val_split=None,
                                      val_from="test", n_evals=0)
        self.cfg = cfg
        splits = open_splits(cfg, test=True)
        self.val, self.test = splits.val, splits.test
        self.counts, self.groups = train_counts(self.info)

    def load(self, state: dict[str, torch.Tensor] | None) -> None:
        if state is not None:
            self.model.load_weights(state)

    def metrics(self, state: dict[str, torch.Tensor] | None = None, test_set=None) -> dict[str, Any]:
        """Test metrics of `state` (None: the folder's own weights)."""
        self.load(state)
        return evaluate_model(self.model, self.cfg, self.test if test_set is None else test_set,
                              self.counts, self.groups, self.info["class_names"])

    def balanced_val_accuracy(self, state: dict[str, torch.Tensor]) -> float:
        if self.val is None:
            raise DataError(f"{self.folder}: no validation images; pass --val-per-class N")
        self.load(state)
        return float(evaluate_model(self.model, self.cfg, self.val, self.counts, self.groups,
                                    self.info["class_names"])["class_mean"])

    def zero_shot(self) -> dict[str, torch.Tensor]:
        """theta_0 in this layout: the pretrained backbone with the initial (text) classifier."""
        return zero_shot_weights(self.cfg, self.info["class_names"])


def zero_shot_weights(cfg: FitConfig, class_names) -> dict[str, torch.Tensor]:
    """The weights a run of `cfg` starts from (before training), in the fit layout, on CPU."""
    from longtail.device import resolve_device
    from longtail.methods.finetune.data import open_splits
    from longtail.methods.finetune.model import build_model
    from longtail.methods.finetune.predict import frozen_features
    from longtail.models.backbone import load_backbone

    backbone = load_backbone(cfg.backbone, **cfg.backbone_options)
    model = build_model(cfg, backbone, class_names,
                        lambda: frozen_features(backbone, open_splits(cfg, test=False).train, cfg,
                                                resolve_device(cfg.device)))
    if cfg.init_from:
        model.load_weights(ckpt.load_weights(cfg.init_from)[0])
    return {k: v.detach().cpu().clone() for k, v in model.weights().items()}


def evaluate_fit_run(run: dict[str, Any], test: str | None = None) -> dict[str, Any]:
    """`longtail eval RUN [--test SPEC]` on a fit-layout folder: rebuild the model and evaluate it
    on the run's own test images (refused when their fingerprint differs from the one in the
    run's metrics.json) or on SPEC (the metrics then say under `test_set` whether it is the
    run's own test set)."""
    from longtail.data.open_images import open_matched, test_split_of

    model = RunModel(run["folder"])
    saved = (run.get("metrics") or {}).get("test_data") or {}
    if test is None:
        check_test_images(saved, model.test, run["folder"], model.cfg)
        return model.metrics()
    test_set = open_matched(test, test_split_of(test), model.info["class_names"])
    metrics = model.metrics(test_set=test_set)
    metrics["test_set"] = {"source": test, "own": saved.get("fingerprint") == test_set.fingerprint()}
    return metrics


def check_test_images(saved: dict[str, Any], test_set, folder, cfg: FitConfig) -> None:
    """One-line DataError when the run's test images differ from those it was evaluated on
    (a run without a recorded fingerprint is not checked)."""
    if not saved.get("fingerprint"):
        return
    now = test_data_record(test_set)
    if now["fingerprint"] == saved["fingerprint"]:
        return
    what = (f"{saved.get('images')} images then, {now['images']} now" if saved.get("images") != now["images"]
            else f"same {now['images']} images, other content or labels")
    raise DataError(f"{folder}: the test images of {cfg.dataset} ({test_set.name}) changed since the run was "
                    f"evaluated ({what}; fingerprint {saved['fingerprint']} -> {now['fingerprint']}); "
                    "pass --test DATA to evaluate on these or other images anyway")


def load_fit_config(config: dict[str, Any]) -> FitConfig:
    """The validated FitConfig of a saved fit run (its config.yaml as a dict)."""
    return config_from_dict(config, "config.yaml")
