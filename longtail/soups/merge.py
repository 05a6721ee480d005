"""Weight-space merges of same-architecture checkpoints, streamed one ingredient at a time.

Every linear merge (uniform, weighted, recursive LT-Soups interpolation, WiSE-FT) is a set
of coefficients over the ingredients (and an optional base theta_0); `linear_merge` applies
them with one float32 running sum, reading each safetensors file tensor by tensor, so peak
memory stays about two models whatever the number of ingredients (docs/methods.md §2.6).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from longtail.config import coerce_field
from longtail.errors import ConfigError, DataError
from longtail.io import atomic_write, open_weights_file
from longtail.methods.finetune import checkpoint as ckpt
from longtail.registry import Registry

StateDict = dict[str, torch.Tensor]
# An ingredient: a .safetensors file, a folder holding one, or an in-memory state dict.
Source = str | Path | Mapping[str, torch.Tensor]

# Names tried, in order, when a source is a run folder (the fit layout's weights, new and old
# name, also those of soups of bare files); any single *.safetensors file is accepted otherwise.
WEIGHT_FILE_NAMES = (ckpt.WEIGHTS, ckpt.LEGACY_WEIGHTS, "weights.safetensors")


@dataclass(frozen=True)
class Coefficients:
    """Merge weights: one per ingredient, plus the weight of the base theta_0 (0 if unused)."""

    ingredients: tuple[float, ...]
    base: float = 0.0

    @property
    def total(self) -> float:
        return float(sum(self.ingredients) + self.base)


# name -> fn(n_ingredients, has_base, **params) -> Coefficients
MERGE_METHODS: Registry[Callable[..., Coefficients]] = Registry("merge method")


@MERGE_METHODS.register("uniform")
def uniform_weights(n: int, has_base: bool = False) -> Coefficients:
    """Plain average of the ingredients (the base, if any, is not an ingredient)."""
    _require_ingredients(n)
    return Coefficients(tuple([1.0 / n] * n))


@MERGE_METHODS.register("weighted")
def weighted_weights(n: int, has_base: bool = False, weights: tuple[float, ...] = ()) -> Coefficients:
    """User weights, normalised to sum to 1 (must be non-negative with a positive sum)."""
    _require_ingredients(n)
    w = np.asarray(list(weights), dtype=np.float64)
    if w.size != n:
        raise ConfigError(f"weighted merge needs {n} weights (one per ingredient), got {w.size}")
    if (w < 0).any() or w.sum() <= 0:
        raise ConfigError(f"merge weights must be >= 0 with a positive sum, got {w.tolist()}")
    return Coefficients(tuple((w / w.sum()).tolist()))


@MERGE_METHODS.register("recursive")
def recursive_weights(n: int, has_base: bool = True, lam: float = 0.7) -> Coefficients:
    """LT-Soups: soup <- (1 - lam) soup + lam theta_j in the given order, from theta_0.

    Closed form (docs/methods.md §2.4 step 3): theta_j gets lam (1-lam)^(n-1-j), theta_0 gets
    (1-lam)^n. Without a base the first ingredient plays theta_0's role.
    """
    _require_ingredients(n)
    if not 0.0 < lam <= 1.0:
        raise ConfigError(f"recursive merge needs 0 < lambda <= 1, got {lam}")
    if not has_base:  # start the recursion from ingredient 0 instead of theta_0
        rest = recursive_weights(n - 1, True, lam) if n > 1 else Coefficients((), 1.0)
        return Coefficients((rest.base, *rest.ingredients))
    w = [lam * (1.0 - lam) ** (n - 1 - j) for j in range(n)]
    return Coefficients(tuple(w), (1.0 - lam) ** n)


@MERGE_METHODS.register("wise")
def wise_weights(n: int, has_base: bool = True, alpha: float = 0.5) -> Coefficients:
    """WiSE-FT: (1 - alpha) theta_0 + alpha theta_ft (several fine-tuned models: their mean)."""
    _require_ingredients(n)
    if not has_base:
        raise ConfigError("WiSE-FT needs a base (zero-shot / pretrained) checkpoint")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"WiSE-FT needs 0 <= alpha <= 1, got {alpha}")
    return Coefficients(tuple([alpha / n] * n), 1.0 - alpha)


def _require_ingredients(n: int) -> None:
    if n < 1:
        raise ConfigError("a soup needs at least one ingredient")


def merge_coefficients(method: str, n: int, has_base: bool, **params) -> Coefficients:
    """Coefficients of a registered merge method (unknown names list the valid ones)."""
    fn = MERGE_METHODS.get(method)
    hints = typing.get_type_hints(fn)
    valid = list(inspect.signature(fn).parameters)[2:]  # after (n, has_base)
    unknown = sorted(str(k) for k in params if k not in valid)
    if unknown:
        raise ConfigError(f"merge method '{method}' has no parameter '{unknown[0]}' "
                          f"(parameters: {', '.join(valid) or 'none'})")
    return fn(n, has_base, **{k: coerce_field(k, v, hints[k]) for k, v in params.items()})


# ----------------------------------------------------------------------------- sources


def weights_file(path: str | Path) -> Path:
    """The safetensors file of `path`: the file itself, or the checkpoint inside a folder."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise DataError(f"{path}: expected a .safetensors file (pickled weights are not loaded)")
        return path
    if path.is_dir():
        for name in WEIGHT_FILE_NAMES:
            if (path / name).is_file():
                return path / name
        found = sorted(path.glob("*.safetensors")) or sorted(path.glob("*/*.safetensors"))
        if len(found) == 1:
            return found[0]
        what = "no" if not found else f"{len(found)}"
        raise DataError(f"{path}: {what} .safetensors files found; pass the weights file itself")
    raise DataError(f"{path}: no such checkpoint file or folder")


