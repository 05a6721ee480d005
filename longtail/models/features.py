"""Frozen-feature extraction: a backbone over an image dataset -> FeatureSet, with a disk cache.

Images are decoded, resized and cropped in DataLoader workers (uint8, 4x less to move) and
normalised on the device in batches; the forward runs under `inference_mode` with fp16
autocast on CUDA. The cache key covers the weights (origin and state), the preprocessing,
the precision and the dataset's fingerprint, which includes the images' content (file bytes,
or size + mtime for large folders; zip CRCs; the HF table fingerprint: `ImageDataset.fingerprint`),
so a repeated call loads the file instead and changed images are extracted again (the stale
entry is deleted). The weights enter as `Backbone.weights_fingerprint`, a hash of their bytes:
the same key at any thread count, in any process, on CPU or GPU. An entry saved under the
old fingerprint (float sums, which changed with torch's thread count) is renamed to its new
key and read when it is these weights' at one of the thread counts tried (`adopt_legacy_entry`).
Work in progress is saved in small shards (SHARD_IMAGES / SHARD_SECONDS).
Under `torchrun` / `accelerate launch` (an initialised torch.distributed process group) the
processes share the work: each extracts a contiguous part of the missing images into shards,
the main process assembles and saves the same entry one process would, and every process then
reads it (cache_store.build_rows).
The cache machinery (keys, shards, stale entries) is models/cache_store.py, shared with the
frozen-prefix cache.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from longtail.data.features import FeatureSet, load_features, read_meta, save_features
from longtail.device import resolve_device
from longtail.errors import DataError
from longtail.io import to_jsonable
from longtail.models.backbone import FINGERPRINT, Backbone
from longtail.models.cache_store import (
    Group,
    build_rows,
    claim_entry,
    digest,
    drop_stale,
    entry_prefix,
    process_group,
    remove_abandoned_shards,
    remove_leftovers,
    touch,
    usable_cache,
)

CACHE_FORMAT = 2  # bump when the stored content or the cache key changes meaning
# An extraction in progress saves its features in shards under `<cache entry>.shards/`; a shard
# closes after SHARD_IMAGES images or SHARD_SECONDS seconds, whichever comes first (at a batch
# boundary), so an interrupt loses at most that much work and the same command continues.
SHARD_IMAGES = 512
SHARD_SECONDS = 30.0
# What kind of classifier each named prototype source gives, recorded in the file's meta as
# `prototype_kind`: it decides how features meet prototypes (longtail.methods.probe.prototypes:
# "text" -> cosine, "classifier" -> raw features @ rows + bias). Arrays and other sources: unrecorded.
SOURCE_KINDS = {"text": "text", "imagenet": "classifier"}


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


def cache_key(backbone: Backbone, dataset: Any, precision: str, backbone_key: dict[str, Any] | None = None) -> str:
    """Hex digest over the backbone's cache_key() (or `backbone_key`, computed once by the caller:
    it hashes the weights), the precision and the dataset fingerprint (which covers the images'
    content: see `ImageDataset.fingerprint`)."""
    payload = {"format": CACHE_FORMAT, "backbone": backbone_key or backbone.cache_key(), "precision": precision,
               "dataset": dataset.fingerprint()}
    return digest(payload, 24)


def cache_slot(backbone: Backbone, dataset: Any, precision: str, backbone_key: dict[str, Any] | None = None) -> str:
    """Like `cache_key` but over the dataset's layout only (where and which images, not what
    they hold): entries sharing a slot are one dataset at different times, and only the entry
    of the current content is kept."""
    layout = dataset.layout_key() if hasattr(dataset, "layout_key") else dataset.fingerprint()
    return _slot(backbone_key or backbone.cache_key(), precision, layout)


def _slot(backbone_key: dict[str, Any], precision: str, layout: str) -> str:
    return digest({"format": CACHE_FORMAT, "backbone": backbone_key, "precision": precision, "layout": layout}, 12)


def cache_path(backbone: Backbone, dataset: Any, precision: str, cache_dir: str | Path | None,
               backbone_key: dict[str, Any] | None = None) -> Path:
    """`<cache_dir>/<backbone>-<slot>-<key>.npz` (cache_dir default: `default_cache_dir()`)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    backbone_key = backbone_key or backbone.cache_key()
    slot = cache_slot(backbone, dataset, precision, backbone_key)
    key = cache_key(backbone, dataset, precision, backbone_key)
    return root / f"{entry_prefix(backbone.name)}-{slot}-{key}.npz"


