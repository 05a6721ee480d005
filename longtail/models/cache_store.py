"""Disk-cache machinery shared by the feature cache (features.py) and the frozen-prefix cache
(prefix_cache.py): hashed keys, work saved in shards as it goes (an interrupt loses at most one
shard and the same call continues), atomic saves, and stale-entry removal.

An entry is named `<name>-<slot>-<key>.<ext>`: the slot hashes where the data is (the dataset's
layout) and the key also what it holds, so entries sharing a slot are the same images at
different times and only the one of the current content is kept (`drop_stale`). Shards of an
entry in progress live in `<entry>.shards/` as `START-STOP.npy` (rows START..STOP-1).

`build_rows` fills an entry's rows, in one process or sharded across a torch.distributed
process group (`torchrun`, `accelerate launch`): the main rank cleans and reads the shards
already there, every rank computes its share of the missing rows (`rank_ranges`: whole
batches, so every image is computed in the batch a one-process run would put it in) and saves
it as shards in the same format, and the main rank reads them back and assembles the entry,
which it alone saves. An interrupted sharded build resumes from all shards, in one process or
in any number. The cache folder must be shared by the processes (one machine, or a shared
file system).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longtail.errors import DataError, LongtailError
from longtail.io import atomic_write

_SHARD_NAME = re.compile(r"^(\d{9})-(\d{9})\.npy$")


def digest(payload: dict[str, Any], length: int) -> str:
    """Hex sha256 of the JSON of `payload` (sorted keys), cut to `length`."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:length]


def entry_prefix(name: str) -> str:
    """The `<name>` part of an entry's file name: a backbone's name, file-name safe."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]


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


# ----------------------------------------------------------------------------- housekeeping
# (issue 22 item 14): a build claims its entry (an OS lock beside it, `io.PathClaim`), so the
# next run of the same entry knows whether the temporary files it finds belong to a live build
# or to a killed one; `longtail cache` lists, sizes and prunes entries through the same claims.

ENTRY_NAME = re.compile(r"^(?P<name>.+)-(?P<slot>[0-9a-f]{12})-(?P<key>[0-9a-f]{24})(?P<suffix>\..*)?$")
KINDS = ("features", "prefix")  # the subfolders of $LONGTAIL_CACHE this module keeps


def cache_root() -> Path:
    """`$LONGTAIL_CACHE`, else `~/.cache/longtail`: the feature cache is `features/` under it,
    the frozen-prefix cache `prefix/`."""
    root = os.environ.get("LONGTAIL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "longtail"


def unwritable(folder: Path) -> str | None:
    """Why `folder` cannot hold cache entries (it is created when missing), or None when it can."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test."):
            pass
    except OSError as err:
        return err.strerror or type(err).__name__
    return None


def usable_cache(folder: Path, what: str) -> bool:
    """Whether `folder` can hold cache entries; when it cannot, one warning says the work goes on
    without the cache and what to do to keep it (issue 22 item 7: a read-only cache)."""
    why = unwritable(folder)
    if why is None:
        return True
    import warnings

    warnings.warn(f"the {what} cache folder {folder} is not writable ({why}): computing without the cache; "
                  "set LONGTAIL_CACHE to a writable folder to keep the work for the next run", stacklevel=3)
    return False


def entry_stem(path: Path) -> str:
    """`<name>-<slot>-<key>` of an entry's file or folder (`X.npz`, `X.shards`, `X`): what its
    claim and its leftovers are named after (a backbone name may hold dots)."""
    match = ENTRY_NAME.match(path.name)
    return f"{match['name']}-{match['slot']}-{match['key']}" if match else path.name


def claim_entry(path: Path) -> Any:
    """This process's claim on the cache entry of `path` (an `io.PathClaim` on its stem, the
    same for its array, meta and shards: release it when the entry is built), or None when a
    live process holds it (or the folder takes no lock)."""
    from longtail.errors import ConfigError
    from longtail.io import PathClaim

    try:
        return PathClaim(path.parent / entry_stem(path), "cache entry")
    except (ConfigError, OSError):
        return None


