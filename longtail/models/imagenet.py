"""ImageNet-1k classes and class -> ImageNet-class maps, for prototypes from a pretrained
ImageNet classifier (each class's weight row and bias = the mean over its ImageNet classes).

`imagenet_classes.txt` lists the 1000 classes in the standard index order as
"wnid<TAB>lemmas"; it was taken from timm's `data/_info/imagenet_synsets.txt` and
`imagenet_synset_to_lemma.txt` (Apache-2.0). A map is a JSON object
{"class": ["n02690373", 404, ...]} (optionally under a "classes" key next to notes) or a text
file of "class: n02690373, 404" lines ('#' starts a comment); entries are WordNet ids or indices.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from longtail.errors import ConfigError

CLASSES_FILE = Path(__file__).with_name("imagenet_classes.txt")
MAPPINGS_DIR = Path(__file__).resolve().parent.parent / "data" / "mappings"
WNID = re.compile(r"n\d{8}")

ClassMap = Mapping[str, Sequence["str | int"]]


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """The 1000 (wnid, lemmas) pairs in ImageNet-1k index order."""
    rows = tuple(
        tuple(line.split("\t", 1))
        for line in CLASSES_FILE.read_text(encoding="utf-8").splitlines()
        if line.strip()
    )
    if len(rows) != 1000:
        raise RuntimeError(f"{CLASSES_FILE} must list 1000 classes, found {len(rows)}")
    return rows  # type: ignore[return-value]


def imagenet_wnids() -> list[str]:
    return [wnid for wnid, _ in imagenet_classes()]


def imagenet_names() -> list[str]:
    """Short name of each class (its first lemma, e.g. 'airliner')."""
    return [lemmas.split(",")[0] for _, lemmas in imagenet_classes()]


@lru_cache(maxsize=1)
def _wnid_index() -> dict[str, int]:
    return {wnid: i for i, wnid in enumerate(imagenet_wnids())}


def bundled_map(name: str) -> Path:
    """Path of a map shipped with longtail, e.g. bundled_map('cifar10_imagenet')."""
    path = MAPPINGS_DIR / f"{name}.json"
    if not path.is_file():
        found = ", ".join(sorted(p.stem for p in MAPPINGS_DIR.glob("*.json"))) or "none"
        raise ConfigError(f"no bundled ImageNet map '{name}'; bundled maps: {found}")
    return path


def read_class_map(path: str | Path) -> dict[str, list[str]]:
    """Read a JSON or text class map into {class name: [entry, ...]} (entries unparsed)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read ImageNet map '{path}': {err.strerror or err}") from err
    if path.suffix.lower() == ".json":
        return _map_from_json(text, str(path))
    return _map_from_text(text, str(path))


def _map_from_json(text: str, src: str) -> dict[str, list[str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{src}: invalid JSON ({err.msg} at line {err.lineno})") from err
    if isinstance(data, dict) and isinstance(data.get("classes"), dict):
        data = data["classes"]
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: an ImageNet map must be a JSON object of class -> ImageNet classes")
    out = {}
    for name, value in data.items():
        entries = value if isinstance(value, list) else [value]
        if not all(isinstance(e, str | int) and not isinstance(e, bool) for e in entries):
            raise ConfigError(f"{src}: class '{name}' must map to WordNet ids or indices, got {value!r}")
        out[str(name)] = [str(e) for e in entries]
    return out


def _map_from_text(text: str, src: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, rest = line.rpartition(":")
        if not sep or not name.strip():
            raise ConfigError(f"{src}:{lineno}: expected 'class name: wnid_or_index, ...', got {raw.strip()!r}")
        if name.strip() in out:
            raise ConfigError(f"{src}:{lineno}: class '{name.strip()}' is listed twice")
        out[name.strip()] = re.split(r"[,\s]+", rest.strip()) if rest.strip() else []
    return out


def parse_entry(entry: str | int, num_outputs: int = 1000) -> int:
    """A WordNet id ('n02690373') or an index ('404' / 404) -> a classifier row index."""
    text = str(entry).strip()
    if WNID.fullmatch(text):
        if num_outputs != 1000:
            raise ValueError(f"WordNet id '{text}' needs a 1000-class ImageNet head, this has {num_outputs}")
        index = _wnid_index().get(text)
        if index is None:
            raise ValueError(f"unknown WordNet id '{text}' (not one of the 1000 ImageNet-1k classes)")
        return index
    if re.fullmatch(r"\d+", text):
        index = int(text)
        if index >= num_outputs:
            raise ValueError(f"ImageNet index {index} is out of range 0-{num_outputs - 1}")
        return index
    raise ValueError(f"'{text}' is neither a WordNet id (n########) nor an index 0-{num_outputs - 1}")


def resolve_class_map(
    class_names: Sequence[str], class_map: ClassMap, num_outputs: int = 1000, src: str = "ImageNet map"
) -> list[list[int]]:
    """The ImageNet row indices of every class, in `class_names` order (extra map keys ignored)."""
    groups = []
    for name in class_names:
        if name not in class_map:
            known = ", ".join(list(class_map)[:8]) + (", ..." if len(class_map) > 8 else "")
            raise ConfigError(f"{src}: class '{name}' is missing (the map has: {known or 'nothing'})")
        entries = class_map[name]
        if isinstance(entries, str | int):
            entries = [entries]
        if not entries:
            raise ConfigError(f"{src}: class '{name}' maps to no ImageNet classes")
        try:
            groups.append([parse_entry(e, num_outputs) for e in entries])
        except ValueError as err:
            raise ConfigError(f"{src}: class '{name}': {err}") from None
    return groups


def averaging_matrix(groups: Sequence[Sequence[int]], num_outputs: int) -> torch.Tensor:
    """(C, num_outputs) rows averaging each class's ImageNet classes (duplicates counted once)."""
    rows = [sorted(set(g)) for g in groups]
    matrix = torch.zeros(len(rows), num_outputs, dtype=torch.float64)
    cls = torch.tensor([c for c, g in enumerate(rows) for _ in g], dtype=torch.long)
    col = torch.tensor([j for g in rows for j in g], dtype=torch.long)
    matrix[cls, col] = 1.0
    return matrix / matrix.sum(dim=1, keepdim=True)


class MissingImageNetMap(ConfigError):
    """ImageNet classifier rows were asked for classes no map covers. The message names no
    flag: each command adds its own spelling of the map option (`features --imagenet-map FILE`,
    `fit ... prototype_options.imagenet_map=FILE`; issue 22 item 5)."""


def classifier_prototypes(
    weight: torch.Tensor, bias: torch.Tensor | None, class_names: Sequence[str], imagenet_map: Any
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(C, d) weights and (C,) biases: the mean of the mapped ImageNet classifier rows.

    `imagenet_map` is a path (JSON or text), a dict, or "bundled:<name>" for a shipped map.
    Averaging the rows averages the logits of those classes (the head is linear).
    """
    if isinstance(imagenet_map, Mapping):
        class_map, src = imagenet_map, "ImageNet map"
    else:
        text = str(imagenet_map)
        path = bundled_map(text.removeprefix("bundled:")) if text.startswith("bundled:") else Path(text)
        class_map, src = read_class_map(path), str(path)
    groups = resolve_class_map(class_names, class_map, num_outputs=weight.shape[0], src=src)
    avg = averaging_matrix(groups, weight.shape[0])
    with torch.no_grad():
        protos = (avg @ weight.detach().double().cpu()).float()
        bias_out = None if bias is None else (avg @ bias.detach().double().cpu()).float()
    return protos, bias_out
