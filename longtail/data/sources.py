"""Image sources: an image folder (`root/<class>/*.jpg`, optionally under `train/`, `test/`
split folders), a zip holding that layout (read in place), a list file (`relative/path label`
lines, the ImageNet-LT / Places-LT / iNaturalist-2018 format), a CSV (path,label), or Hugging
Face `datasets` (`hf:<hub id>` or a `save_to_disk` folder).

Each source is `open_<kind>(spec, split, root, **options) -> ImageDataset`, registered in
SOURCES; `detect_source` picks the kind from the spec's form (prefix, suffix, folder markers)
and `open_source` opens any of them.
"""

from __future__ import annotations

import csv
import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from longtail.data.images import (
    IMAGE_SUFFIXES,
    FileReader,
    HFReader,
    ImageDataset,
    ZipReader,
    check_options,
    check_unique_names,
    natural_key,
    read_class_names,
)
from longtail.errors import ConfigError, DataError
from longtail.registry import Registry

SOURCES: Registry = Registry("image source")
SPLIT_NAMES = frozenset({"train", "val", "valid", "validation", "test"})
SUFFIX_KINDS = {".txt": "list", ".lst": "list", ".csv": "csv", ".zip": "zip"}
HF_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")
LABEL_COLUMNS = ("label", "labels", "fine_label", "label_fine", "class", "target")


def detect_source(spec: str, presets: Sequence[str] = ()) -> str:
    """Source kind of `spec`: 'hf', 'folder', 'list', 'csv' or 'zip' (DataError otherwise)."""
    if spec.startswith("hf:"):
        return "hf"
    path = Path(spec)
    if path.is_dir():
        return "hf" if any((path / m).is_file() for m in HF_MARKERS) else "folder"
    if path.is_file():
        kind = SUFFIX_KINDS.get(path.suffix.lower())
        if kind is None:
            raise DataError(
                f"{spec}: unsupported data file type '{path.suffix}' "
                f"(use a folder, {', '.join(SUFFIX_KINDS)} or hf:<id>)"
            )
        return kind
    preset = f"a preset ({', '.join(presets)}), " if presets else ""
    raise DataError(f"data '{spec}' not found: not {preset}an existing folder or file, or hf:<hub id>")


def source_options(kind: str | None = None) -> list[str]:
    """Option names that source `kind` accepts (every kind's when None), in signature order."""
    names: list[str] = []
    for k in [kind] if kind else SOURCES.names():
        params = list(inspect.signature(SOURCES.get(k)).parameters)[3:]  # after spec, split, root
        names += [p for p in params if p not in names]
    return names


def open_source(spec: str, split: str = "train", root=None, **options: Any) -> ImageDataset:
    """The dataset at a folder, zip, list file, CSV or `hf:` spec (source options only)."""
    kind = detect_source(str(spec))
    check_options(f"{kind} source", options, source_options(kind))
    check_split(kind, str(spec), split)
    return SOURCES.get(kind)(str(spec), split, root, **options)


def check_split(kind: str, spec: str, split: str) -> None:
    """A list file or CSV given as data is one set of samples: only the (default) train split."""
    if kind in ("list", "csv") and split != "train":
        raise no_splits_error(spec, split, f"one {'list file' if kind == 'list' else 'CSV'} of labelled images")


def _names_option(class_names: str | os.PathLike | Sequence[str] | None) -> list[str] | None:
    if class_names is None:
        return None
    names = ([str(c) for c in class_names] if isinstance(class_names, (list, tuple))
             else read_class_names(class_names))
    check_unique_names(names, "class_names" if isinstance(class_names, (list, tuple)) else str(class_names))
    return names


def _assemble(
    groups: dict[str, list[str]], class_names: list[str] | None, where: str,
    empty_classes: str = "error",
) -> tuple[list[str], np.ndarray, list[str]]:
    """Items and labels from class -> files; classes sorted (or in the given order).

    A class folder without images is a DataError naming it, unless `empty_classes` is 'drop'
    (leave it out of the classes) or 'keep' (a class with no images)."""
    empty = sorted(name for name, files in groups.items() if not files)
    if empty and empty_classes == "error":
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise DataError(f"{where}: class folder '{empty[0]}' has no images{more}; add images, or pass "
                        f"empty_classes=drop to leave it out (empty_classes=keep: a class with no images)")
    if empty_classes == "drop":
        groups = {name: files for name, files in groups.items() if files}
        if class_names is not None:
            class_names = [c for c in class_names if c not in empty]
    if class_names is None:
        class_names = sorted(groups)
    else:
        unknown = sorted(set(groups) - set(class_names))
        if unknown:
            raise DataError(f"{where}: folder '{unknown[0]}' is not one of the {len(class_names)} class names")
        missing = [c for c in class_names if c not in groups]
        if missing:
            raise DataError(f"{where}: no folder for class '{missing[0]}' ({len(missing)} missing)")
    items: list[str] = []
    labels: list[np.ndarray] = []
    for label, name in enumerate(class_names):
        files = sorted(groups.get(name, []), key=natural_key)
        items.extend(files)
        labels.append(np.full(len(files), label, dtype=np.int64))
    if not items:
        raise DataError(f"{where}: no images found (expected <class>/<image> files)")
    return items, np.concatenate(labels), class_names


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


