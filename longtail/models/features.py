"""Frozen-feature extraction: a backbone over an image dataset -> FeatureSet, with a disk cache.

Images are decoded, resized and cropped in DataLoader workers (uint8, 4x less to move) and
normalised on the device in batches; the forward runs under `inference_mode` with fp16
autocast on CUDA. The cache key covers the weights (origin and state), the preprocessing,
the precision and the dataset's fingerprint, so a repeated call loads the file instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from longtail.data.features import FeatureSet, load_features, save_features
from longtail.device import resolve_device
from longtail.errors import DataError
from longtail.io import atomic_write, to_jsonable
from longtail.models.backbone import Backbone

CACHE_FORMAT = 1  # bump when the stored content changes meaning
SHARD_SIZE = 8192  # images per resumable shard of an extraction in progress


def default_cache_dir() -> Path:
    """`$LONGTAIL_CACHE/features`, else `~/.cache/longtail/features`."""
    root = os.environ.get("LONGTAIL_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "longtail") / "features"


class DecodedImages(Dataset):
    """Dataset view yielding (uint8 HxWx3 tensor after resize/crop, index); runs in workers."""

    def __init__(self, images: Any, transform: Any) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.transform.to_uint8(self.images.load(i))), i


def cache_key(backbone: Backbone, dataset: Any, precision: str) -> str:
    """Hex digest over the backbone's cache_key(), the precision and the dataset fingerprint."""
    payload = {
        "format": CACHE_FORMAT,
        "backbone": backbone.cache_key(),
        "precision": precision,
        "dataset": dataset.fingerprint(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def extract_features(
    backbone: Backbone,
    dataset: Any,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    cache_dir: str | Path | None = None,
    progress: bool = True,
    num_workers: int = 0,
    prototypes: str | np.ndarray | torch.Tensor | None = None,
    prototype_options: dict[str, Any] | None = None,
    cache: bool = True,
    meta: dict[str, Any] | None = None,
) -> FeatureSet:
    """Features (N, feature_dim) float32 of every image in `dataset` (an ImageDataset).

    The backbone is moved to `device`. `prototypes`: None, "auto" (the backbone's default
    source, e.g. text for CLIP), a source name for `backbone.prototypes` (with
    `prototype_options`, e.g. templates="sage60"), or a (C, d) array. Prototypes are not cached.
    """
    if batch_size < 1 or num_workers < 0:
        raise DataError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
    if len(dataset) == 0:
        raise DataError("the image dataset is empty")
    dev = resolve_device(device)
    precision = "fp16-autocast" if dev.type == "cuda" else "fp32"
    key = cache_key(backbone, dataset, precision)
    path = None
    if cache:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", backbone.name)[:60]
        path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = path / f"{safe}-{key}.npz"
    class_names = list(dataset.class_names)
    # Prototypes first: a bad class map or prototype file fails before the long forward pass.
    weights, bias = resolve_prototypes(backbone, class_names, prototypes, prototype_options)
    features = _read_cache(path, len(dataset))
    backbone.to(dev).eval()
    if features is None:
        shards = None if path is None else path.with_suffix(".shards")
        features = _forward_all(backbone, dataset, dev, batch_size, num_workers, progress, shards)
    info = {
        "backbone": backbone.name,
        "model_id": backbone.model_id,
        "revision": backbone.revision,
        "feature_kind": backbone.feature_kind,
        "feature_dim": backbone.feature_dim,
        "preprocess": backbone.transform.to_dict(),
        "weights": backbone.weights_fingerprint(),
        "precision": precision,
        "dataset_fingerprint": dataset.fingerprint(),
        "dataset": getattr(dataset, "name", None),
        "group_counts": getattr(dataset, "group_counts", None),
        "cache_key": key,
        **(meta or {}),
    }
    fs = FeatureSet(
        features=features,
        labels=np.asarray(dataset.labels, dtype=np.int64),
        class_names=class_names,
        prototypes=weights,
        prototype_bias=bias,
        meta=to_jsonable(info),
    )
    if path is not None and not path.exists():
        save_features(FeatureSet(features=fs.features, labels=fs.labels, meta=fs.meta), path)
        shutil.rmtree(path.with_suffix(".shards"), ignore_errors=True)
    return fs


def _read_cache(path: Path | None, n: int) -> np.ndarray | None:
    """Cached features, or None when absent; an unreadable or mismatched file is recomputed."""
    if path is None or not path.exists():
        return None
    try:
        cached = load_features(path)
    except DataError as err:
        warnings.warn(f"ignoring unreadable feature cache {path}: {err}", stacklevel=3)
        path.unlink(missing_ok=True)
        return None
    if cached.num_samples != n:
        path.unlink(missing_ok=True)
        return None
    return cached.features.astype(np.float32, copy=False)


def _forward_all(
    backbone: Backbone,
    dataset: Any,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    progress: bool,
    shard_dir: Path | None = None,
    shard_size: int | None = None,
) -> np.ndarray:
    """Features of every image. With `shard_dir`, each block of `shard_size` images is saved
    as it completes, and shards already there are reused: an interrupted run resumes."""
    from tqdm.auto import tqdm

    transform = backbone.transform
    images = DecodedImages(dataset, transform)
    n = len(dataset)
    out = np.empty((n, backbone.feature_dim), dtype=np.float32)
    step = (shard_size or SHARD_SIZE) if shard_dir is not None else n
    todo = []
    for start in range(0, n, step):
        stop = min(start + step, n)
        shard = None if shard_dir is None else shard_dir / f"{start:09d}-{stop:09d}.npy"
        if shard is not None and shard.exists():
            block = np.load(shard, allow_pickle=False)
            if block.shape == (stop - start, backbone.feature_dim):
                out[start:stop] = block
                continue
        todo.append((start, stop, shard))
    total = sum(-(-(stop - start) // batch_size) for start, stop, _ in todo)
    bar = tqdm(total=total, desc=f"features ({backbone.name})", unit="batch", disable=None if progress else True)
    with torch.inference_mode(), torch.autocast(device.type, torch.float16, enabled=device.type == "cuda"):
        for start, stop, shard in todo:
            loader = DataLoader(Subset(images, range(start, stop)), batch_size=batch_size, shuffle=False,
                                num_workers=num_workers, pin_memory=device.type == "cuda")
            for pixels, index in loader:
                x = transform.normalize(pixels.to(device, non_blocking=True))
                out[index.numpy()] = backbone.forward_features(x).float().cpu().numpy()
                bar.update()
            if shard is not None:
                atomic_write(shard, lambda tmp, block=out[start:stop]: _save_npy(tmp, block))
    bar.close()
    return out


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # np.save would append '.npy' to a str path
        np.save(handle, array)


def resolve_prototypes(
    backbone: Backbone,
    class_names: Sequence[str],
    prototypes: str | np.ndarray | torch.Tensor | None,
    options: dict[str, Any] | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(weights (C, d), bias (C,) or None) as float32 arrays, or (None, None)."""
    if prototypes is None or (isinstance(prototypes, str) and prototypes == "none"):
        return None, None
    if isinstance(prototypes, str):
        source = backbone.default_prototype_source if prototypes == "auto" else prototypes
        if source is None:
            return None, None
        weights, bias = backbone.prototypes(class_names, source=source, **(options or {}))
    else:
        weights, bias = prototypes, None
    weights = check_prototypes(weights, len(class_names), backbone.feature_dim, "prototypes")
    if bias is not None:
        bias = _numpy(bias).reshape(-1)
        if bias.shape != (len(class_names),) or not np.all(np.isfinite(bias)):
            raise DataError(f"prototype bias must be {len(class_names)} finite values, got {bias.shape}")
    return weights, bias


def check_prototypes(array: Any, num_classes: int, dim: int, source: str) -> np.ndarray:
    """A (num_classes, dim) finite float32 array, or a one-line DataError naming `source`."""
    arr = _numpy(array)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise DataError(f"{source}: prototypes must have shape ({num_classes}, {dim}), got {arr.shape}")
    if arr.shape[0] != num_classes:
        raise DataError(
            f"{source}: {arr.shape[0]} prototype rows but the dataset has {num_classes} classes"
        )
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
        raise DataError(f"{source}: prototypes must be finite numbers (found NaN, inf or non-numeric)")
    return arr.astype(np.float32)


def load_prototype_file(path: str | Path, num_classes: int, dim: int) -> np.ndarray:
    """Read a user's (C, d) `.npy` prototype array (no pickle) and validate it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prototype file not found: {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path}: not a readable .npy array ({err})") from err
    if not isinstance(array, np.ndarray):  # an .npz archive
        raise DataError(f"{path}: expected a single .npy array, got an archive")
    return check_prototypes(array, num_classes, dim, str(path))


def _numpy(x: Any) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
