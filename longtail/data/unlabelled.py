"""Unlabelled images to predict on: a folder (any layout, recursive), a zip, a list / CSV of
paths, or one image file, as an `ImageDataset` whose labels are all 0 (one class, "?").

Unreadable files are not errors here: `readable(dataset)` says, per image, why it cannot be
decoded (or None), so a prediction run labels the rest and reports each bad file in its row.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np

from longtail.data.images import IMAGE_SUFFIXES, FileReader, ImageDataset, ZipReader, natural_key
from longtail.errors import DataError

UNLABELLED = "?"
PATH_COLUMNS = ("path", "file", "filename", "image")


def open_unlabelled(spec: str | os.PathLike, root: str | os.PathLike | None = None,
                    all_files: bool = False) -> ImageDataset:
    """Every image under `spec`, in natural path order. `all_files`: also files whose suffix is
    not an image's (so a stray text file gets a status row instead of being skipped)."""
    path = Path(spec)
    keep = (lambda name: True) if all_files else _is_image
    if path.is_dir():
        items = [Path(d, f).relative_to(path).as_posix() for d, dirs, files in os.walk(path)
                 for f in files if keep(f) and not f.startswith(".") and not _hidden(Path(d).relative_to(path))]
        return _dataset(items, FileReader(path), path.name or "images", spec)
    if not path.is_file():
        raise DataError(f"images not found: {spec} (give a folder, a zip, a .txt / .csv list of paths, or an image)")
    suffix = path.suffix.lower()
    if suffix == ".zip":
        import zipfile

        try:
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.namelist() if not m.endswith("/") and not m.startswith("__MACOSX/")]
        except zipfile.BadZipFile as err:
            raise DataError(f"{path}: not a valid zip file ({err})") from err
        return _dataset([m for m in members if keep(Path(m).name)], ZipReader(path), path.stem, spec)
    if suffix in (".txt", ".lst", ".csv"):
        base = Path(root) if root is not None else path.parent
        return _dataset(_listed(path, suffix == ".csv"), FileReader(base), path.stem, spec)
    if suffix in IMAGE_SUFFIXES:
        return _dataset([path.name], FileReader(path.parent), path.stem, spec)
    raise DataError(f"{spec}: unsupported file type '{path.suffix}' (a folder, .zip, .txt / .csv list or an image)")


def readable(dataset: ImageDataset) -> list[str | None]:
    """Per image, None when it decodes, else the one-line reason. JPEGs are decoded at 1/8 scale
    (PIL `draft`: the whole stream is read, so truncation shows, at a fraction of the cost)."""
    reasons: list[str | None] = []
    for item in dataset.items:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image = dataset.reader.open(item)
                image.draft("RGB", (1, 1))
                image.load()
            reasons.append(None)
        except Exception as err:  # any decoder failure is this image's status, never the run's end
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            reasons.append(f"unreadable: {first}")
    return reasons


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _listed(path: Path, is_csv: bool) -> list[str]:
    """Paths of a .txt list (one per line; a trailing label is ignored) or a CSV's path column."""
    if not is_csv:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        return [_without_label(line) for line in lines if line and not line.startswith("#")]
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        column = next((c for c in PATH_COLUMNS if c in (reader.fieldnames or [])), None)
        if column is None:
            raise DataError(f"{path}: no path column (one of {', '.join(PATH_COLUMNS)}; "
                            f"columns: {', '.join(reader.fieldnames or [])})")
        return [row[column].strip() for row in reader if row[column].strip()]


def _without_label(line: str) -> str:
    parts = line.rsplit(None, 1)
    return parts[0] if len(parts) == 2 and not _is_image(parts[1]) else line


def _dataset(items: list[str], reader, name: str, spec) -> ImageDataset:
    if not items:
        raise DataError(f"{spec}: no images found")
    items = sorted(items, key=natural_key)
    return ImageDataset(items, np.zeros(len(items), dtype=np.int64), [UNLABELLED], reader, name=name)