def remove_leftovers(path: Path) -> int:
    """Delete the temporary files that killed builds of the entry `path` left beside it
    (`.NAME*.tmp*`, from `io.atomic_path`); call it only while holding the entry's claim (no
    live build of it then exists). The number deleted."""
    stem = entry_stem(path)
    removed = 0
    for orphan in path.parent.glob(f".{glob.escape(stem)}.*.tmp*"):
        try:
            shutil.rmtree(orphan) if orphan.is_dir() else orphan.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def remove_abandoned_shards(root: Path, prefix: str, slots: list[str]) -> int:
    """Delete the shard folders of the entries in `slots` (datasets this one replaces: the same
    images before `on_corrupt=skip` left the unreadable ones out, which no run will finish)
    unless a live build holds them. The number deleted."""
    removed = 0
    for slot in slots:
        for shards in root.glob(f"{glob.escape(prefix)}-{slot}-*.shards"):
            claim = claim_entry(shards)
            if claim is None:
                continue
            try:
                shutil.rmtree(shards, ignore_errors=True)
                removed += 1
            finally:
                claim.release()
    return removed


def touch(path: Path) -> None:
    """Mark an entry as used now: its access time (what `longtail cache prune --older-than`
    reads, with the modification time); the modification time stays the build's."""
    try:
        os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))
    except OSError:  # a read-only cache is still read
        pass


@dataclass
class CacheEntry:
    """One entry of a cache folder, with every file that belongs to it."""

    kind: str  # features | prefix
    name: str  # `<backbone>-<slot>-<key>`
    paths: list[Path]
    state: str  # ready | partial (shards of an unfinished build) | leftover (temporary files only)
    size: int  # bytes
    used: float  # last use (newest access or modification time of its files), seconds since the epoch
    busy: bool = False  # a live process holds its claim

    @property
    def backbone(self) -> str:
        return ENTRY_NAME.match(self.name)["name"]


def _size(path: Path) -> tuple[int, float]:
    """(bytes, last use) of a file or a folder's files: the newest modification time, or for an
    entry's array (`.npz`, `.npy`, which `touch` marks on each read) its access time if newer."""
    try:
        if path.is_dir():
            files = [p.stat() for p in path.rglob("*") if p.is_file()]
            return sum(st.st_size for st in files), max([path.stat().st_mtime, *(st.st_mtime for st in files)])
        st = path.stat()
        array = path.suffix in (".npz", ".npy") and not path.name.startswith(".")
        return st.st_size, max(st.st_mtime, st.st_atime) if array else st.st_mtime
    except FileNotFoundError:
        return 0, 0.0


def cache_entries(root: Path | None = None) -> list[CacheEntry]:
    """Every entry of the feature and prefix caches under `root` (default `cache_root()`), oldest
    use first. Lock files of finished claims are not entries; stale ones go with their entry."""
    root = Path(root) if root is not None else cache_root()
    entries: list[CacheEntry] = []
    for kind in KINDS:
        folder = root / kind
        if not folder.is_dir():
            continue
        groups: dict[str, list[Path]] = {}
        for path in folder.iterdir():
            name = path.name
            if name.startswith(".write-test."):
                continue
            if name.startswith("."):  # .ENTRY.ext.XXXX.tmp.ext or .ENTRY.ext.lock
                name = name[1:]
            match = ENTRY_NAME.match(name)
            if match is None:
                continue
            groups.setdefault(f"{match['name']}-{match['slot']}-{match['key'].split('.')[0]}", []).append(path)
        for name, paths in groups.items():
            visible = [p for p in paths if not p.name.startswith(".")]
            if any(p.suffix in (".npz", ".npy") for p in visible):
                state = "ready"
            elif any(p.suffix == ".shards" for p in visible):
                state = "partial"
            elif any(".tmp" in p.name for p in paths):
                state = "leftover"
            else:
                state = "lock"  # a lock file alone: not worth listing, removed by prune
            sizes = [_size(p) for p in paths if not p.name.endswith(".lock")]  # a lock holds a pid
            sizes = sizes or [(0, max(_size(p)[1] for p in paths))]
            entry = CacheEntry(kind, name, sorted(paths), state, sum(s for s, _ in sizes),
                               max(t for _, t in sizes))
            entry.busy = _busy(paths)
            entries.append(entry)
    return sorted(entries, key=lambda e: e.used)


