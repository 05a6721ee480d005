"""Disk-cache machinery shared by the feature cache (features.py) and the frozen-prefix cache
(prefix_cache.py): hashed keys, work saved in shards as it goes (an interrupt loses at most one
shard and the same call continues), atomic saves, and stale-entry removal.

An entry is named `<name>-<slot>-<key>.<ext>`: the slot hashes where the data is (the dataset's
layout) and the key also what it holds, so entries sharing a slot are the same images at
different times and only the one of the current content is kept (`drop_stale`). Shards of an
entry in progress live in `<entry>.shards/` as `START-STOP.npy` (rows START..STOP-1).
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from longtail.io import atomic_write

_SHARD_NAME = re.compile(r"^(\d{9})-(\d{9})\.npy$")


def digest(payload: dict[str, Any], length: int) -> str:
    """Hex sha256 of the JSON of `payload` (sorted keys), cut to `length`."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:length]


def save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # np.save would append '.npy' to a str path
        np.save(handle, array)


def drop_stale(path: Path, name: str, what: str = "features") -> None:
    """Delete the entries (and shards) sharing `path`'s slot but not its key: the same images
    before their content changed."""
    slot = path.name.rsplit("-", 1)[0]

    def key(p: Path) -> str:  # the hex key after the slot, without suffixes (.npz, .shards, ...)
        return p.name[len(slot) + 1:].split(".")[0]

    stale = [p for p in path.parent.glob(f"{glob.escape(slot)}-*") if key(p) != key(path)]
    if not stale:
        return
    print(f"the cached {what} of {name} are stale (its images changed since): computing again", file=sys.stderr)
    for p in stale:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def load_shards(shard_dir: Path | None, out: np.ndarray, done: np.ndarray) -> tuple[int, int]:
    """Fill `out` from the valid shards in `shard_dir` (right row range, row shape and dtype,
    finite values; others are deleted); return (rows, shards) reused."""
    if shard_dir is None or not shard_dir.is_dir():
        return 0, 0
    n, row_shape = out.shape[0], out.shape[1:]
    count = 0
    for shard in sorted(shard_dir.iterdir()):
        match = _SHARD_NAME.match(shard.name)
        start, stop = (int(match[1]), int(match[2])) if match else (0, 0)
        try:
            block = np.load(shard, allow_pickle=False) if 0 <= start < stop <= n else None
        except (OSError, ValueError, EOFError):
            block = None
        if (block is None or block.shape != (stop - start, *row_shape) or block.dtype != out.dtype
                or not np.isfinite(block).all()):
            shutil.rmtree(shard, ignore_errors=True) if shard.is_dir() else shard.unlink(missing_ok=True)
            continue
        out[start:stop], done[start:stop] = block, True
        count += 1
    return int(done.sum()), count


def missing_ranges(done: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges where `done` is False."""
    edges = np.flatnonzero(np.diff(np.concatenate([[True], done, [True]]).astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


class Shards:
    """Saves `out[start:pos]` as a shard once `max_images` rows or `max_seconds` seconds have
    accumulated since the last one, and counts what is kept on disk."""

    def __init__(self, folder: Path | None, out: np.ndarray, images: int, shards: int,
                 max_images: int, max_seconds: float) -> None:
        self.folder, self.out = folder, out
        self.images, self.shards = images, shards
        self.max_images, self.max_seconds = max_images, max_seconds
        self.start = self.pos = 0
        self.since = time.monotonic()

    def begin(self, start: int) -> None:
        self.start = self.pos = start
        self.since = time.monotonic()

    def advance(self, pos: int) -> None:
        self.pos = pos
        if self.pos - self.start >= self.max_images or time.monotonic() - self.since >= self.max_seconds:
            self.close()

    def close(self) -> None:
        if self.folder is None or self.pos <= self.start:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        block = np.ascontiguousarray(self.out[self.start:self.pos])
        atomic_write(self.folder / f"{self.start:09d}-{self.pos:09d}.npy", lambda tmp: save_npy(tmp, block))
        self.images += self.pos - self.start
        self.shards += 1
        self.begin(self.pos)
