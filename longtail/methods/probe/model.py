"""A trained probe: head + how features become the evaluated logits, saved as safetensors + JSON.

logits = ((1 - alpha) * zero-shot(f) + alpha * head(f) - posthoc_tau * log pi) / temperature,
with f optionally L2-normalised, the zero-shot head (class prototypes) optional, alpha the
interpolation weight and temperature the calibration divisor (argmax unchanged).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.data.features import FeatureSet
from longtail.data.stats import require_nonempty
from longtail.device import memory_budget
from longtail.errors import DataError
from longtail.io import load_weights_file, read_json, write_json
from longtail.maths.finite import as_tensor
from longtail.methods.heads import HEAD_FILE, load_head, save_head

_CHUNK = 65536  # rows per inference chunk
ZERO_SHOT_FILE = "zero_shot.safetensors"


def log_prior(class_counts: np.ndarray) -> np.ndarray:
    """log pi_c = log(n_c / N); DataError when a class is empty."""
    counts = np.asarray(class_counts, dtype=np.float64)
    require_nonempty(counts)
    return np.log(counts / counts.sum())


class Probe:
    """A trained head plus how to turn features into the logits that are evaluated."""

    def __init__(
        self,
        head: nn.Module,
        class_counts: np.ndarray,
        *,
        normalize: bool = True,
        posthoc_tau: float = 0.0,
        zero_shot: nn.Module | None = None,
        alpha: float = 1.0,
        temperature: float = 1.0,
        class_names: list[str] | None = None,
        config: dict[str, Any] | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.head = head.cpu().eval()
        self.class_counts = np.asarray(class_counts, dtype=np.int64)
        self.normalize = bool(normalize)
        self.posthoc_tau = float(posthoc_tau)
        self.zero_shot = None if zero_shot is None else zero_shot.cpu().eval()
        self.alpha = float(alpha)
        self.temperature = float(temperature)  # divides the final logits; argmax unchanged
        self.class_names = class_names
        self.config = config or {}
        self.info = info or {}

    @property
    def num_classes(self) -> int:
        return int(self.head.weight.shape[0])

    @property
    def dim(self) -> int:
        return int(self.head.weight.shape[1])

    def check_compatible(self, data: FeatureSet) -> None:
        """One-line DataError unless `data` has this probe's feature dimension and classes."""
        if data.dim != self.dim:
            raise DataError(f"{data.source}: feature dimension {data.dim} differs from the probe's ({self.dim})")
        if data.class_names is not None and self.class_names is not None and data.class_names != self.class_names:
            raise DataError(f"{data.source}: class names differ from the probe's training classes")
        if data.labels.size and int(data.labels.max()) >= self.num_classes:
            raise DataError(f"{data.source}: label {int(data.labels.max())} out of range for "
                            f"{self.num_classes} probe classes")

    @torch.no_grad()
    def parts(self, features: np.ndarray | Tensor) -> tuple[Tensor, Tensor | None]:
        """(trained-head logits, zero-shot logits or None), before interpolation and post-hoc."""
        x = as_tensor(features)
        x = x.to(torch.float32).cpu()
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DataError(f"features must have shape (N, {self.dim}), got {tuple(x.shape)}")
        if self.normalize:
            x = F.normalize(x, dim=-1)
        trained = torch.cat([self.head(c) for c in x.split(_CHUNK)])
        zs = None if self.zero_shot is None else torch.cat([self.zero_shot(c) for c in x.split(_CHUNK)])
        return trained, zs

    def combine(self, trained: Tensor, zs: Tensor | None, alpha: float, tau: float) -> Tensor:
        """(1 - alpha) * zero-shot + alpha * trained (exact at 0 and 1), then z - tau * log pi."""
        z = trained
        if zs is not None and alpha != 1.0:
            z = zs if alpha == 0.0 else (1.0 - alpha) * zs + alpha * trained
        if tau != 0.0:
            z = z - tau * torch.as_tensor(log_prior(self.class_counts), dtype=z.dtype)
        return z

    def logits(self, features: np.ndarray | Tensor) -> np.ndarray:
        """(N, C) logits used for prediction and evaluation."""
        trained, zs = self.parts(features)
        return (self.combine(trained, zs, self.alpha, self.posthoc_tau) / self.temperature).numpy()

    def predict(self, features: np.ndarray | Tensor) -> np.ndarray:
        """Predicted class per row (argmax of `logits`), over row chunks within the memory budget."""
        rows = self.chunk_rows(3 * self.num_classes * 4, len(features))
        return np.concatenate([self.logits(features[s:s + rows]).argmax(axis=1)
                               for s in range(0, len(features), rows)])

    def chunk_rows(self, bytes_per_row: int, total: int) -> int:
        """Rows per chunk so that `bytes_per_row` each stay within the budget its config names
        (`memory`, default auto); at least 1, at most `total`."""
        budget = memory_budget(self.config.get("memory", "auto"), torch.device("cpu"))
        return max(1, min(max(total, 1), budget // max(1, bytes_per_row)))

    def save(self, folder: str | Path) -> None:
        """Write head.safetensors (the trained head), zero_shot.safetensors (the prototype head, if
        any), both in the one head-file layout (`heads.save_head`), and head.json (how they combine);
        never overwrites."""
        folder = Path(folder)
        if (folder / HEAD_FILE).exists() or (folder / "head.json").exists():
            raise DataError(f"{folder}: a saved head already exists (not overwriting)")
        folder.mkdir(parents=True, exist_ok=True)
        save_head(folder / HEAD_FILE, self.head, self.class_names)
        if self.zero_shot is not None:
            save_head(folder / ZERO_SHOT_FILE, self.zero_shot, self.class_names)
        write_json(folder / "head.json", {
            "format": 2,
            "head": self.head.spec(),
            "zero_shot": None if self.zero_shot is None else self.zero_shot.spec(),
            "num_classes": self.num_classes,
            "dim": self.dim,
            "normalize": self.normalize,
            "posthoc_tau": self.posthoc_tau,
            "alpha": self.alpha,
            "temperature": self.temperature,
            "class_counts": self.class_counts,
            "class_names": self.class_names,
            "config": self.config,
            "info": self.info,
        })

    @classmethod
    def load(cls, folder: str | Path) -> Probe:
        """Rebuild a probe written by `save` (weights via safetensors, never unpickled)."""
        folder = Path(folder)
        for name in ("head.json", "head.safetensors"):
            if not (folder / name).exists():
                raise DataError(f"{folder}: missing {name}")
        meta = read_json(folder / "head.json")
        missing = [k for k in ("num_classes", "dim", "head", "class_counts", "normalize", "posthoc_tau",
                               "zero_shot", "alpha", "class_names", "config", "info") if k not in meta]
        if missing:
            raise DataError(f"{folder / 'head.json'}: incomplete, missing {', '.join(missing)}")
        if meta.get("format", 1) < 2:  # before the one head file: both heads in head.safetensors, prefixed
            tensors = load_weights_file(folder / HEAD_FILE)

            def rebuild(spec: dict, prefix: str) -> nn.Module:
                return load_head(folder / HEAD_FILE, legacy=(tensors, prefix, spec))[0]
        else:
            def rebuild(spec: dict, prefix: str) -> nn.Module:
                return load_head(folder / (HEAD_FILE if prefix == "head." else ZERO_SHOT_FILE))[0]

        return cls(
            rebuild(meta["head"], "head."),
            np.asarray(meta["class_counts"]),
            normalize=meta["normalize"],
            posthoc_tau=meta["posthoc_tau"],
            zero_shot=None if meta["zero_shot"] is None else rebuild(meta["zero_shot"], "zero_shot."),
            alpha=meta["alpha"],
            temperature=meta.get("temperature", 1.0),
            class_names=meta["class_names"],
            config=meta["config"],
            info=meta["info"],
        )
