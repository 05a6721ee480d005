"""Checkpoints: trainable weights as safetensors + JSON, resume state via torch.save.

Final weights (the fit layout): RUN/model.safetensors (`FineTuneModel.weights()`) + RUN/model_config.json
({"kind": "fit", "input_spec": InputSpec.to_dict()}, plus "config", the FitConfig that rebuilds the
model, only in folders whose config.yaml is not a fit run's: soups, MonoSoup edits, exports). A fit
run's FitConfig is its config.yaml, the one copy resume and evaluation both read. Folders written
before the rename hold adapter_model.safetensors + adapter_config.json (then with the config in
both files); they are read as they are (`weights_path`, `config_path`). Resume state:
RUN/checkpoints/step-XXXXXXXX/{trainable.safetensors, training_state.pt}, published by an
atomic write of RUN/checkpoints/latest.json after both files are complete, so a crash at any
moment leaves the previous checkpoint usable. training_state.pt holds only tensors and plain
Python values (optimizer/scheduler state, RNG states, counters) and is loaded with
torch.load(weights_only=True).
"""

from __future__ import annotations

import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from longtail.errors import DataError
from longtail.io import atomic_path, atomic_write, load_weights_file, read_json, write_json
from longtail.models.preprocess import InputSpec

WEIGHTS = "model.safetensors"
WEIGHTS_CONFIG = "model_config.json"
# the names of the fit layout before they were changed to not look like peft files (a peft loader
# reading adapter_config.json found no peft config); read, never written (`longtail export
# --format peft` writes real peft files of those names)
LEGACY_WEIGHTS, LEGACY_WEIGHTS_CONFIG = "adapter_model.safetensors", "adapter_config.json"
CHECKPOINTS = "checkpoints"
LATEST = "latest.json"


def _save_tensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def weights_path(folder: str | Path) -> Path:
    """The weights file of a fit-layout folder (the old name in a folder written before the rename)."""
    folder = Path(folder)
    return folder / LEGACY_WEIGHTS if not (folder / WEIGHTS).is_file() and (folder / LEGACY_WEIGHTS).is_file() \
        else folder / WEIGHTS


def config_path(folder: str | Path) -> Path:
    """The weights' config file of a fit-layout folder (the old name in a folder written before the rename)."""
    folder = Path(folder)
    old = folder / LEGACY_WEIGHTS_CONFIG
    return old if not (folder / WEIGHTS_CONFIG).is_file() and old.is_file() else folder / WEIGHTS_CONFIG


def model_config(input_spec: InputSpec, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """model_config.json's content: the input spec, and the FitConfig dict where the folder's
    config.yaml is not a fit run's (see the module docstring)."""
    return {"kind": "fit", "input_spec": input_spec.to_dict(), **({} if config is None else {"config": config})}


def save_weights(folder: str | Path, state: dict[str, torch.Tensor], input_spec: InputSpec,
                 config: dict[str, Any] | None = None, metadata: dict[str, str] | None = None) -> Path:
    """The trained weights of a model (adapter + head + s1/s2 + W_zs) and model_config.json."""
    folder = Path(folder)
    _save_tensors(state, folder / WEIGHTS, {"format": "pt", "library": "longtail", **(metadata or {})})
    write_json(folder / WEIGHTS_CONFIG, model_config(input_spec, config))
    return folder / WEIGHTS


def read_model_config(folder: str | Path) -> dict[str, Any]:
    """model_config.json (or adapter_config.json) of a fit-layout folder, as saved."""
    config = config_path(folder)
    if not config.is_file():
        raise DataError(f"{folder} has no {WEIGHTS_CONFIG} (not a finished fine-tuning run)")
    meta = read_json(config)
    if not isinstance(meta, dict) or "input_spec" not in meta:
        raise DataError(f"{config}: not a fit-layout weights config (no input_spec)")
    return meta


def load_weights(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, model_config.json as saved) of a fit-layout folder, new or old file names."""
    weights = weights_path(folder)
    if not weights.is_file():
        raise DataError(f"{folder} has no {WEIGHTS} (not a finished fine-tuning run)")
    meta = read_model_config(folder)
    return load_weights_file(weights), meta


def rng_state() -> dict[str, Any]:
    """torch CPU (+ CUDA), numpy and Python RNG states, as tensors/tuples that
    `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state()` captured (numpy/Python parts when present)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "python" in state:
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))


def save_checkpoint(run_dir: str | Path, step: int, trainable: dict[str, torch.Tensor],
                    training_state: dict[str, Any], keep: int = 1) -> Path:
    """Write a resumable checkpoint and point latest.json at it; keep the newest `keep`."""
    root = Path(run_dir) / CHECKPOINTS
    folder = root / f"step-{step:08d}"
    folder.mkdir(parents=True, exist_ok=True)
    _save_tensors(trainable, folder / "trainable.safetensors")
    with atomic_path(folder / "training_state.pt") as tmp:
        torch.save(training_state, tmp)
    write_json(root / LATEST, {"checkpoint": folder.name, "step": step})
    old = sorted(p for p in root.glob("step-*") if p.is_dir() and p.name != folder.name)
    for stale in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(stale, ignore_errors=True)
    return folder


def load_checkpoint(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(trainable tensors, training state) of the latest checkpoint, or None when there is none."""
    root = Path(run_dir) / CHECKPOINTS
    if not (root / LATEST).is_file():
        return None
    latest = read_json(root / LATEST)
    if not isinstance(latest, dict) or not isinstance(latest.get("checkpoint"), str):
        raise DataError(f"{root / LATEST}: names no checkpoint folder")
    folder = root / latest["checkpoint"]
    trainable = load_weights_file(folder / "trainable.safetensors")
    try:
        state = torch.load(folder / "training_state.pt", map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else "truncated or corrupt"
        raise DataError(f"cannot read checkpoint {folder / 'training_state.pt'} ({reason})") from err
    return trainable, state
