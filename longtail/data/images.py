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
import zlib
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
# Folders of image files up to this many bytes in total are keyed on their bytes (hashed);
# larger ones on each file's size and mtime_ns only (reading them all on every cache lookup
# would cost about as much as decoding them). See `FileReader.content_digest`.
CONTENT_HASH_LIMIT = 256 * 2**20


class CorruptImageError(DataError):
    """An image file that is missing or cannot be decoded."""


# what every command whose config has data_options (stats, features, fit, lt-soups) accepts
SKIP_HINT = "fix or remove it, or add data_options.on_corrupt=skip to leave unreadable images out"


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

    def content_digest(self, items: Sequence[str]) -> str:
        """A digest of what the files hold now: each file's size, plus the SHA-256 of every
        file's bytes when they total at most `CONTENT_HASH_LIMIT`, else each file's mtime_ns.

        Detected: any change to a file's bytes in a folder under the limit (even at the same
        size with the old mtime restored), and, above it, any change of size or mtime (every
        ordinary write, copy or re-extraction without preserved times). Not detected above the
        limit: a same-size rewrite whose old mtime was restored (`touch -r`, `cp -p`, `rsync -t`).
        A missing file counts as missing (reading it later is the error).
        """
        root = os.fspath(self.root)
        sizes, mtimes = np.full(len(items), -1, np.int64), np.zeros(len(items), np.int64)  # -1: missing
        for i, item in enumerate(items):  # plain strings and two int arrays: no object per image kept
            try:
                st = os.stat(os.path.join(root, item))
            except OSError:
                continue
            sizes[i], mtimes[i] = st.st_size, st.st_mtime_ns
        by_bytes = int(sizes[sizes >= 0].sum()) <= CONTENT_HASH_LIMIT
        h = hashlib.sha256(b"bytes" if by_bytes else b"stat")
        for item, size, mtime in zip(items, sizes.tolist(), mtimes.tolist()):
            if size < 0:
                h.update(b"missing\0")
            elif by_bytes:
                h.update(f"{size}:".encode())
                h.update(_file_bytes(self.root / item))
            else:
                h.update(f"{size}:{mtime}\0".encode())
        return h.hexdigest()


