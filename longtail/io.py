"""Atomic file writes and small serialisation helpers shared by every module that saves."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from longtail.errors import ConfigError, DataError

# libyaml's parser and emitter (bundled in PyYAML's wheels) with PyYAML's safe constructor and
# representer: the same values as yaml.safe_load / safe_dump, about ten times faster
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    mode = 0o666 & ~_umask()
    os.chmod(tmp_path, mode)  # mkstemp makes 0600; published files get the usual mode
    try:
        yield tmp_path
        # again: a writer may have replaced the file (safetensors' save_file creates it 0600),
        # so weights get the umask's mode like every other file (issue 22 item 15)
        if tmp_path.is_file():
            os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call `writer(tmp_path)` and atomically move the result to `path`."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def to_jsonable(obj: Any) -> Any:
    """`obj` safe for `json.dumps`: numpy/torch scalars and arrays, paths; NaN/inf become null."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # torch tensors
        return to_jsonable(obj.tolist())
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; a corrupt or non-UTF-8 file is a one-line DataError naming it."""
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from err


def write_yaml(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, yaml.dump(to_jsonable(obj), Dumper=_SAFE_DUMPER, sort_keys=False))


def read_yaml(path: str | os.PathLike) -> Any:
    """A YAML file's content; a malformed or non-UTF-8 file is a one-line DataError naming it."""
    try:
        return safe_load_yaml(_read_text(path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err) or type(err).__name__
        raise DataError(f"{path}: not valid YAML ({where}{problem})") from err


def safe_load_yaml(text: str) -> Any:
    """`yaml.safe_load`, raising only yaml.YAMLError: PyYAML's scalar constructors raise
    ValueError / TypeError / AttributeError for malformed tagged or date-like values
    ('2001-13-01', '!!float abc', '!!timestamp x'); those become a YAMLError too."""
    try:
        value = yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 (a safe loader)
    except (ValueError, TypeError, AttributeError) as err:
        raise yaml.YAMLError(f"{type(err).__name__}: {err}") from err
    if _cyclic(value, set()):
        raise yaml.YAMLError("a value contains itself (an alias to its own anchor)")
    return value


def _cyclic(value: Any, open_ids: set[int]) -> bool:
    """Whether a list/dict contains itself (YAML `&a [*a]`), which no config means."""
    if not isinstance(value, (list, dict)):
        return False
    if id(value) in open_ids:
        return True
    open_ids.add(id(value))
    items = value.values() if isinstance(value, dict) else value
    found = any(_cyclic(v, open_ids) for v in items)
    open_ids.discard(id(value))
    return found


def _read_text(path: str | os.PathLike) -> str:
    """A text file's content; missing, unreadable or binary files are one-line DataErrors."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a UTF-8 text file") from err
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or type(err).__name__})") from err


# ----------------------------------------------------------------------------- weights


def load_weights_file(path: str | os.PathLike, framework: str = "pt") -> dict[str, Any]:
    """Every tensor of a .safetensors file (never unpickled); a truncated, corrupt or
    unreadable file is a one-line DataError naming it. framework: 'pt' (torch) or 'np'."""
    with open_weights_file(path, framework) as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


@contextmanager
def open_weights_file(path: str | os.PathLike, framework: str = "pt") -> Iterator[Any]:
    """safetensors' `safe_open` handle (memory-mapped, read tensor by tensor), with the same
    one-line DataError as `load_weights_file` for a bad file. Errors raised by the caller's
    own code inside the `with` block pass through untouched."""
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(path), framework=framework, device="cpu")
    except SafetensorError as err:
        raise DataError(f"{path}: not a valid safetensors file (truncated or corrupt)") from err
    except OSError as err:
        raise DataError(f"{path}: cannot read weights ({err.strerror or type(err).__name__})") from err
    with handle:
        yield _CheckedHandle(handle, path)


class _CheckedHandle:
    """A safe_open handle whose reads turn safetensors' own errors into the one-line DataError."""

    def __init__(self, handle: Any, path: str | os.PathLike) -> None:
        self._handle = handle
        self._path = path

    def keys(self) -> list[str]:
        return list(self._handle.keys())

    def metadata(self) -> dict[str, str] | None:
        return self._handle.metadata()

    def get_tensor(self, key: str) -> Any:
        from safetensors import SafetensorError

        try:
            return self._handle.get_tensor(key)
        except SafetensorError as err:
            raise DataError(f"{self._path}: not a valid safetensors file (tensor '{key}' unreadable)") from err


# ----------------------------------------------------------------------------- outputs


def check_writable(path: str | os.PathLike, what: str = "--out", folder: bool = True) -> Path:
    """Fail before any work when `path` (a folder, or a file when folder=False) cannot be
    created: the nearest existing ancestor must be a writable folder, and an existing `path`
    must be of the wanted type. One-line ConfigError naming the obstacle; nothing is created.
    (Whether an existing run folder may be reused is the run's own check, `runs.create_run`.)"""
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise ConfigError(f"{what} {path}: is a file, not a folder")
        if not folder and path.is_dir():
            raise ConfigError(f"{what} {path}: is a folder, not a file")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: folder is not writable")
    ancestor = path.parent
    while not ancestor.exists() and ancestor.parent != ancestor:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{what} {path}: cannot be created, {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: cannot be created, folder {ancestor} is not writable")
    return path


@contextmanager
def staged_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden sibling folder to fill; rename it to `out` when the block succeeds (never
    over an existing `out`), remove it otherwise: a new output folder appears whole or not at all."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        if out.exists():
            raise ConfigError(f"{out} exists, not overwritten")
        os.rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------- claims


class PathClaim:
    """This process's exclusive claim on an output path (a run folder, a predictions file):
    an OS lock on a hidden '.NAME.lock' file beside it, held until `release()` or the
    process ends (so a killed process never leaves a claim behind). Whoever holds the claim
    may delete that path's leftovers (staging folders, partial shards): their writer is dead.
    """

    def __init__(self, path: str | os.PathLike, what: str = "--out") -> None:
        self._fd: int | None = None
        self.path = Path(path)
        self.lock = self.path.with_name(f".{self.path.name}.lock")
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        while True:  # the lock file may be replaced between open and lock by a releasing owner
            fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o666)
            if not _try_lock(fd):
                owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise ConfigError(f"{what} {self.path} is being written by another running longtail "
                                  f"process (pid {owner}); wait for it or choose another {what}")
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the claim up (idempotent): remove the lock file, then unlock."""
        if self._fd is None:
            return
        try:
            self.lock.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)  # closing the descriptor drops the lock
        self._fd = None

    def __del__(self) -> None:
        self.release()


def _try_lock(fd: int) -> bool:
    """An exclusive, non-blocking lock on an open file (flock; msvcrt on Windows)."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