# What an entry written before the byte fingerprints (its meta has no `weights_hash`) must
# record to be a candidate for `adopt_legacy_entry`.
LEGACY_FIELDS = ("backbone", "model_id", "revision", "feature_kind", "preprocess", "precision", "dataset_fingerprint")


def adopt_legacy_entry(backbone: Backbone, dataset: Any, precision: str, path: Path,
                       backbone_key: dict[str, Any], info: dict[str, Any]) -> bool:
    """Rename an entry these weights wrote before the byte fingerprints to `path` (its new
    name), so it is read rather than extracted again; True when one was.

    The old keys hashed `Backbone.legacy_fingerprints` (float64 sums of the weights, whose last
    bits depend on torch's thread count). Candidates are entries of this backbone whose meta
    matches `info` on LEGACY_FIELDS and has no `weights_hash`; one is adopted when its name is
    exactly the one the old scheme gives these weights at this process's thread count or at
    one of the other counts `legacy_fingerprints` tries (the same old key: format, weights
    sums, preprocessing, precision, images). An entry of other weights, or of a thread count not
    tried, stays where it is and is not used (the features are extracted again under the new
    key). The shards of an interrupted old build are adopted when they are under this
    process's own old key."""
    root = path.parent
    if not root.is_dir():
        return False
    ours = {path.name, path.with_suffix(".shards").name}
    entries = [p for p in root.glob(f"{glob.escape(entry_prefix(backbone.name))}-*") if p.name not in ours]
    wanted = set()
    for p in entries:
        meta = read_meta(p) if p.suffix == ".npz" else None
        if meta is not None and "weights_hash" not in meta and all(meta.get(f) == info.get(f) for f in LEGACY_FIELDS):
            wanted.add(p.name)
    shards = any(p.suffix == ".shards" for p in entries)
    if not wanted and not shards:
        return False
    name = getattr(dataset, "name", "the dataset")
    for i, found in enumerate(backbone.legacy_fingerprints()):
        legacy = cache_path(backbone, dataset, precision, root, {**backbone_key, "weights": found[None]})
        if legacy.name in wanted:
            os.replace(legacy, path)
            print(f"reusing the cached features of {name} saved under the old weights fingerprint "
                  f"({legacy.name} -> {path.name})", file=sys.stderr)
            return True
        old_shards, new_shards = legacy.with_suffix(".shards"), path.with_suffix(".shards")
        if i == 0 and old_shards.is_dir() and not new_shards.exists():
            os.replace(old_shards, new_shards)
            print(f"continuing from the shards of {name} saved under the old weights fingerprint", file=sys.stderr)
        if not wanted:
            break
    return False


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
    With `cache`, the features are stored under a key that covers the weights, preprocessing,
    precision and the images' content; an entry of the same images before they changed is
    deleted and extracted again, and an interrupted extraction continues from its shards.
    In a torch.distributed process group every process must call it (it waits for the others):
    they extract disjoint parts and all return the same features (see the module doc).
    """
    if batch_size < 1 or num_workers < 0:
        raise DataError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
    if len(dataset) == 0:
        raise DataError("the image dataset is empty")
    group = process_group()
    dev = group.device(resolve_device(device))
    precision = "fp16-autocast" if dev.type == "cuda" else "fp32"
    backbone_key = backbone.cache_key()  # hashes the weights: once per call
    key = cache_key(backbone, dataset, precision, backbone_key)
    path = cache_path(backbone, dataset, precision, cache_dir, backbone_key) if cache else None
    if path is not None and not usable_cache(path.parent, "feature"):  # read-only: extract, keep nothing
        path = None
    if path is not None:
        group.agree(path.name, "feature cache entry")
    class_names = list(dataset.class_names)
    # Prototypes first: a bad class map or prototype file fails before the long forward pass.
    weights, bias = resolve_prototypes(backbone, class_names, prototypes, prototype_options)
    info = {
        "backbone": backbone.name,
        "model_id": backbone.model_id,
        "revision": backbone.revision,
        "feature_kind": backbone.feature_kind,
        "feature_dim": backbone.feature_dim,
        "preprocess": backbone.transform.to_dict(),
        "weights": backbone_key["weights"],
        "weights_hash": FINGERPRINT,
        "precision": precision,
        "dataset_fingerprint": dataset.fingerprint(),
        "dataset": getattr(dataset, "name", None),
        "group_counts": getattr(dataset, "group_counts", None),
        "cache_key": key,
        **({} if weights is None else {"prototype_kind": prototype_kind(backbone, prototypes)}),
        **(meta or {}),
    }
    labels = np.asarray(dataset.labels, dtype=np.int64)
    claim = claim_entry(path) if path is not None and group.main else None
    try:
        if claim is not None:  # no live build of this entry: what killed ones left goes (issue 22 item 14)
            remove_leftovers(path)
            remove_abandoned_shards(path.parent, entry_prefix(backbone.name),
                                    [_slot(backbone_key, precision, layout)
                                     for layout in getattr(dataset, "superseded", ())])
        if path is not None and group.main and not path.exists():
            adopt_legacy_entry(backbone, dataset, precision, path, backbone_key, to_jsonable(info))
        features = _cached_or_extracted(backbone, dataset, dev, batch_size, num_workers, progress, path,
                                        labels, to_jsonable(info), group)
    finally:
        if claim is not None:
            claim.release()
    return FeatureSet(
        features=features,
        labels=labels,
        class_names=class_names,
        prototypes=weights,
        prototype_bias=bias,
        meta=to_jsonable(info),
    )


def _cached_or_extracted(backbone: Backbone, dataset: Any, device: torch.device, batch_size: int,
                         num_workers: int, progress: bool, path: Path | None, labels: np.ndarray,
                         meta: dict[str, Any], group: Group) -> np.ndarray:
    """The features from the cache entry at `path`, else extracted and saved there (with
    `labels` and `meta`). In a process group the main rank checks the entry and deletes
    stale ones first, the ranks extract together, the main rank saves the entry, and the others
    then read it."""
    if path is None and group.world > 1 and group.main:
        print(f"no feature cache: each of the {group.world} processes extracts every image "
              "(sharing the work needs the cache folder)", file=sys.stderr)
    features = _read_cache(path, len(dataset)) if group.main else None
    if features is None and path is not None and group.main:
        drop_stale(path, getattr(dataset, "name", "the dataset"))
    if path is not None:
        group.barrier()  # the main rank's verdict on the entry is on disk
        if not group.main:
            features = _read_cache(path, len(dataset))
    backbone.to(device).eval()
    if features is not None:
        return features
    shards = None if path is None else path.with_suffix(".shards")
    features = _forward_all(backbone, dataset, device, batch_size, num_workers, progress, shards,
                            group if path is not None else Group())
    if path is None:
        return features
    if group.main:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_features(FeatureSet(features=features, labels=labels, meta=meta), path)
        shutil.rmtree(shards, ignore_errors=True)
    group.barrier()  # the entry is saved
    return features if group.main else _read_cache(path, len(dataset))


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
    touch(path)  # last used now (`longtail cache prune --older-than`)
    return cached.features.astype(np.float32, copy=False)


def _forward_all(
    backbone: Backbone,
    dataset: Any,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    progress: bool,
    shard_dir: Path | None = None,
    group: Group | None = None,
) -> np.ndarray | None:
    """Features of every image (None on the non-main ranks of a process group, which only save
    their share as shards). With `shard_dir`, shards already there are reused and new ones are
    saved as the work goes (see SHARD_IMAGES): an interrupted run resumes (cache_store.build_rows)."""
    transform = backbone.transform
    images = DecodedImages(dataset, transform)
    group = group or process_group()
    shape = (len(dataset), backbone.feature_dim)
    out = np.empty(shape, dtype=np.float32) if group.main else None

    def batches(start: int, stop: int):
        loader = DataLoader(Subset(images, range(start, stop)), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, pin_memory=device.type == "cuda")
        for pixels, index in loader:
            x = transform.normalize(pixels.to(device, non_blocking=True))
            yield index.numpy(), backbone.forward_features(x).float().cpu().numpy()

    with torch.inference_mode(), torch.autocast(device.type, torch.float16, enabled=device.type == "cuda"):
        return build_rows(out, shape, np.float32, shard_dir, batch_size, batches, f"features ({backbone.name})",
                          progress, SHARD_IMAGES, SHARD_SECONDS, group)


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


def prototype_kind(backbone: Backbone, prototypes: str | np.ndarray | torch.Tensor | None) -> str | None:
    """SOURCE_KINDS of the named source `prototypes` ("auto": the backbone's default), else None."""
    if not isinstance(prototypes, str):
        return None
    return SOURCE_KINDS.get(backbone.default_prototype_source if prototypes == "auto" else prototypes)


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