EMPTY_CLASSES = ("error", "drop", "keep")
VAL_NAMES = frozenset({"val", "valid", "validation"})


def check_empty_classes(empty_classes: str) -> str:
    """The empty-class policy, checked before any folder is listed."""
    if empty_classes not in EMPTY_CLASSES:
        raise ConfigError(f"empty_classes must be one of {', '.join(EMPTY_CLASSES)}, got '{empty_classes}'")
    return empty_classes


def no_splits_error(spec: str, split: str, what: str = "one folder of classes") -> DataError:
    """The one-line error for a split asked of a source that has none (`what` says what it is)."""
    hint = ("val_split=0.1 or val_per_class=N to draw validation from the training images"
            if split in VAL_NAMES else "a folder with train/ and test/ subfolders (one class folder each)")
    return DataError(f"{spec} has no splits (it is {what}), so there is no '{split}' split; use {hint}")


def missing_split_error(spec: str, split: str, found: set[str]) -> DataError:
    """The error for a split folder that does not exist next to others."""
    hint = "; val_split=0.1 draws validation from train" if split in VAL_NAMES else ""
    return DataError(f"{spec}: no '{split}' folder (splits found: {', '.join(sorted(found))}){hint}")


def source_splits(spec: str) -> frozenset[str] | None:
    """The split folders of a folder or zip source (empty: none, one set of classes); None for
    other sources, whose splits are known only when opened (list/CSV files have none)."""
    kind = detect_source(spec)
    if kind == "folder":
        return frozenset(d.name for d in Path(spec).iterdir() if d.is_dir()) & SPLIT_NAMES
    if kind == "zip":
        return frozenset(_zip_layout(Path(spec))[2])
    return frozenset() if kind in ("list", "csv") else None


@SOURCES.register("folder")
def open_folder(spec, split: str = "train", root=None, class_names=None,
                empty_classes: str = "error") -> ImageDataset:
    """`spec/<class>/**/<image>`, or `spec/<split>/<class>/...` when split folders exist.

    A folder without split folders is the training split: asking it for another split is a
    DataError. empty_classes: 'error' (default), 'drop' or 'keep' a class folder with no images."""
    check_empty_classes(empty_classes)
    base = Path(spec)
    if not base.is_dir():
        raise DataError(f"image folder not found: {base}")
    subdirs = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if split in subdirs:
        base = base / split
    elif SPLIT_NAMES & set(subdirs):
        raise missing_split_error(str(spec), split, SPLIT_NAMES & set(subdirs))
    elif split != "train":
        raise no_splits_error(str(spec), split)
    groups: dict[str, list[str]] = {}
    loops: list[str] = []
    for class_dir in sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")):
        files = groups.setdefault(class_dir.name, [])
        for dirpath, _, filenames in _walk_once(class_dir, loops):
            rel = Path(dirpath).relative_to(base).as_posix()
            files.extend(f"{rel}/{f}" for f in filenames if _is_image(f))
    items, labels, names = _assemble(groups, _names_option(class_names), str(base), empty_classes)
    if loops:
        import warnings

        counts = np.bincount(labels, minlength=len(names))
        per_class = ", ".join(f"{n} {int(c)}" for n, c in zip(names[:8], counts[:8])) + (", ..." if len(names) > 8 else "")
        warnings.warn(f"{base}: did not follow {len(loops)} symlinked folder(s) leading back into a folder already "
                      f"listed (first: {loops[0]}); images per class: {per_class}", stacklevel=2)
    return ImageDataset(items, labels, names, FileReader(base), name=Path(spec).name or "images")


