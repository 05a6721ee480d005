"""The frozen-prefix cache: a backbone's hidden states after block `depth`, computed once per
(image, view) and memory-mapped from disk, so training only the blocks after it (partial
fine-tuning, head-only training) never runs the frozen bottom again, across epochs and runs.

An entry is one fp16 (or fp32, `dtype="fp32"`) `.npy` array of shape (N, V, *hidden) plus a `.json` meta, named by the
cache_store rule `<backbone>-<slot>-<key>`. The key covers the prefix weights
(`Backbone.prefix_fingerprint(depth)`: a hash of the bytes of the stem and the first `depth`
blocks only, so runs that differ in the trained top share it, and the same weights give the same
key at any thread count, in any process, on CPU or GPU; entries keyed by the old, thread-count
dependent fingerprint are renamed to their new key when they are these weights':
`adopt_legacy_entries`), the depth, the preprocessing and the view spec the caller
passes, the compute precision, and the dataset fingerprint (the images' content). Building
saves shards as it goes (an interrupted build continues) and moves the finished array in place
atomically; the meta, written last, holds the key, the shape and a sha256 of the array file.
Opening checks all three: a foreign entry (another key), a truncated or edited array, or a
missing meta is reported, deleted and rebuilt, never used. A missing entry is derived from a
shallower whole entry of the same images, views and prefix weights when one exists (blocks
d'..depth-1 on its states), else computed from the images. Views are rendered by the caller
(`render`), so augmentation stays in the fine-tuning code. In a torch.distributed process group
(`torchrun`, `accelerate launch`) every process calls `open_prefix_cache`: they compute disjoint
parts into shards, the main process assembles and saves the entry one process would, and all
then open it (models/cache_store.build_rows).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from longtail.errors import ConfigError, DataError
from longtail.io import atomic_path, write_text
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
)
from longtail.models.features import DecodedImages

CACHE_FORMAT = 1  # bump when the stored content or the key changes meaning
SHARD_IMAGES = 256
SHARD_SECONDS = 30.0
DTYPES = {"fp16": np.float16, "fp32": np.float32}  # fp16 by default: half the disk, ~1e-3 relative rounding

Render = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(uint8 (B, S, S, 3) decoded images on the device, (B,) dataset indices) -> (B, V, 3, H, W)
normalised pixels of the V views of each image."""


