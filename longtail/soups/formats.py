"""Run-folder formats a soup can read, evaluate and rebuild theta_0 for (registry by format).

`fit`: a `longtail fit` run (adapter_model.safetensors + adapter_config.json + classes.json);
`lt_soups`: an LT-Soups ingredient/soup folder inside a pipeline folder (plan.yaml above it).
A format gives: the weights file, the zero-shot state dict (W0 for MonoSoup / WiSE-FT / the
recursive soup), metrics of any state dict on the run's test split and balanced accuracy on
a validation split, and the side files that make a merged folder loadable like its inputs.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longtail.errors import DataError
from longtail.io import read_yaml
from longtail.registry import Registry

StateDict = dict[str, torch.Tensor]
FORMATS: Registry[Callable[..., RunFormat]] = Registry("checkpoint format")


class RunFormat:
    """Base: what a soup needs to know about the folders of one kind of run."""

    weights_name: str = "model.safetensors"
    side_files: tuple[str, ...] = ()

    def __init__(self, folder: Path, val_per_class: int | None, device: str) -> None:
        self.folder, self.val_per_class, self.device = folder, val_per_class, device

    def zero_shot(self) -> StateDict:
        raise NotImplementedError

    def metrics(self, state: StateDict) -> dict[str, Any]:
        raise NotImplementedError

    def balanced_val_accuracy(self, state: StateDict) -> float:
        raise NotImplementedError

    def publish(self, out_dir: Path) -> None:
        """Copy the side files that make `out_dir` loadable like an ingredient folder."""
        for name in self.side_files:
            if (self.folder / name).exists():
                shutil.copy2(self.folder / name, out_dir / name)


def _split(dataset, val_per_class: int | None):
    """(val, test): the first `val_per_class` images per class are held out for selection."""
    if not val_per_class:
        return None, dataset
    from longtail.data.controlled_cifar import validation_split

    val_idx, test_idx = validation_split(dataset.labels, val_per_class)
    return dataset.subset(val_idx), dataset.subset(test_idx)


@FORMATS.register("fit")
class FitRun(RunFormat):
    """A `longtail fit` run; its test split (minus held-out validation images) evaluates."""

    weights_name = "adapter_model.safetensors"
    side_files = ("adapter_config.json", "classes.json", "data_stats.json")

    def __init__(self, folder: Path, val_per_class: int | None, device: str) -> None:
        super().__init__(folder, val_per_class, device)
        self._model = self._info = None

    def _load(self):
        if self._model is None:
            from longtail.methods.finetune.runner import load_finetuned

            self._model, self._info = load_finetuned(self.folder, self.device)
            from longtail.methods.finetune.trainer import open_split

            cfg = self._info["config"]
            self.val, self.test = _split(open_split(cfg, cfg.test_split), self.val_per_class)
        return self._model, self._info

    def zero_shot(self) -> StateDict:
        from longtail.methods.finetune.model import build_model
        from longtail.models.backbone import load_backbone

        _, info = self._load()
        cfg = info["config"]
        model = build_model(cfg, load_backbone(cfg.backbone, **cfg.backbone_options), info["class_names"])
        return {k: v.cpu() for k, v in model.trainable_state_dict().items()}

    def _evaluate(self, state: StateDict, dataset) -> dict[str, Any]:
        from longtail.methods.finetune.trainer import evaluate_model

        model, info = self._load()
        model.load_trainable_state_dict(state)
        groups = info.get("group_counts")
        return evaluate_model(model, info["config"], dataset, np.asarray(info["train_counts"]),
                              None if groups is None else np.asarray(groups), info["class_names"])

    def metrics(self, state: StateDict) -> dict[str, Any]:
        self._load()
        return self._evaluate(state, self.test)

    def balanced_val_accuracy(self, state: StateDict) -> float:
        self._load()
        if self.val is None:
            raise DataError("greedy soup needs validation images: pass --val-per-class N")
        return float(self._evaluate(state, self.val)["class_mean"])


@FORMATS.register("lt_soups")
class LTSoupsRun(RunFormat):
    """An ingredient, soup or final folder of an LT-Soups pipeline (plan.yaml two levels up)."""

    def __init__(self, folder: Path, val_per_class: int | None, device: str) -> None:
        super().__init__(folder, val_per_class, device)
        from longtail.soups.lt_soups import LTSoups, LTSoupsConfig

        plan_dir = next(p for p in (folder.parent, folder.parent.parent) if (p / "plan.yaml").exists())
        plan = read_yaml(plan_dir / "plan.yaml")
        fields = LTSoupsConfig.__dataclass_fields__
        cfg = LTSoupsConfig(**{k: v for k, v in plan.items() if k in fields}, progress=False)
        cfg.device = device
        self.pipe = LTSoups(cfg, plan_dir)

    def zero_shot(self) -> StateDict:
        return self.pipe.zero_shot().state_dict()

    def metrics(self, state: StateDict) -> dict[str, Any]:
        return self.pipe.evaluate_state(state)

    def balanced_val_accuracy(self, state: StateDict) -> float:
        return float(self.pipe.evaluate_state(state, split="val")["class_mean"])


def detect_format(folder: str | Path) -> str | None:
    """The format name of a run folder, or None for a bare weights file / unknown folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if (folder / FitRun.weights_name).exists() and (folder / "adapter_config.json").exists():
        return "fit"
    if any((p / "plan.yaml").exists() for p in (folder.parent, folder.parent.parent)) and \
            (folder / "model.safetensors").exists():
        return "lt_soups"
    return None


def open_format(folder: str | Path, val_per_class: int | None = None, device: str = "auto") -> RunFormat:
    """The format object of a run folder (DataError when it is not a known kind of run)."""
    name = detect_format(folder)
    if name is None:
        raise DataError(f"{folder}: not a fit or LT-Soups run folder; evaluation and 'zero-shot' need one")
    return FORMATS.get(name)(Path(folder), val_per_class, device)


def evaluate_soup_run(run: dict[str, Any], test: str | None = None) -> dict[str, Any]:
    """`longtail eval` of a soup/monosoup run: rebuild it through its ingredients' format."""
    from longtail.soups.merge import load_state_dict, weights_file

    folder = Path(run["folder"])
    cfg = run["config"]
    # a soup of fit runs is itself a fit folder; otherwise rebuild through its first input
    origin = folder if detect_format(folder) else (cfg.get("w1") or (cfg.get("ingredients") or [None])[0])
    if origin is None:
        raise DataError(f"{folder}: the soup's ingredients are not recorded; cannot rebuild the model")
    fmt = open_format(origin, None, "auto")
    state = load_state_dict(weights_file(folder))
    if test is None:
        return fmt.metrics(state)
    if not isinstance(fmt, FitRun):
        raise DataError(f"{folder}: --test is supported for soups of fit runs only")
    from longtail.data.images import open_images

    return fmt._evaluate(state, open_images(test, split="test"))


def _register_evaluators() -> None:
    from longtail.eval.evaluators import RUN_EVALUATORS

    for kind in ("soup", "monosoup"):
        if kind not in RUN_EVALUATORS:
            RUN_EVALUATORS.register(kind, evaluate_soup_run)
