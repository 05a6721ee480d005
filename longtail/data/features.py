"""The feature-file format (also the bring-your-own-embeddings format) and its validation.

A feature file is an `.npz` (or `.safetensors`) holding:
  features (N x d float), labels (N int), and optionally class_names (C strings),
  prototypes (C x d float), prototype_bias (C float) and meta (a JSON string).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from longtail.errors import DataError
from longtail.io import atomic_write

SUFFIXES = (".npz", ".safetensors")
# Largest |feature| accepted: squared norms of d <= 1e6 dimensions stay far below float32's 3.4e38.
MAX_FEATURE = 1e15


@dataclass
class FeatureSet:
    """Features with integer labels; `num_classes` comes from class_names when present."""

    features: np.ndarray
    labels: np.ndarray
    class_names: list[str] | None = None
    prototypes: np.ndarray | None = None
    prototype_bias: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features)
        self.labels = np.asarray(self.labels)
        if self.class_names is not None:
            self.class_names = [str(c) for c in self.class_names]
        self.validate()

    @property
    def num_samples(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def num_classes(self) -> int:
        if self.class_names is not None:
            return len(self.class_names)
        if self.prototypes is not None:
            return int(self.prototypes.shape[0])
        return int(self.labels.max()) + 1 if self.labels.size else 0

    def class_counts(self, num_classes: int | None = None) -> np.ndarray:
        """Number of samples per class (length `num_classes`, default self.num_classes)."""
        return np.bincount(self.labels, minlength=num_classes or self.num_classes)

    def names(self) -> list[str]:
        """Class names, or 'class_<i>' when the file has none."""
        return self.class_names or [f"class_{i}" for i in range(self.num_classes)]

    def with_arrays(self, features: np.ndarray, labels: np.ndarray) -> FeatureSet:
        """A copy with other samples but the same classes, prototypes and meta."""
        return replace(self, features=features, labels=labels)

    def check_trainable(self) -> None:
        """DataError when nothing can be learnt from these features: every one is zero (issue 22
        item 12: the cosine solver's Cholesky failed with a traceback). A zero row among others
        is defined: it L2-normalises to zero, so a cosine head scores it the same for every
        class, and a linear head by its bias alone."""
        if not np.any(self.features):
            raise DataError(f"{self.source}: every feature is zero ({self.num_samples} rows): nothing to learn from")

    def validate(self) -> None:
        """Raise DataError (one line) on any shape, dtype or value problem."""
        src = self.source
        f, y = self.features, self.labels
        if f.ndim != 2:
            raise DataError(f"{src}: features must be a 2-D array (N x d), got shape {f.shape}")
        if not np.issubdtype(f.dtype, np.floating):
            raise DataError(f"{src}: features must be floating point, got {f.dtype}")
        if y.ndim != 1:
            raise DataError(f"{src}: labels must be a 1-D array, got shape {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
                self.labels = y = y.astype(np.int64)
            else:
                raise DataError(f"{src}: labels must be integers, got {y.dtype}")
        if f.shape[0] != y.shape[0]:
            raise DataError(
                f"{src}: features and labels differ in length ({f.shape[0]} vs {y.shape[0]})"
            )
        if f.shape[0] == 0:
            raise DataError(f"{src}: the file holds no samples")
        bad = ~np.isfinite(f)
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0])
            raise DataError(
                f"{src}: features contain NaN or inf in {rows.size} rows (first: row {rows[0]})"
            )
        # issue 22 item 12: values whose squares overflow float32 (every head computes norms or
        # dot products) fail here, before any work (all-zero training sets: `check_trainable`)
        largest = float(np.abs(f).max())
        if largest > MAX_FEATURE:
            row = int(np.argmax(np.abs(f).max(axis=1)))
            raise DataError(f"{src}: feature values up to {largest:.3g} in magnitude (row {row}) overflow "
                            f"float32 arithmetic (limit {MAX_FEATURE:.0e}); rescale them, e.g. L2-normalise each row")
        if y.min() < 0:
            raise DataError(f"{src}: negative label {int(y.min())}")
        if self.class_names is not None:
            from longtail.data.images import check_unique_names

            check_unique_names(self.class_names, src)
        c = self.num_classes
        if self.class_names is not None and y.max() >= c:
            raise DataError(
                f"{src}: label {int(y.max())} out of range for {c} class names"
            )
        if self.prototypes is not None:
            p = np.asarray(self.prototypes)
            if p.ndim != 2 or p.shape[1] != f.shape[1] or p.shape[0] != c or y.max() >= p.shape[0]:
                raise DataError(
                    f"{src}: prototypes must have shape ({c}, {f.shape[1]}), got {p.shape}"
                )
            if not np.all(np.isfinite(p)):
                raise DataError(f"{src}: prototypes contain NaN or inf")
        if self.prototype_bias is not None:
            b = np.asarray(self.prototype_bias)
            if self.prototypes is None:
                raise DataError(f"{src}: prototype_bias given without prototypes")
            if b.shape != (c,):
                raise DataError(f"{src}: prototype_bias must have shape ({c},), got {b.shape}")
            if not np.all(np.isfinite(b)):
                raise DataError(f"{src}: prototype_bias contains NaN or inf")


def content_hash(fs: FeatureSet) -> str:
    """SHA-256 of what defines the samples: features (dtype, shape, values), labels and class
    names. Independent of the file format and of `meta`, so re-saving the same arrays as
    `.safetensors` keeps it; any changed value, row or label changes it."""
    h = hashlib.sha256(f"{fs.features.dtype.str}:{fs.features.shape}".encode())
    h.update(np.ascontiguousarray(fs.features).data)
    h.update(np.ascontiguousarray(fs.labels, dtype=np.int64).data)
    h.update("\n".join(fs.class_names or []).encode())
    return h.hexdigest()


def feature_record(fs: FeatureSet) -> dict[str, Any]:
    """What a run records of a feature set it used: samples, dim, the file's size in bytes
    (None for in-memory data or presets) and `content_hash`."""
    path = Path(fs.source)
    size = path.stat().st_size if path.suffix in SUFFIXES and path.is_file() else None
    return {"samples": fs.num_samples, "dim": fs.dim, "bytes": size, "sha256": content_hash(fs)}


def record_change(saved: dict[str, Any], fs: FeatureSet) -> str | None:
    """None when `fs` holds the arrays `saved` (a `feature_record`) describes, else what changed,
    in words."""
    now = feature_record(fs)
    if now["sha256"] == saved.get("sha256"):
        return None
    shape = f"{saved.get('samples')} x {saved.get('dim')}", f"{now['samples']} x {now['dim']}"
    if shape[0] != shape[1]:
        return f"it now holds {shape[1]} features, the run used {shape[0]}"
    size = "" if saved.get("bytes") in (None, now["bytes"]) else f", {saved['bytes']} -> {now['bytes']} bytes"
    return (f"same shape ({shape[1]}) but other values (sha256 {str(saved.get('sha256'))[:12]} -> "
            f"{now['sha256'][:12]}{size})")


def match_classes(train_names: list[str] | None, other: FeatureSet) -> FeatureSet:
    """`other` (test / val features) with labels indexed by the training classes, matched by name
    (`data.classes.align_labels`); unchanged when either file has no class names."""
    from longtail.data.classes import align_labels

    if train_names is None or other.class_names is None:
        return other
    labels = align_labels(other.labels, other.class_names, train_names, other.source)
    if other.class_names == list(train_names):
        return other
    return replace(other, labels=labels, class_names=list(train_names), prototypes=None, prototype_bias=None)


def check_compatible(train: FeatureSet, other: FeatureSet) -> None:
    """Raise DataError unless `other` (test/val) has the train set's dimension and classes."""
    if other.dim != train.dim:
        raise DataError(
            f"{other.source}: feature dimension {other.dim} differs from training ({train.dim})"
        )
    if other.class_names is not None and train.class_names is not None:
        if other.class_names != train.class_names:
            raise DataError(f"{other.source}: class names differ from the training file's")
    if int(other.labels.max()) >= train.num_classes:
        raise DataError(
            f"{other.source}: label {int(other.labels.max())} out of range for "
            f"{train.num_classes} training classes"
        )


def load_features(path: str | Path) -> FeatureSet:
    """Load and validate a `.npz` / `.safetensors` feature file (files only; a spec that may
    also name a preset is `longtail.data.open_features.open_features`)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"feature file not found: {path}")
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported feature file type (use {' or '.join(SUFFIXES)})")
    try:
        arrays, meta = _read_safetensors(path) if path.suffix == ".safetensors" else _read_npz(path)
    except DataError:
        raise
    except Exception as err:  # corrupt archive, unreadable file, ...
        raise DataError(f"{path}: cannot read feature file ({type(err).__name__}: {err})") from err
    for key in ("features", "labels"):
        if key not in arrays:
            raise DataError(f"{path}: missing array '{key}'")
    names = arrays.get("class_names")
    if names is None and "class_names" in meta:
        names = meta.pop("class_names")
    return FeatureSet(
        features=arrays["features"],
        labels=arrays["labels"],
        class_names=None if names is None else [str(n) for n in names],
        prototypes=arrays.get("prototypes"),
        prototype_bias=arrays.get("prototype_bias"),
        meta=meta,
        source=str(path),
    )


def read_meta(path: str | Path) -> dict[str, Any] | None:
    """The `meta` of a feature file read alone (no array is loaded), or None when the file is
    missing, unreadable or has none: what caches and run loaders check before loading features."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from longtail.io import open_weights_file

            with open_weights_file(path) as handle:
                text = (handle.metadata() or {}).get("meta")
        else:
            with np.load(path, allow_pickle=False) as data:
                text = str(data["meta"]) if "meta" in data.files else None
        meta = None if text is None else json.loads(text)
    except (OSError, ValueError, EOFError, KeyError, AttributeError, TypeError, zipfile.BadZipFile, DataError):
        return None
    return meta if isinstance(meta, dict) else None


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise DataError(f"{path}: not a valid .npz file ({err})") from err
    meta = json.loads(str(arrays.pop("meta"))) if "meta" in arrays else {}
    return arrays, meta


_NUMPY_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def _mapped_features(path: Path) -> np.ndarray | None:
    """The `features` array of a .safetensors file as a read-only np.memmap (the format is an
    8-byte header length, a JSON header of dtypes / shapes / byte offsets, then the raw
    little-endian bytes), or None when its dtype has no numpy twin here."""
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        entry = json.loads(handle.read(length))["features"]
    dtype = _NUMPY_DTYPES.get(entry["dtype"])
    if dtype is None:
        return None
    begin, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    if end - begin != int(np.prod(shape)) * np.dtype(dtype).itemsize:
        raise DataError(f"{path}: the features' byte range does not match their shape {shape}")
    return np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r", offset=8 + length + begin, shape=shape)


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every array of the file; `features` stays memory-mapped when the file is larger than the
    memory budget (half the free RAM), so the probe holds one in-memory copy (normalised), not two."""
    from safetensors import safe_open

    from longtail.device import memory_budget

    mapped = path.stat().st_size > memory_budget("auto", "cpu")
    with safe_open(str(path), framework="np") as handle:
        arrays = {k: handle.get_tensor(k) for k in handle.keys() if not (mapped and k == "features")}
        header = handle.metadata() or {}
    if mapped:
        features = _mapped_features(path)
        arrays["features"] = features if features is not None else safe_open(str(path), "np").get_tensor("features")
    meta = json.loads(header.get("meta", "{}"))
    if "class_names" in header:
        meta["class_names"] = json.loads(header["class_names"])
    return arrays, meta


def save_features(fs: FeatureSet, path: str | Path) -> Path:
    """Atomically write `fs` as `.npz` (default) or `.safetensors`, by the path's suffix."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {
        "features": np.ascontiguousarray(fs.features),
        "labels": np.ascontiguousarray(fs.labels.astype(np.int64)),
    }
    if fs.prototypes is not None:
        arrays["prototypes"] = np.ascontiguousarray(fs.prototypes, dtype=fs.features.dtype)
    if fs.prototype_bias is not None:
        arrays["prototype_bias"] = np.ascontiguousarray(fs.prototype_bias, dtype=fs.features.dtype)
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        header = {"meta": json.dumps(fs.meta)}
        if fs.class_names is not None:
            header["class_names"] = json.dumps(fs.class_names)
        return atomic_write(path, lambda p: save_file(arrays, str(p), metadata=header))
    if path.suffix != ".npz":
        raise DataError(f"{path}: unsupported feature file type (use {' or '.join(SUFFIXES)})")
    if fs.class_names is not None:
        arrays["class_names"] = np.asarray(fs.class_names, dtype=np.str_)
    arrays["meta"] = np.asarray(json.dumps(fs.meta))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # np.savez would append '.npz' to a str path
            np.savez(handle, **arrays)

    return atomic_write(path, write)