def _walk_once(top: Path, loops: list[str]):
    """os.walk(top) following symlinked folders, each real folder once: a link back to a folder
    already listed (a loop: `a/x -> ..`, or twice the same folder) is skipped and recorded in
    `loops` as 'path -> target', and so is a link up to a folder holding `top` (issue 22 item 13:
    a loop turned 12 images into 3,772)."""
    root = os.path.realpath(top)
    seen = {root}
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        kept = []
        for name in sorted(dirnames):
            path = os.path.join(dirpath, name)
            real = os.path.realpath(path)
            if real in seen or root.startswith(real.rstrip(os.sep) + os.sep):
                loops.append(f"{Path(path).relative_to(top.parent).as_posix()} -> {real}")
                continue
            seen.add(real)
            kept.append(name)
        dirnames[:] = kept
        yield dirpath, dirnames, filenames


def _zip_layout(path: Path) -> tuple[list[str], str, set[str]]:
    """(every member but macOS metadata, wrapping-folder prefix or '', split folder names)."""
    import zipfile

    if not path.is_file():
        raise DataError(f"zip file not found: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.startswith("__MACOSX/")]
    except zipfile.BadZipFile as err:
        raise DataError(f"{path}: not a valid zip file ({err})") from err
    images = [m for m in names if not m.endswith("/") and _is_image(m)]
    prefix = ""
    firsts = {m.split("/", 1)[0] for m in images}
    if len(firsts) == 1 and not firsts & SPLIT_NAMES and all(m.count("/") >= 2 for m in images):
        prefix = next(iter(firsts)) + "/"  # one wrapping folder, e.g. CIFAR-10-images/
    splits = {m[len(prefix):].split("/", 1)[0] for m in images if m.startswith(prefix)} & SPLIT_NAMES
    return names, prefix, splits


@SOURCES.register("zip")
def open_zip(spec, split: str = "train", root=None, class_names=None,
             empty_classes: str = "error") -> ImageDataset:
    """A zip holding `[top/][<split>/]<class>/<image>`; images are read from the archive.

    Splits and empty_classes as for a folder (a class folder with no image is an error)."""
    check_empty_classes(empty_classes)
    path = Path(spec)
    names, prefix, splits = _zip_layout(path)
    if split in splits:
        prefix += split + "/"
    elif splits:
        raise missing_split_error(str(path), split, splits)
    elif split != "train":
        raise no_splits_error(str(path), split, "a zip of class folders")
    groups: dict[str, list[str]] = {}
    for m in names:
        rest = m[len(prefix):]
        if m.startswith(prefix) and "/" in rest and not rest.startswith("."):
            files = groups.setdefault(rest.split("/", 1)[0], [])
            if not m.endswith("/") and _is_image(m):
                files.append(m)
    items, labels, names = _assemble(groups, _names_option(class_names), f"{path}:{prefix}", empty_classes)
    return ImageDataset(items, labels, names, ZipReader(path), name=path.stem)


def _labels_from_tokens(
    tokens: list[str], names: list[str] | None, where: _Lines, names_from: str
) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels from int or class-name tokens; `where[i]` locates token i for errors."""
    is_int = [t.lstrip("-").isdigit() for t in tokens]
    if all(is_int):
        labels = np.array([int(t) for t in tokens], dtype=np.int64)
        if names is not None and len(names) <= labels.max():
            raise DataError(
                f"{names_from} lists {len(names)} class names but labels go up to {int(labels.max())}"
            )
        return labels, names
    if names is None:
        if any(is_int):
            raise DataError(f"{where[is_int.index(True)]}: labels mix integers and class names")
        names = sorted(set(tokens))
    index = {n: i for i, n in enumerate(names)}
    labels = np.empty(len(tokens), dtype=np.int64)
    for i, (tok, integer) in enumerate(zip(tokens, is_int)):
        label = int(tok) if integer else index.get(tok)
        if label is None:
            raise DataError(f"{where[i]}: unknown class name '{tok}'")
        labels[i] = label
    return labels, names


class _Lines:
    """`where[i]`: 'FILE:LINE' of row i, made only for an error message (not one string per row)."""

    def __init__(self, path: Path, line_numbers: Sequence[int] | np.ndarray) -> None:
        self.path, self.numbers = path, np.asarray(line_numbers, dtype=np.int64)

    def __getitem__(self, i: int) -> str:
        return f"{self.path}:{int(self.numbers[i])}"


def _names_from_parents(items: list[str], labels: np.ndarray) -> list[str]:
    """Class names from parent folders when each label has exactly one (else class_<i>)."""
    num = int(labels.max()) + 1
    seen: dict[int, set[str]] = {}
    for pair in set(zip(labels.tolist(), (i.rpartition("/")[0].rpartition("/")[2] for i in items))):
        seen.setdefault(pair[0], set()).add(pair[1])
    parents = [seen.get(c, set()) for c in range(num)]
    names = [next(iter(p)) if len(p) == 1 else "" for p in parents]
    if all(names) and len(set(names)) == num:
        return names
    return [f"class_{c}" for c in range(num)]


def _image_root(spec: Path, root) -> Path:
    base = Path(root) if root is not None else spec.parent
    if not base.is_dir():
        raise DataError(f"image root not found: {base}")
    return base


def _from_rows(spec: Path, root, items, tokens, where, class_names) -> ImageDataset:
    if not items:
        raise DataError(f"{spec}: no samples listed")
    for i, (item, token) in enumerate(zip(items, tokens)):  # issue 22 item 16: never a class ""
        if not token:
            raise DataError(f"{where[i]}: the row for '{item}' has an empty label")
        if not item:
            raise DataError(f"{where[i]}: a row with label '{token}' has an empty path")
    names_from = str(class_names) if class_names is not None else ""
    labels, names = _labels_from_tokens(tokens, _names_option(class_names), where, names_from)
    if labels.min() < 0:
        raise DataError(f"{where[int(labels.argmin())]}: negative label {int(labels.min())}")
    if names is None:
        names = _names_from_parents(items, labels)
    return ImageDataset(items, labels, names, FileReader(_image_root(spec, root)), name=spec.stem)


@SOURCES.register("list")
def open_list(spec, split: str = "train", root=None, class_names=None) -> ImageDataset:
    """`relative/path label` lines (ImageNet-LT / Places-LT / iNat-2018 lists); paths under root."""
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"list file not found: {path}")
    items, tokens, numbers = [], [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected 'relative/path label', got '{line[:80]}'")
        items.append(parts[0])
        tokens.append(parts[1])
        numbers.append(lineno)
    return _from_rows(path, root, items, tokens, _Lines(path, numbers), class_names)


@SOURCES.register("csv")
def open_csv(
    spec, split: str = "train", root=None, class_names=None,
    path_column: str = "path", label_column: str = "label",
) -> ImageDataset:
    """A CSV with a header and columns path,label (label: class name or integer)."""
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        for col in (path_column, label_column):
            if col not in columns:
                raise DataError(f"{path}: no column '{col}' (columns: {', '.join(columns)})")
        rows = [(r[path_column].strip(), (r[label_column] or "").strip()) for r in reader]
    where = _Lines(path, np.arange(2, len(rows) + 2))
    return _from_rows(path, root, [r[0] for r in rows], [r[1] for r in rows], where, class_names)


@SOURCES.register("hf")
def open_hf(
    spec, split: str = "train", root=None, class_names=None, image_column: str | None = None,
    label_column: str | None = None, config: str | None = None, revision: str | None = None,
) -> ImageDataset:
    """`hf:<hub id>` via datasets.load_dataset (cache_dir=root) or a `save_to_disk` folder."""
    import datasets

    target = spec[3:] if spec.startswith("hf:") else spec
    try:
        if Path(target).is_dir():
            ds: Any = datasets.load_from_disk(target)
        else:
            ds = datasets.load_dataset(
                target, name=config, split=split, revision=revision, cache_dir=root
            )
    except (FileNotFoundError, ValueError, OSError, ConnectionError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot load Hugging Face dataset '{target}': {first}") from err
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{target}: no split '{split}' (splits: {', '.join(ds)})")
        ds = ds[split]
    elif Path(target).is_dir() and split != "train":  # one saved Dataset: the training split
        raise no_splits_error(target, split, "one saved dataset without splits")
    features = ds.features
    columns = list(features)
    image_column = image_column or next(
        (k for k, f in features.items() if isinstance(f, datasets.Image)), None
    )
    if image_column not in features:
        raise DataError(f"{target}: no image column found (columns: {', '.join(columns)}); set image_column")
    class_labels = [k for k, f in features.items() if isinstance(f, datasets.ClassLabel)]
    preferred = [k for k in LABEL_COLUMNS if k in features]
    label_column = label_column or next(
        (k for k in preferred if k in class_labels), (class_labels or preferred or [None])[0]
    )
    if label_column not in features:
        raise DataError(f"{target}: no label column found (columns: {', '.join(columns)}); set label_column")
    # via Arrow: one column copy (iterating a datasets Column is ~1000x slower on 100k rows)
    labels = np.asarray(ds.with_format("arrow")[label_column].to_numpy()).astype(np.int64)
    feature = features[label_column]
    names = _names_option(class_names)
    if names is None and isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
    if names is None:
        names = [f"class_{c}" for c in range(int(labels.max()) + 1 if labels.size else 0)]
    name = Path(target.rstrip("/")).name
    reader = HFReader(ds, image_column, name=target)
    return ImageDataset(np.arange(len(ds)), labels, names, reader, name=name)
