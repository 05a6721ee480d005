"""Image datasets: samples + labels + class names, images decoded lazily from files, zips or HF rows.

This module holds the dataset class, the readers (item -> PIL image) and helpers shared by
the sources (`longtail.data.sources`) and presets (`longtail.data.presets`); opening a dataset
from a spec is `longtail.data.open_images.open_images`.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from longtail.errors import ConfigError, DataError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
ON_CORRUPT = ("error", "skip")


class CorruptImageError(DataError):
    """An image file that is missing or cannot be decoded."""


# ---------------------------------------------------------------- readers: item -> PIL image
class FileReader:
    """Images stored as files under `root` (items are paths relative to it)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def open(self, item: str) -> Image.Image:
        return Image.open(self.root / item)

    def describe(self, item: str) -> str:
        return str(self.root / item)

    def identity(self) -> str:
        return f"files:{self.root.resolve()}"


class ZipReader:
    """Images inside a zip archive, read in place (one handle per process, so it survives fork)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._handle: Any = None
        self._pid = -1

    def open(self, item: str) -> Image.Image:
        import zipfile

        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = zipfile.ZipFile(self.path), os.getpid()
        return Image.open(io.BytesIO(self._handle.read(item)))

    def describe(self, item: str) -> str:
        return f"{self.path}:{item}"

    def identity(self) -> str:
        stat = self.path.stat()
        return f"zip:{self.path.name}:{stat.st_size}"

    def __getstate__(self) -> dict:  # DataLoader workers reopen the archive themselves
        return {"path": self.path, "_handle": None, "_pid": -1}


class HFReader:
    """Rows of a Hugging Face `datasets.Dataset` (items are row numbers)."""

    def __init__(self, dataset: Any, column: str, name: str) -> None:
        self.dataset = dataset.select_columns([column])
        self.column = column
        self.name = name

    def open(self, item: int) -> Image.Image:
        value = self.dataset[int(item)][self.column]
        if isinstance(value, Image.Image):
            return value
        if isinstance(value, dict) and value.get("bytes") is not None:
            return Image.open(io.BytesIO(value["bytes"]))
        if isinstance(value, dict) and value.get("path"):
            return Image.open(value["path"])
        raise CorruptImageError(f"{self.name}: column '{self.column}' holds no image at row {item}")

    def describe(self, item: int) -> str:
        return f"{self.name}[{int(item)}]"

    def identity(self) -> str:
        return f"hf:{self.name}:{getattr(self.dataset, '_fingerprint', '')}"


# ---------------------------------------------------------------- the dataset
class ImageDataset:
    """Samples with int labels and class names; `load(i)` decodes image i as RGB on demand.

    `group_counts` (optional, per class) overrides the counts that define many/medium/few
    groups (LIFT's rule for CIFAR-100-LT IR 50/10); `name` is a short label for files/reports.
    """

    def __init__(
        self,
        items: Sequence,
        labels: Sequence[int] | np.ndarray,
        class_names: Sequence[str],
        reader: Any,
        *,
        name: str = "images",
        group_counts: np.ndarray | None = None,
    ) -> None:
        self.items = np.asarray(items, dtype=object)  # str paths / members, or int HF rows
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.class_names = [str(c) for c in class_names]
        self.reader = reader
        self.name = name
        self.group_counts = None if group_counts is None else np.asarray(group_counts, np.int64)
        self._fingerprint: str | None = None
        if self.items.shape[0] != self.labels.shape[0]:
            raise DataError(f"{name}: {len(self.items)} images but {len(self.labels)} labels")
        if self.labels.size == 0:
            raise DataError(f"{name}: the dataset has no images")
        if self.group_counts is not None and self.group_counts.shape != (len(self.class_names),):
            raise DataError(f"{name}: group_counts has shape {self.group_counts.shape}, expected ({len(self.class_names)},)")
        bad = (self.labels < 0) | (self.labels >= len(self.class_names))
        if bad.any():
            raise DataError(
                f"{name}: label {int(self.labels[bad][0])} out of range for "
                f"{len(self.class_names)} classes ({self.describe(int(np.flatnonzero(bad)[0]))})"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return self.load(i), int(self.labels[i])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self, i: int) -> str:
        """Where sample i lives (file path, zip member or HF row), for messages."""
        return self.reader.describe(self.items[i])

    def load(self, i: int) -> Image.Image:
        """Image i as RGB; a missing or undecodable image raises CorruptImageError naming it."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = self.reader.open(self.items[i])
                rgb = image.convert("RGB")  # convert() forces the full decode
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise CorruptImageError(f"cannot read image {self.describe(i)}: {err}") from err
        return rgb

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def fingerprint(self) -> str:
        """Stable hash of source, items, labels and class names (a key for feature caches)."""
        if self._fingerprint is None:
            h = hashlib.sha256(self.reader.identity().encode())
            h.update("\n".join(self.class_names).encode())
            h.update("\n".join(map(str, self.items.tolist())).encode())
            h.update(self.labels.tobytes())
            self._fingerprint = h.hexdigest()[:20]
        return self._fingerprint

    def subset(self, indices, name: str | None = None) -> ImageDataset:
        """The samples at `indices` (in that order), same classes, reader and group_counts."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageDataset(
            self.items[idx], self.labels[idx], self.class_names, self.reader,
            name=name or self.name, group_counts=self.group_counts,
        )

    def drop_corrupt(self, progress: bool = True) -> ImageDataset:
        """Decode every image once; return the subset that decodes, warning once with a count."""
        from tqdm.auto import tqdm

        ok = np.ones(len(self), dtype=bool)
        first = ""
        for i in tqdm(range(len(self)), desc=f"checking {self.name}", disable=None if progress else True):
            try:
                self.load(i)
            except CorruptImageError as err:
                ok[i] = False
                first = first or str(err)
        if ok.all():
            return self
        warnings.warn(
            f"{self.name}: skipped {int((~ok).sum())} corrupt image(s) of {len(self)} ({first})",
            stacklevel=2,
        )
        return self.subset(np.flatnonzero(ok))

    def __repr__(self) -> str:
        return f"ImageDataset({self.name!r}, {len(self)} images, {self.num_classes} classes)"


# ---------------------------------------------------------------- helpers shared by sources
def read_class_names(path: str | os.PathLike) -> list[str]:
    """One class name per line (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class-names file not found: {path}")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [n for n in names if n]


def natural_key(text: str) -> tuple:
    """Sort key treating digit runs as numbers ('img2' < 'img10')."""
    import re

    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def check_options(what: str, options: Mapping[str, Any], valid: Iterable[str]) -> None:
    """One-line ConfigError naming the first unknown option and listing every valid one."""
    names = sorted(set(valid))
    unknown = [key for key in options if key not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"{what}: unknown option '{unknown[0]}'{hint}; valid options: {', '.join(names) or 'none'}"
        )


def check_on_corrupt(on_corrupt: str) -> str:
    """The on_corrupt policy, checked before any image is read."""
    if on_corrupt not in ON_CORRUPT:
        raise ConfigError(f"on_corrupt must be one of {', '.join(ON_CORRUPT)}, got '{on_corrupt}'")
    return on_corrupt


def finish(
    dataset: ImageDataset, on_corrupt: str = "error", progress: bool = True
) -> ImageDataset:
    """Apply the on_corrupt policy: 'error' (raise on load) or 'skip' (drop bad images now)."""
    check_on_corrupt(on_corrupt)
    return dataset.drop_corrupt(progress) if on_corrupt == "skip" else dataset
