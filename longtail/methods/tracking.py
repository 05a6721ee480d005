"""Experiment tracking through accelerate's trackers: `log_with=tensorboard|mlflow|wandb`.

`fit`, LT-Soups (each ingredient and stage 2 is a fit run) and `probe` runs open a `RunTracker`
on their run folder: the resolved config as hyperparameters, training curves (loss, lr,
validation score) per optimizer step and per epoch, and the final test metrics by shot group
(test/all, test/many, test/medium, test/few, ...). Logs go under RUN/tracking/, and the run
records where in RUN/tracking.json. TensorBoard writes local event files only; MLflow writes
to RUN/tracking/mlruns unless MLFLOW_TRACKING_URI names a server; W&B keeps its files in
RUN/tracking and follows WANDB_MODE (offline / online) as usual.

The trackers are accelerate's own classes (`accelerate.tracking.LOGGER_TYPE_TO_CLASS`), built and
started as `Accelerator.init_trackers` does, but without an Accelerator, so probe runs (no
accelerate) and fit runs (whose Accelerator exists before the run folder does) share one path.
They log on the main process only (accelerate's `on_main_process`).
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

from longtail.errors import ConfigError
from longtail.eval.metrics import COMPARISON_KEYS
from longtail.registry import Registry

FOLDER = "tracking"
RECORD = "tracking.json"
LOGGED_METRICS = (*COMPARISON_KEYS, "ece")  # the final test metrics a tracker receives (test/all, ...)

# tracker name -> the package it needs (import name, pip name); descriptions for `longtail list`
TRACKERS: Registry[tuple[str, str, str]] = Registry("tracker")
TRACKERS.register("tensorboard", ("tensorboard", "tensorboard", "TensorBoard event files in RUN/tracking (offline)"))
TRACKERS.register("mlflow", ("mlflow", "mlflow", "MLflow: RUN/tracking/mlruns, or the server of MLFLOW_TRACKING_URI"))
TRACKERS.register("wandb", ("wandb", "wandb", "Weights & Biases: files in RUN/tracking; WANDB_MODE=offline to stay local"))


def check_tracker(name: str | None) -> None:
    """The tracker name (None: no tracking); UnknownNameError lists the valid ones. Packages are
    checked when a run starts (`require_tracker`), so saved configs load anywhere."""
    if name is not None:
        TRACKERS.get(name)


def require_tracker(name: str | None) -> None:
    """A one-line ConfigError when the chosen tracker's package is not installed."""
    if name is None:
        return
    module, package, _ = TRACKERS.get(name)
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"log_with={name} needs the '{package}' package: pip install '{package}' "
                          f"(or pip install 'longtail[tracking]')")


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; values a tracker accepts as hyperparameters (bool, int,
    float, str; lists and None as text)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def final_scalars(metrics: dict[str, Any], prefix: str = "test/") -> dict[str, float]:
    """The shot-group metrics of an `eval.metrics.evaluate` dict, as finite floats."""
    out = {}
    for key in LOGGED_METRICS:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


class RunTracker:
    """One tracked run: `log(values, step)`, `finish(metrics, step)`; a no-op without a tracker.

    name: the tracker (None: nothing is logged); folder: the run folder (logs in folder/tracking);
    run_name: the run's name in the tracker's UI (default: the folder's name).
    """

    def __init__(self, name: str | None, folder: str | Path | None, config: dict[str, Any] | None = None,
                 run_name: str | None = None, main_process: bool = True) -> None:
        self.name, self.tracker = name, None
        if name is None or folder is None or not main_process:
            return
        require_tracker(name)
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        folder = Path(folder)
        self.dir = folder / FOLDER
        self.dir.mkdir(parents=True, exist_ok=True)
        run_name = run_name or folder.name
        self.tracker = self._build(LOGGER_TYPE_TO_CLASS[name], run_name)
        self.tracker.start()
        if config is not None:
            self.tracker.store_init_configuration(flat_config(config))
        from longtail.io import write_json

        write_json(folder / RECORD, self.record(run_name))

    def _build(self, cls, run_name: str):
        if self.name == "tensorboard":
            return cls(".", str(self.dir))  # events in RUN/tracking itself
        if self.name == "mlflow":
            if "MLFLOW_TRACKING_URI" not in os.environ:
                import mlflow

                mlflow.set_tracking_uri((self.dir / "mlruns").resolve().as_uri())
            return cls(experiment_name="longtail", logging_dir=str(self.dir), run_name=run_name)
        return cls("longtail", name=run_name, dir=str(self.dir))  # wandb: project, run name, files

    def record(self, run_name: str) -> dict[str, Any]:
        """What RUN/tracking.json says: the tracker, the log folder and, where known, the remote URI."""
        out: dict[str, Any] = {"log_with": self.name, "dir": FOLDER, "path": str(self.dir.resolve()),
                               "run_name": run_name}  # dir: relative to the run folder (moves with it)
        if self.name == "mlflow":
            import mlflow

            out["tracking_uri"] = mlflow.get_tracking_uri()
        if self.name == "wandb":
            run = getattr(self.tracker, "run", None)
            out["url"] = getattr(run, "url", None)
            out["mode"] = os.environ.get("WANDB_MODE", "online")
        return out

    @property
    def active(self) -> bool:
        return self.tracker is not None

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        """Scalars (finite numbers; others are skipped) at `step`."""
        if self.tracker is None:
            return
        clean = {k: float(v) for k, v in values.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if clean:
            self.tracker.log(clean, step=step)

    def finish(self, metrics: dict[str, Any] | None = None, step: int | None = None) -> None:
        """Log the final shot-group metrics (test/all, test/many, ...) and close the tracker."""
        if self.tracker is None:
            return
        if metrics:
            self.log(final_scalars(metrics), step)
        self.tracker.finish()
        self.tracker = None