def _busy(paths: list[Path]) -> bool:
    """Whether a live process holds a claim on the entry (a lock file that is locked)."""
    from longtail.io import _try_lock

    for lock in (p for p in paths if p.name.endswith(".lock")):
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            if not _try_lock(fd):
                return True
        finally:
            os.close(fd)  # drops the lock just taken
    return False


def remove_entry(entry: CacheEntry) -> int:
    """Delete an entry's files (not while a live process builds it); the bytes freed."""
    if entry.busy:
        return 0
    for path in entry.paths:
        try:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        except FileNotFoundError:
            pass
    return entry.size


def load_shards(shard_dir: Path | None, out: np.ndarray, done: np.ndarray) -> tuple[int, int]:
    """Fill `out` from the valid shards in `shard_dir` (right row range, row shape and dtype,
    finite values; others are deleted) whose rows are not all `done` yet; return (rows done,
    shards read)."""
    if shard_dir is None or not shard_dir.is_dir():
        return 0, 0
    n, row_shape = out.shape[0], out.shape[1:]
    count = 0
    for shard in sorted(shard_dir.iterdir()):
        match = _SHARD_NAME.match(shard.name)
        start, stop = (int(match[1]), int(match[2])) if match else (0, 0)
        if 0 <= start < stop <= n and done[start:stop].all():
            continue  # already in `out` (the main rank's own rows of a sharded build)
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
    """Saves rows start..pos-1 as a shard once `max_images` rows or `max_seconds` seconds have
    accumulated since the last one, and counts what is kept on disk.

    `out` holds every row (row i at out[i]), or with `rolling` only the shard being filled
    (row i at out[i - start]; it needs max_images + one batch rows): a rank that only writes
    shards never holds the whole array."""

    def __init__(self, folder: Path | None, out: np.ndarray, images: int, shards: int,
                 max_images: int, max_seconds: float, rolling: bool = False) -> None:
        self.folder, self.out, self.rolling = folder, out, rolling
        self.images, self.shards = images, shards
        self.max_images, self.max_seconds = max_images, max_seconds
        self.start = self.pos = self.offset = 0
        self.since = time.monotonic()

    def begin(self, start: int) -> None:
        self.start = self.pos = start
        self.offset = start if self.rolling else 0
        self.since = time.monotonic()

    def put(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Store the computed `values` of the (ascending, contiguous) `rows`."""
        self.out[rows - self.offset] = values
        self.advance(int(rows.max()) + 1)

    def advance(self, pos: int) -> None:
        self.pos = pos
        if self.pos - self.start >= self.max_images or time.monotonic() - self.since >= self.max_seconds:
            self.close()

    def close(self) -> None:
        if self.folder is None or self.pos <= self.start:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        block = np.ascontiguousarray(self.out[self.start - self.offset:self.pos - self.offset])
        atomic_write(self.folder / f"{self.start:09d}-{self.pos:09d}.npy", lambda tmp: save_npy(tmp, block))
        self.images += self.pos - self.start
        self.shards += 1
        self.begin(self.pos)


@dataclass(frozen=True)
class Group:
    """This process's place in the torch.distributed process group that `torchrun` /
    `accelerate launch` started (initialised by accelerate or the command); rank 0 of 1 without one."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        if dist.get_backend() == "nccl":  # nccl needs this rank's GPU named
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()

    def agree(self, value: str, what: str) -> None:
        """A one-line DataError unless every rank passes the same `value` (a cache entry's
        name): ranks building different entries would wait for each other's shards forever."""
        if self.world == 1:
            return
        import torch.distributed as dist

        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        if len(set(values)) > 1:
            raise DataError(f"the {self.world} processes disagree on the {what} ({', '.join(sorted(set(values)))}): "
                            "they must load the same weights and images")

    def device(self, device: torch.device) -> torch.device:
        """`device`, on this rank's own GPU (LOCAL_RANK) when it is CUDA without an index."""
        if self.world > 1 and device.type == "cuda" and device.index is None:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return device


def process_group() -> Group:
    """The current process group (`Group()` when torch.distributed is not initialised)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size())
    return Group()


def rank_ranges(done: np.ndarray, batch_size: int, rank: int, world: int) -> list[tuple[int, int]]:
    """Rank `rank`'s share of the rows not `done`, as [start, stop) ranges: each missing range is
    cut into batches from its start (the batches one process makes of it) and the batches are
    dealt in `world` contiguous runs, equal up to one batch."""
    cuts = [(s, min(s + batch_size, b)) for a, b in missing_ranges(done) for s in range(a, b, batch_size)]
    share = np.array_split(np.arange(len(cuts)), world)[rank]
    ranges: list[tuple[int, int]] = []
    for a, b in (cuts[i] for i in share):
        if ranges and ranges[-1][1] == a:
            ranges[-1] = (ranges[-1][0], b)
        else:
            ranges.append((a, b))
    return ranges


def shard_coverage(shard_dir: Path, n: int) -> np.ndarray:
    """(n,) bool: rows held by the shards in `shard_dir`, from their names (the main rank's
    `load_shards` has deleted invalid shards by then)."""
    done = np.zeros(n, dtype=bool)
    if shard_dir.is_dir():
        for shard in shard_dir.iterdir():
            match = _SHARD_NAME.match(shard.name)
            if match and 0 <= int(match[1]) < int(match[2]) <= n:
                done[int(match[1]):int(match[2])] = True
    return done


Batches = Callable[[int, int], Iterator[tuple[np.ndarray, Any]]]
"""(start, stop) -> (rows, values) for consecutive batches of rows start..stop-1, in order."""


def build_rows(out: np.ndarray | None, shape: tuple[int, ...], dtype: Any, shard_dir: Path | None,
               batch_size: int, batches: Batches, desc: str, progress: bool, max_images: int,
               max_seconds: float, group: Group | None = None) -> np.ndarray | None:
    """Compute every row of an entry of `shape`, reusing and saving shards in `shard_dir`.

    One process (or `shard_dir` None): fills `out`. In a process group (see the module doc):
    the main rank passes `out` and gets it back whole; the other ranks pass None, write their
    shares as shards and get None. Says on stderr what was reused, and on an interrupt what is
    kept for the next run.
    """
    from longtail.progress import progress_bar  # a bar on a terminal, a line every 30 s in a log

    group = group or process_group()
    if shard_dir is None:
        group = Group()
    n = shape[0]
    done = np.zeros(n, dtype=bool)
    reused = count = 0
    if group.main:
        reused, count = load_shards(shard_dir, out, done)
        if count:
            print(f"reusing {reused} images from {count} shards under {shard_dir}", file=sys.stderr)
    group.barrier()  # the main rank has deleted the invalid shards
    if not group.main:
        done = shard_coverage(shard_dir, n)
    group.barrier()  # every rank knows what is missing before any new shard appears
    todo = rank_ranges(done, batch_size, group.rank, group.world)
    rolling = not group.main
    buffer = np.empty((max_images + batch_size, *shape[1:]), dtype=dtype) if rolling else out
    shards = Shards(shard_dir, buffer, 0 if rolling else reused, 0 if rolling else count, max_images,
                    max_seconds, rolling=rolling)
    total = reused + sum(b - a for a, b in todo)
    rank = f", rank {group.rank} of {group.world}" if group.world > 1 else ""
    bar = progress_bar(total=total, initial=reused, desc=desc + rank, unit="image", enabled=progress and group.main)
    try:
        for start, stop in todo:
            shards.begin(start)
            for rows, values in batches(start, stop):
                shards.put(rows, values)
                bar.update(len(rows))
            shards.close()
    except BaseException as err:
        if shard_dir is not None and (shards.images or not isinstance(err, LongtailError)):
            # an interrupt (or a crash) continues when run again; a data error (a corrupt image)
            # would fail the same way: its own message says what to change (issue 22 item 7)
            then = ("they are reused once the error below is fixed" if isinstance(err, LongtailError)
                    else "run the same command again to continue")
            print(f"kept {shards.images} of {n if group.main else total} images in {shards.shards} shards "
                  f"under {shard_dir}{rank}; {then}", file=sys.stderr)
        raise
    finally:
        bar.close()
    group.barrier()  # every rank's shards are on disk
    if not group.main:
        return None
    if group.world > 1:
        for start, stop in todo:  # the main rank's own rows are in `out` already
            done[start:stop] = True
        load_shards(shard_dir, out, done)
        if not done.all():
            raise DataError(f"rows {missing_ranges(done)[:3]} of {shard_dir} are missing after every process "
                            "finished: the cache folder must be shared by all processes")
    return out