def default_cache_dir() -> Path:
    """`$LONGTAIL_CACHE/prefix`, else `~/.cache/longtail/prefix`."""
    root = os.environ.get("LONGTAIL_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "longtail") / "prefix"


def _payload(backbone: Backbone, depth: int, spec: dict[str, Any], precision: str, dtype: str,
             prefix_weights: str | None = None) -> dict[str, Any]:
    return {"format": CACHE_FORMAT, "backbone": backbone.name, "model_id": backbone.model_id,
            "revision": backbone.revision,
            "prefix_weights": prefix_weights if prefix_weights is not None else backbone.prefix_fingerprint(depth),
            "depth": int(depth), "spec": spec, "precision": precision, "dtype": dtype}


def entry_path(backbone: Backbone, dataset: Any, depth: int, spec: dict[str, Any], precision: str,
               cache_dir: str | Path | None = None, dtype: str = "fp16",
               prefix_weights: str | None = None) -> tuple[Path, str]:
    """(`<dir>/<backbone>-<slot>-<key>` without suffix, key) of a prefix-cache entry
    (`prefix_weights`: `backbone.prefix_fingerprint(depth)` when the caller has it)."""
    base = _payload(backbone, depth, spec, precision, dtype, prefix_weights)
    layout = dataset.layout_key() if hasattr(dataset, "layout_key") else dataset.fingerprint()
    slot = _slot(base, layout)
    key = digest({**base, "dataset": dataset.fingerprint()}, 24)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"{entry_prefix(backbone.name)}-{slot}-{key}", key


def _slot(base: dict[str, Any], layout: str) -> str:
    return digest({**base, "layout": layout}, 12)


def adopt_legacy_entries(backbone: Backbone, dataset: Any, depth: int, spec: dict[str, Any], precision: str,
                         cache_dir: str | Path | None, dtype: str, views: int) -> int:
    """Rename the entries these prefix weights wrote before the byte fingerprints, at `depth`
    and below, to their new keys (a shallower one can then be derived from); the number renamed.

    The old keys hashed `Backbone.legacy_fingerprints` (float64 sums of the weights, whose last
    bits depend on torch's thread count). Candidates are entries of this backbone whose meta
    (no `prefix_hash`) has these images, views, spec, precision and dtype; one is renamed when
    its key is exactly the one the old scheme gives these prefix weights at this process's
    thread count or one of the other counts `legacy_fingerprints` tries. Its meta is rewritten
    with the new key (the array and its checksum are unchanged, and checked on opening as
    always). Entries of other weights, or of a thread count not tried, stay and are not used.
    The shards of an interrupted old build at `depth` are taken over when they are under this
    process's own old key."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not root.is_dir():
        return 0
    prefix, fingerprint = glob.escape(entry_prefix(backbone.name)), dataset.fingerprint()
    wanted: dict[str, tuple[int, Path, dict[str, Any]]] = {}  # old key -> (depth, entry path, meta)
    for meta_file in root.glob(f"{prefix}-*.json"):
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (isinstance(meta, dict) and "prefix_hash" not in meta and isinstance(meta.get("key"), str)
                and meta.get("dataset_fingerprint") == fingerprint and meta.get("spec") == spec
                and meta.get("dtype") == dtype and meta.get("precision") == precision
                and isinstance(meta.get("depth"), int) and 0 <= meta["depth"] <= depth
                and (meta.get("shape") or [0, 0])[1:2] == [views] and meta_file.with_suffix(".npy").is_file()):
            wanted[meta["key"]] = (meta["depth"], meta_file.with_suffix(""), meta)
    shards = any(p.is_dir() for p in root.glob(f"{prefix}-*.shards"))
    if not wanted and not shards:
        return 0
    depths = sorted({d for d, _, _ in wanted.values()} | ({depth} if shards else set()))
    name, adopted = getattr(dataset, "name", "the dataset"), 0
    for i, found in enumerate(backbone.legacy_fingerprints(depths)):
        for d in depths:
            old, old_key = entry_path(backbone, dataset, d, spec, precision, root, dtype, found[d])
            if i == 0 and d == depth:
                _adopt_shards(old, entry_path(backbone, dataset, d, spec, precision, root, dtype)[0], name)
            if old_key not in wanted or wanted[old_key][1] != old:
                continue
            meta = wanted.pop(old_key)[2]
            weights = backbone.prefix_fingerprint(d)
            new, key = entry_path(backbone, dataset, d, spec, precision, root, dtype, weights)
            if new.with_suffix(".npy").exists():
                continue
            write_text(new.with_suffix(".json"), json.dumps(
                {**meta, "key": key, **_identity(backbone, weights), "renamed_from": old.name}, indent=1))
            os.replace(old.with_suffix(".npy"), new.with_suffix(".npy"))
            old.with_suffix(".json").unlink(missing_ok=True)
            adopted += 1
            print(f"reusing the prefix states of {name} (depth {d}) saved under the old weights fingerprint "
                  f"({old.name} -> {new.name})", file=sys.stderr)
        if not wanted:
            break
    return adopted


def _adopt_shards(old: Path, new: Path, name: str) -> None:
    old_shards, new_shards = old.with_suffix(".shards"), new.with_suffix(".shards")
    if old_shards.is_dir() and not new_shards.exists() and not new.with_suffix(".npy").exists():
        os.replace(old_shards, new_shards)
        print(f"continuing from the prefix-state shards of {name} saved under the old weights fingerprint",
              file=sys.stderr)


def _identity(backbone: Backbone, prefix_weights: str) -> dict[str, Any]:
    """What a meta records of the weights (from FINGERPRINT on: a later change of scheme can
    find its entries by meta)."""
    return {"backbone": backbone.name, "model_id": backbone.model_id, "revision": backbone.revision,
            "prefix_weights": prefix_weights, "prefix_hash": FINGERPRINT}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


class PrefixCache:
    """An opened entry: `array` is the read-only memory-mapped (N, V, *hidden) fp16 array."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path, self.meta = path, meta
        self.array = np.load(path.with_suffix(".npy"), mmap_mode="r", allow_pickle=False)
        self.depth = int(meta["depth"])
        touch(path.with_suffix(".npy"))  # last used now (`longtail cache prune --older-than`)

    @property
    def views(self) -> int:
        return int(self.array.shape[1])

    def rows(self, indices: np.ndarray, views: np.ndarray) -> torch.Tensor:
        """(B, *hidden) stored (fp16 / fp32) states of images `indices`, view `views[i]` of each."""
        return torch.from_numpy(np.ascontiguousarray(self.array[indices, views]))


def _check_entry(path: Path, key: str, shape: tuple[int, ...], dtype: Any,
                 checksum: bool = True) -> tuple[dict[str, Any] | None, str]:
    """(meta, "") when the entry at `path` is whole and ours (without `checksum`: its key, shape
    and dtype only), else (None, why not)."""
    npy, meta_file = path.with_suffix(".npy"), path.with_suffix(".json")
    if not npy.exists() and not meta_file.exists():
        return None, ""
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        array = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        return None, f"unreadable ({type(err).__name__})"
    if meta.get("key") != key:
        return None, f"a foreign entry (key {meta.get('key')!r}, expected {key!r})"
    if tuple(array.shape) != shape or array.dtype != dtype:
        return None, f"shape {tuple(array.shape)} {array.dtype}, expected {shape} {np.dtype(dtype)}"
    if checksum and meta.get("sha256") != file_sha256(npy):
        return None, "its contents do not match the recorded checksum"
    return meta, ""


def open_prefix_cache(backbone: Backbone, dataset: Any, depth: int, views: int, render: Render,
                      decode: Any, spec: dict[str, Any], device: torch.device,
                      cache_dir: str | Path | None = None, batch_size: int = 64, num_workers: int = 0,
                      progress: bool = True, dtype: str = "fp16") -> PrefixCache:
    """Open (building it first if needed) the prefix cache of `dataset` at `depth`.

    `decode` (an EvalTransform) turns each image into a uint8 square in the loader workers;
    `render` makes its V views; `spec` must describe both (it is part of the key).
    """
    if dtype not in DTYPES:
        raise ConfigError(f"prefix cache dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    group = process_group()
    device = group.device(device)
    precision = "fp16-autocast" if device.type == "cuda" else "fp32"
    prefix_weights = backbone.prefix_fingerprint(depth)
    path, key = entry_path(backbone, dataset, depth, spec, precision, cache_dir, dtype, prefix_weights)
    group.agree(path.name, "prefix cache entry")
    claim = claim_entry(path) if group.main else None
    try:
        if claim is not None:  # no live build of this entry: what killed ones left goes (issue 22 item 14)
            remove_leftovers(path)
            base = _payload(backbone, depth, spec, precision, dtype, prefix_weights)
            remove_abandoned_shards(path.parent, entry_prefix(backbone.name),
                                    [_slot(base, layout) for layout in getattr(dataset, "superseded", ())])
        return _open(backbone, dataset, depth, views, render, decode, spec, device, cache_dir, batch_size,
                     num_workers, progress, dtype, group, precision, prefix_weights, path, key)
    finally:
        if claim is not None:
            claim.release()


def _open(backbone: Backbone, dataset: Any, depth: int, views: int, render: Render, decode: Any,
          spec: dict[str, Any], device: torch.device, cache_dir: str | Path | None, batch_size: int,
          num_workers: int, progress: bool, dtype: str, group: Group, precision: str, prefix_weights: str,
          path: Path, key: str) -> PrefixCache:
    """open_prefix_cache once the entry is named (and claimed by the main rank)."""
    if group.main and not path.with_suffix(".npy").exists():  # the old keys were computed where the weights are now
        adopt_legacy_entries(backbone, dataset, depth, spec, precision, cache_dir, dtype, views)
    backbone.to(device).eval()
    with torch.inference_mode():
        probe = backbone.forward_prefix(_probe_pixels(render, decode, dataset, device)[:1, 0], depth)
    shape = (len(dataset), views, *probe.shape[1:])
    meta = _prepare_entry(path, key, shape, dtype, getattr(dataset, "name", "the dataset")) if group.main else None
    group.barrier()  # the main rank's verdict on the entry is on disk
    if not group.main:  # the main rank has just verified the checksum
        meta = _check_entry(path, key, shape, DTYPES[dtype], checksum=False)[0]
    if meta is not None:
        return PrefixCache(path, meta)
    shard_dir = path.with_suffix(".shards")
    source = shallower_entry(backbone, dataset, depth, spec, precision, cache_dir, dtype, views)
    batches = (_from_entry(source, backbone, depth, device, batch_size) if source is not None
               else _from_pixels(dataset, backbone, depth, render, decode, device, views, batch_size, num_workers))
    what = f"prefix cache ({backbone.name}, depth {depth}" + (f", from depth {source.depth})" if source else ")")
    args = (shape, DTYPES[dtype], shard_dir, batch_size, batches, what, progress, group, device)
    if not group.main:
        _compute(None, *args)
        group.barrier()  # the main rank has saved the entry
        meta, why = _check_entry(path, key, shape, DTYPES[dtype], checksum=False)
        if meta is None:
            raise DataError(f"prefix cache {path}: the entry the main process saved is {why or 'missing'}: "
                            "the cache folder must be shared by all processes")
        return PrefixCache(path, meta)
    with atomic_path(path.with_suffix(".npy")) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=DTYPES[dtype], shape=shape)
        _compute(out, *args)
        out.flush()
        del out
    npy = path.with_suffix(".npy")
    meta = {"key": key, "shape": list(shape), "dtype": dtype, "depth": int(depth),
            "sha256": file_sha256(npy), "dataset": getattr(dataset, "name", None),
            "dataset_fingerprint": dataset.fingerprint(), "spec": spec, "precision": precision,
            "derived_from": source.path.name if source is not None else None,
            **_identity(backbone, prefix_weights)}
    write_text(path.with_suffix(".json"), json.dumps(meta, indent=1))
    shutil.rmtree(shard_dir, ignore_errors=True)
    group.barrier()  # the entry is saved
    return PrefixCache(path, meta)


def _prepare_entry(path: Path, key: str, shape: tuple[int, ...], dtype: str, name: str) -> dict[str, Any] | None:
    """The meta of the whole entry at `path`, else None after deleting a bad entry (warning),
    stale entries of the same images and temporary arrays of killed builds."""
    meta, why = _check_entry(path, key, shape, DTYPES[dtype])
    if meta is not None:
        return meta
    if why:
        warnings.warn(f"prefix cache {path.name}: {why}; rebuilding it", stacklevel=3)
        for suffix in (".npy", ".json"):
            path.with_suffix(suffix).unlink(missing_ok=True)
    else:
        drop_stale(path, name, "prefix states")
    path.parent.mkdir(parents=True, exist_ok=True)
    return None


def _probe_pixels(render: Render, decode: Any, dataset: Any, device: torch.device) -> torch.Tensor:
    """The views of image 0 (to learn the hidden-state shape)."""
    image = torch.from_numpy(decode.to_uint8(dataset.load(0)))[None].to(device)
    return render(image, torch.zeros(1, dtype=torch.long, device=device))


def shallower_entry(backbone: Backbone, dataset: Any, depth: int, spec: dict[str, Any], precision: str,
                    cache_dir: str | Path | None, dtype: str, views: int) -> PrefixCache | None:
    """The deepest whole entry of the same images, views, preprocessing and prefix weights at a
    depth below `depth`, or None: running blocks d'..depth-1 on it gives the wanted states
    without decoding an image (LT-Soups stage 2 starts from the ingredients' entry). Its states
    are stored rounded (fp16), so the derived ones match the direct ones to that rounding."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fingerprint = dataset.fingerprint()
    candidates = []  # (depth, entry path, shape) of entries whose meta matches all but the prefix weights
    for meta_file in root.glob(f"{glob.escape(entry_prefix(backbone.name))}-*.json"):
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (meta.get("dataset_fingerprint") == fingerprint and meta.get("spec") == spec
                and meta.get("dtype") == dtype and meta.get("precision") == precision
                and isinstance(meta.get("depth"), int) and 0 <= meta["depth"] < depth
                and (meta.get("shape") or [0, 0])[1] == views):
            candidates.append((meta["depth"], meta_file.with_suffix(""), tuple(meta["shape"])))
    for d, found, shape in sorted(candidates, key=lambda c: c[0], reverse=True):
        other, key = entry_path(backbone, dataset, d, spec, precision, cache_dir, dtype)
        if found != other:  # the same images at depth d under other prefix weights
            continue
        meta, _ = _check_entry(other, key, shape, DTYPES[dtype])
        if meta is not None:
            return PrefixCache(other, meta)
    return None


def _from_pixels(dataset: Any, backbone: Backbone, depth: int, render: Render, decode: Any,
                 device: torch.device, views: int, batch_size: int, num_workers: int):
    """batches(start, stop) of (indices, (B, V, *hidden) states): decode, render, run the prefix."""
    images = DecodedImages(dataset, decode)

    def batches(start: int, stop: int):
        loader = DataLoader(Subset(images, range(start, stop)), batch_size=batch_size,
                            num_workers=num_workers, pin_memory=device.type == "cuda")
        for pixels, index in loader:
            x = render(pixels.to(device, non_blocking=True), index.to(device))  # (B, V, 3, H, W)
            hidden = backbone.forward_prefix(x.flatten(0, 1), depth)
            yield index.numpy(), hidden.view(len(index), views, *hidden.shape[1:]).float().cpu().numpy()

    return batches


def _from_entry(source: PrefixCache, backbone: Backbone, depth: int, device: torch.device, batch_size: int):
    """batches(start, stop) of a deeper entry's states: blocks source.depth..depth-1 on the source's."""
    dtype = next(backbone.parameters()).dtype

    def batches(start: int, stop: int):
        for a in range(start, stop, batch_size):
            b = min(a + batch_size, stop)
            held = torch.from_numpy(np.array(source.array[a:b])).to(device, dtype)
            hidden = backbone.forward_between(held.flatten(0, 1), source.depth, depth)
            yield np.arange(a, b), hidden.view(b - a, *held.shape[1:2], *hidden.shape[1:]).float().cpu().numpy()

    return batches


def _compute(out: np.ndarray | None, shape: tuple[int, ...], dtype: Any, shard_dir: Path, batch_size: int,
             batches: Any, what: str, progress: bool, group: Group, device: torch.device) -> None:
    """Fill `out` from `batches` (reusing and saving shards; None on a non-main rank, which
    saves its share as shards only)."""
    with torch.inference_mode(), torch.autocast(device.type, torch.float16, enabled=device.type == "cuda"):
        build_rows(out, shape, dtype, shard_dir, batch_size, batches, what, progress, SHARD_IMAGES, SHARD_SECONDS,
                   group)
