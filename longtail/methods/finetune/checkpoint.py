"""Checkpoints: trainable weights as safetensors + JSON (peft-style), resume state via torch.save.

Final weights: RUN/adapter_model.safetensors + RUN/adapter_config.json. Resume state:
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

WEIGHTS = "adapter_model.safetensors"
WEIGHTS_CONFIG = "adapter_config.json"
CHECKPOINTS = "checkpoints"
LATEST = "latest.json"


def _save_tensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def save_weights(folder: str | Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """The trained weights of a run (adapter + head + s1/s2 + W_zs) and the config that rebuilds it."""
    folder = Path(folder)
    _save_tensors(state, folder / WEIGHTS, {"format": "pt", "library": "longtail"})
    write_json(folder / WEIGHTS_CONFIG, config)
    return folder / WEIGHTS


def load_weights(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    folder = Path(folder)
    if not (folder / WEIGHTS).is_file():
        raise DataError(f"{folder} has no {WEIGHTS} (not a finished fine-tuning run)")
    if not (folder / WEIGHTS_CONFIG).is_file():
        raise DataError(f"{folder} has no {WEIGHTS_CONFIG} (not a finished fine-tuning run)")
    return load_weights_file(folder / WEIGHTS), read_json(folder / WEIGHTS_CONFIG)


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