class ZipReader:
    """Images inside a zip archive, read in place (one handle per process, so it survives fork)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._handle: Any = None
        self._pid = -1

    def open(self, item: str) -> Image.Image:
        import zipfile

        if self._handle is None or self._pid != os.getpid():
            try:
                self._handle, self._pid = zipfile.ZipFile(self.path), os.getpid()
            except zipfile.BadZipFile as err:
                raise OSError(f"damaged zip archive ({err})") from err
        try:
            data = self._handle.read(item)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, KeyError) as err:
            # a damaged member: bad CRC, a broken deflate stream, a truncated entry, an unknown
            # compression, a name the archive lost; `ImageDataset.load` names it (issue 22 item 6)
            raise OSError(f"damaged zip member ({type(err).__name__}: {err})") from err
        return Image.open(io.BytesIO(data))

    def describe(self, item: str) -> str:
        return f"{self.path}:{item}"

    def identity(self) -> str:
        return f"zip:{self.path.name}"

    def content_digest(self, items: Sequence[str]) -> str:
        """A digest of each member's CRC-32 and size from the archive's central directory (read
        without decompressing anything): any edit of a member's bytes changes it, whatever the
        archive's size or mtime (barring a CRC-32 collision, about 1 in 4 billion per edit)."""
        import zipfile

        h = hashlib.sha256(b"zip")
        try:
            with zipfile.ZipFile(self.path) as archive:
                for item in items:
                    try:
                        info = archive.getinfo(item)
                        h.update(f"{info.CRC}:{info.file_size}\0".encode())
                    except KeyError:
                        h.update(b"missing\0")
        except (OSError, zipfile.BadZipFile) as err:
            raise DataError(f"cannot read zip archive {self.path}: {err}") from err
        return h.hexdigest()

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
        return f"hf:{self.name}"

    def content_digest(self, items: Sequence[int]) -> str:
        """The `datasets` library's own fingerprint of the table (it changes with the data files
        and every transform applied); rows are named by number in the items."""
        return str(getattr(self.dataset, "_fingerprint", ""))


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
        # layout keys of the datasets this one replaces (the same source before on_corrupt=skip
        # left unreadable images out): their unfinished cache builds are abandoned for good
        self.superseded: tuple[str, ...] = ()
        if self.items.shape[0] != self.labels.shape[0]:
            raise DataError(f"{name}: {len(self.items)} images but {len(self.labels)} labels")
        if self.labels.size == 0:
            raise DataError(f"{name}: the dataset has no images")
        if self.group_counts is not None and self.group_counts.shape != (len(self.class_names),):
            raise DataError(f"{name}: group_counts has shape {self.group_counts.shape}, expected ({len(self.class_names)},)")
        check_unique_names(self.class_names, name)
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
            raise CorruptImageError(f"cannot read image {self.describe(i)}: {err} ({SKIP_HINT})") from err
        return rgb

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def layout_key(self) -> str:
        """Hash of where the images are and which they are: source, items, labels, class names.

        Two datasets with the same layout key are the same dataset at different times; the
        feature cache keeps one entry per layout key and replaces it when the content changes.
        """
        h = hashlib.sha256(self.reader.identity().encode())
        h.update("\n".join(self.class_names).encode())
        h.update("\n".join(map(str, self.items.tolist())).encode())
        h.update(self.labels.tobytes())
        return h.hexdigest()[:20]

    def fingerprint(self) -> str:
        """Hash of the layout key and of what the images hold now (the reader's
        `content_digest`: file bytes or size + mtime, zip CRCs, or the HF table fingerprint),
        so replacing images under the same names changes it. Computed once per object: open
        the dataset again to see later edits."""
        if self._fingerprint is None:
            h = hashlib.sha256(self.layout_key().encode())
            digest = getattr(self.reader, "content_digest", None)
            if digest is not None:
                h.update(digest(self.items.tolist()).encode())
            self._fingerprint = h.hexdigest()[:20]
        return self._fingerprint

    def subset(self, indices, name: str | None = None) -> ImageDataset:
        """The samples at `indices` (in that order), same classes, reader and group_counts."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageDataset(
            self.items[idx], self.labels[idx], self.class_names, self.reader,
            name=name or self.name, group_counts=self.group_counts,
        )

    def with_classes(self, train_names: Sequence[str], where: str | None = None) -> ImageDataset:
        """This split with labels indexed by the training classes, matched by name
        (`longtail.data.classes.align_labels`: unknown class -> DataError, absent ones warned)."""
        from longtail.data.classes import align_labels

        labels = align_labels(self.labels, self.class_names, train_names, where or self.name)
        if list(train_names) == self.class_names:
            return self
        return ImageDataset(self.items, labels, train_names, self.reader, name=self.name)

    def drop_corrupt(self, progress: bool = True) -> ImageDataset:
        """Decode every image once; return the subset that decodes, warning once with a count."""
        from longtail.progress import progress_bar

        ok = np.ones(len(self), dtype=bool)
        first = ""
        for i in progress_bar(range(len(self)), desc=f"checking {self.name}", unit="image", enabled=progress):
            try:
                self.load(i)
            except CorruptImageError as err:
                ok[i] = False
                first = first or str(err).replace(f" ({SKIP_HINT})", "")
        if ok.all():
            return self
        warnings.warn(
            f"{self.name}: skipped {int((~ok).sum())} corrupt image(s) of {len(self)} ({first})",
            stacklevel=2,
        )
        kept = self.subset(np.flatnonzero(ok))
        kept.superseded = (*self.superseded, self.layout_key())
        return kept

    def __repr__(self) -> str:
        return f"ImageDataset({self.name!r}, {len(self)} images, {self.num_classes} classes)"


# ---------------------------------------------------------------- helpers shared by sources
def _file_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b"unreadable"


def check_unique_names(names: Sequence[str], where: str) -> None:
    """One-line DataError for a class name given twice or empty (issue 22 item 16: labels that
    reports, per-class tables and the matching of splits by name could not tell apart)."""
    seen: set[str] = set()
    for position, name in enumerate(names):
        if not str(name).strip():
            raise DataError(f"{where}: class name at position {position} is empty")
        if name in seen:
            raise DataError(f"{where}: class name '{name}' appears twice (again at position {position}); "
                            "class names must be unique")
        seen.add(name)


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