@contextmanager
def open_source(source: Source) -> Iterator[tuple[list[str], Callable[[str], torch.Tensor]]]:
    """Yield (keys, get) for an ingredient; files are memory-mapped and read one tensor at a time."""
    if isinstance(source, Mapping):
        yield list(source.keys()), lambda k: source[k]
        return
    with open_weights_file(weights_file(source)) as f:
        yield f.keys(), f.get_tensor


def source_name(source: Source, index: int) -> str:
    return f"state_dict[{index}]" if isinstance(source, Mapping) else str(source)


def load_state_dict(source: Source) -> StateDict:
    """Load a whole ingredient into memory (CPU)."""
    with open_source(source) as (keys, get):
        return {k: get(k) for k in keys}


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | Path, metadata=None) -> Path:
    """Atomically write a state dict as safetensors (tensors made contiguous, on CPU)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))


# ----------------------------------------------------------------------------- streaming


def linear_merge(
    ingredients: Sequence[Source],
    coefficients: Coefficients,
    base: Source | None = None,
) -> StateDict:
    """sum_j c_j theta_j + c_0 theta_0, accumulated in float32 one ingredient at a time.

    Floating tensors come back in the first ingredient's dtype; integer tensors (buffers
    such as position ids) are copied from the first ingredient and must agree across all.
    """
    if len(coefficients.ingredients) != len(ingredients):
        raise ConfigError(
            f"{len(coefficients.ingredients)} coefficients for {len(ingredients)} ingredients"
        )
    if coefficients.base and base is None:
        raise ConfigError("these merge coefficients need a base checkpoint (theta_0)")
    terms = [(s, c, i) for i, (s, c) in enumerate(zip(ingredients, coefficients.ingredients))]
    if base is not None and coefficients.base:
        terms.append((base, coefficients.base, -1))
    acc: StateDict = {}
    dtypes: dict[str, torch.dtype] = {}
    reference: str | None = None
    for source, coef, index in terms:
        name = "base" if index < 0 else source_name(source, index)
        with open_source(source) as (keys, get):
            if reference is None:
                reference = name
                for key in keys:
                    t = get(key)
                    dtypes[key] = t.dtype
                    acc[key] = t.float() * coef if t.is_floating_point() else t.clone()
                continue
            _check_keys(keys, acc, name, reference)
            for key in keys:
                t = get(key)
                if t.shape != acc[key].shape:
                    raise DataError(
                        f"{name}: tensor '{key}' has shape {tuple(t.shape)}, "
                        f"expected {tuple(acc[key].shape)} as in {reference}"
                    )
                if acc[key].is_floating_point():
                    acc[key].add_(t.float(), alpha=coef)
                elif not torch.equal(t, acc[key]):
                    raise DataError(f"{name}: integer tensor '{key}' differs from {reference}")
    for key in acc:  # cast back in place, key by key, so only one extra tensor is alive
        acc[key] = acc[key].to(dtypes[key])
    return acc


def _check_keys(keys: list[str], acc: Mapping[str, torch.Tensor], name: str, ref: str) -> None:
    missing = sorted(set(acc) - set(keys))
    extra = sorted(set(keys) - set(acc))
    if missing or extra:
        bad = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise DataError(f"{name}: keys differ from {ref} ({bad}); ingredients must share one architecture")


def merge(
    method: str,
    ingredients: Sequence[Source],
    base: Source | None = None,
    **params,
) -> tuple[StateDict, Coefficients]:
    """Merge `ingredients` with a registered method; returns the weights and the coefficients."""
    coefs = merge_coefficients(method, len(ingredients), base is not None, **params)
    return linear_merge(ingredients, coefs, base), coefs
