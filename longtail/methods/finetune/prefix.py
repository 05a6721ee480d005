"""Training from the frozen-prefix cache (models/prefix_cache.py): the cached views, the
per-epoch view draw, and the run-level wiring.

When the adapter leaves blocks 0..d-1 frozen (partial: d = L - num_blocks; none: d = L), the
block-d states of every training image are computed once per view and reused by every epoch
and every run with the same prefix (all LT-Soups ingredients, stage 2, repeated fits). Views,
drawn once with a seeded generator (`prefix_views` = V, `prefix_view_kind`):

- flip: view 0 is the test-style image (decode, resize to the model size: exactly what
  augment=none feeds an uncached run), view 1 (V = 2) its mirror image;
- rrc_flip: V random-resized crops (crop_scale_min..max, aspect 3/4..4/3) each flipped with
  probability 1/2, fixed per (image, view) by cfg.seed.

Each epoch trains on one view per image, drawn from (seed, epoch). What it gives up against
fresh augmentation: the model sees at most V distinct crops of an image instead of a new one
every epoch, so with many epochs it overfits sooner; V = 2 (flip) costs 2x the disk of V = 1.
Disk: N x V x (hidden size) x 2 bytes (EfficientNet-Lite0 at 128 px before its last block:
192 x 4 x 4 = 6 KiB per view; a ViT-B/16 at 224 px: 197 x 768 = 296 KiB per view).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from longtail.errors import ConfigError
from longtail.methods.finetune.augment import Normalize, ResizeOnly, decode_transform
from longtail.models.preprocess import InputSpec

VIEW_SALT = 7_919  # keeps the view draws apart from the shuffles seeded by the same cfg.seed


class ViewRenderer:
    """(uint8 (B, S, S, 3), dataset indices (B,)) -> (B, V, 3, size, size) normalised views."""

    def __init__(self, cfg, spec: InputSpec) -> None:
        self.kind, self.views, self.seed = cfg.prefix_view_kind, cfg.prefix_views, cfg.seed
        self.scale = (cfg.crop_scale_min, cfg.crop_scale_max)
        self.size, self.interpolation = spec.size, cfg.interpolation
        self.base = ResizeOnly(self.size, spec.mean, spec.std, interpolation=cfg.interpolation)

    def to_dict(self) -> dict:
        seed = None if self.kind == "flip" else self.seed  # flip views do not depend on the seed: runs share
        return {"kind": self.kind, "views": self.views, "seed": seed, "scale": list(self.scale),
                "interpolation": self.interpolation, "size": self.size}

    def __call__(self, images: Tensor, index: Tensor) -> Tensor:
        if self.kind == "flip":
            x = self.base(images)
            return torch.stack([x, x.flip(-1)][: self.views], dim=1)
        return self._crops(images, index)

    def _crops(self, images: Tensor, index: Tensor) -> Tensor:
        """Random-resized crops + flips, fixed per (image index, view)."""
        import kornia.geometry.transform as KT

        x = self.base.norm.to_float(images)
        side = x.shape[-1]
        out = []
        for v in range(self.views):  # V is small; each view is one batched crop
            w, h, x0, y0, flip = (t.to(x.device) for t in crop_params(index.cpu(), v, self.seed, self.scale))
            left, top = x0 * side, y0 * side
            right, bottom = left + w * side - 1, top + h * side - 1  # kornia: inclusive pixel corners
            boxes = torch.stack([left, top, right, top, right, bottom, left, bottom], dim=1).view(-1, 4, 2)
            crop = KT.crop_and_resize(x, boxes, (self.size, self.size), mode=self.interpolation, align_corners=False)
            crop = torch.where(flip.view(-1, 1, 1, 1), crop.flip(-1), crop)
            out.append(self.base.norm(crop.clamp_(0.0, 1.0)))
        return torch.stack(out, dim=1)


def uniforms(keys: np.ndarray, count: int) -> np.ndarray:
    """(n, count) uniforms in [0, 1) that depend only on each 64-bit key (splitmix64, vectorised):
    a counter-based draw, so a crop never depends on which batch its image is in."""
    with np.errstate(over="ignore"):
        x = keys.astype(np.uint64)[:, None] * np.uint64(0x9E3779B97F4A7C15) + np.arange(1, count + 1, dtype=np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def crop_params(index: Tensor, view: int, seed: int, scale: tuple[float, float],
                ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10):
    """(w, h, x0, y0) as fractions of a square image and a flip flag, per image index: the
    torchvision RandomResizedCrop rule (area fraction in `scale`, log-uniform aspect in `ratio`,
    first of `attempts` that fits, else the whole image), drawn from (seed, index, view) only."""
    keys = (index.numpy().astype(np.int64) * 1_000_003 + view) * VIEW_SALT + seed
    u = torch.from_numpy(uniforms(keys, attempts * 2 + 3))
    n = u.shape[0]
    area = scale[0] + (scale[1] - scale[0]) * u[:, :attempts]
    log_r = np.log(ratio[0]) + (np.log(ratio[1]) - np.log(ratio[0])) * u[:, attempts:2 * attempts]
    w, h = (area * log_r.exp()).sqrt(), (area / log_r.exp()).sqrt()
    fits = (w <= 1) & (h <= 1)
    found = fits.any(1)
    pick = fits.float().argmax(1).view(-1, 1)
    one = torch.ones(n, dtype=torch.float64)
    w = torch.where(found, w.gather(1, pick).squeeze(1), one)
    h = torch.where(found, h.gather(1, pick).squeeze(1), one)
    x0, y0 = (1 - w) * u[:, -3], (1 - h) * u[:, -2]
    return w.float(), h.float(), x0.float(), y0.float(), u[:, -1] < 0.5


def epoch_views(seed: int, epoch: int, n: int, views: int) -> np.ndarray:
    """The view of each of n images used in `epoch` (uniform, from (seed, epoch) only)."""
    if views == 1:
        return np.zeros(n, dtype=np.int64)
    g = torch.Generator().manual_seed(seed * VIEW_SALT + 1_000_000 + epoch)
    return torch.randint(views, (n,), generator=g).numpy()


class CachedPrefixes(Dataset):
    """Training images as (cached block-d states, label) for one epoch; item i is training
    image i (position `positions[i]` of the cached dataset), in the epoch's view."""

    def __init__(self, cache, positions: np.ndarray, labels: np.ndarray, views: np.ndarray) -> None:
        self.cache, self.positions, self.views = cache, positions, views
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, Tensor]]:
        idx = np.asarray(indices, dtype=np.int64)
        rows = self.cache.rows(self.positions[idx], self.views[idx])
        return list(zip(rows.unbind(0), self.labels[idx].unbind(0)))


class PrefixSource:
    """What the engine trains from instead of pixels: `dataset(epoch)` and the depth."""

    def __init__(self, cache, positions: np.ndarray, labels: np.ndarray, seed: int) -> None:
        self.cache, self.positions, self.labels, self.seed = cache, positions, labels, seed
        self.depth = cache.depth

    def dataset(self, epoch: int) -> CachedPrefixes:
        views = epoch_views(self.seed, epoch, len(self.positions), self.cache.views)
        return CachedPrefixes(self.cache, self.positions, self.labels, views)


def positions_in(full, train) -> tuple[object, np.ndarray]:
    """(dataset to cache, positions of the training images in it): the full training split when
    every training image is one of its images (LT-Soups subsets share one cache), else train."""
    if full is not train:
        where = {item: i for i, item in enumerate(full.items.tolist())}
        if len(where) == len(full):
            pos = [where.get(item, -1) for item in train.items.tolist()]
            if min(pos, default=-1) >= 0:
                return full, np.asarray(pos, dtype=np.int64)
    return train, np.arange(len(train), dtype=np.int64)


def frozen_depth(cfg, backbone) -> int:
    """d: blocks 0..d-1 of `backbone` stay frozen under the run's adapter (ConfigError if none)."""
    from longtail.models.adapters import make_adapter_config

    depth = make_adapter_config(cfg.adapter, **cfg.adapter_options).frozen_depth(backbone.num_blocks)
    if depth is None:
        raise ConfigError(f"adapter '{cfg.adapter}' has no frozen prefix to cache")
    return depth


def open_entry(cfg, model, dataset, render, decode, device, progress: bool):
    """Open (building it if needed) the run's cache entry of `dataset` at its frozen depth, views
    rendered by `render` (its `views` and `to_dict()` join the key)."""
    from longtail.models.prefix_cache import open_prefix_cache

    spec = model.input_spec
    key_spec = {"decode": decode.to_dict(), "views": render.to_dict(), "mean": list(spec.mean),
                "std": list(spec.std)}
    backbone = model.backbone
    return open_prefix_cache(backbone, dataset, frozen_depth(cfg, backbone), render.views, render, decode,
                             key_spec, device, cfg.prefix_cache_dir, cfg.eval_batch_size, cfg.num_workers,
                             progress, cfg.prefix_dtype)


def open_prefix_source(cfg, model, splits, acc) -> PrefixSource:
    """Build or open the prefix cache of the run's training images and return the source."""
    spec = model.input_spec
    decode = decode_transform(cfg.decode_size or spec.resize, spec.mean, spec.std, cfg.interpolation)
    data, positions = positions_in(splits.full_train, splits.train)
    was_training = model.backbone.training
    # Under DDP every process calls this: they build the entry together (each its share of the
    # images, the main process assembles it) and all open the finished entry.
    cache = open_entry(cfg, model, data, ViewRenderer(cfg, spec), decode, acc.device,
                       cfg.progress and acc.is_local_main_process)
    model.backbone.train(was_training)
    return PrefixSource(cache, positions, np.asarray(splits.train.labels), cfg.seed)


class TestView:
    """The evaluation 'view': the test transform's decoded crop, normalised, as the only view."""

    views = 1

    def __init__(self, spec: InputSpec) -> None:
        self.norm = Normalize(spec.mean, spec.std)

    def to_dict(self) -> dict:
        return {"kind": "test", "views": 1}

    def __call__(self, images: Tensor, index: Tensor) -> Tensor:
        return self.norm(self.norm.to_float(images))[:, None]


def cached_logits(model, cfg, dataset, device: torch.device, precision: str = "auto") -> np.ndarray | None:
    """(N, C) logits of a model on a dataset's test-transformed images from the frozen-prefix
    cache (its own entry, one view: the test crop), or None where evaluation cannot read it:
    the run does not train from the cache or runs in several processes. The entry is keyed by
    the prefix weights like any other, so every run, soup and interpolation of the same frozen
    prefix evaluates from one pass over the images."""
    from longtail.device import autocast
    from longtail.methods.finetune.augment import test_transform
    from longtail.models.cache_store import process_group

    if not cfg.uses_prefix_cache or process_group().world > 1 or not len(dataset):
        return None
    from pathlib import Path

    from longtail.models.cache_store import usable_cache
    from longtail.models.prefix_cache import default_cache_dir

    if not usable_cache(Path(cfg.prefix_cache_dir) if cfg.prefix_cache_dir else default_cache_dir(), "frozen-prefix"):
        return None  # a read-only cache: evaluate from the pixels
    spec = model.input_spec
    cache = open_entry(cfg, model, dataset, TestView(spec), test_transform(spec), device, cfg.progress)
    depth = cache.depth
    model.eval().to(device)
    out = []
    with torch.no_grad():
        for start in range(0, len(dataset), cfg.eval_batch_size):
            rows = np.arange(start, min(start + cfg.eval_batch_size, len(dataset)))
            hidden = cache.rows(rows, np.zeros(len(rows), dtype=np.int64)).to(device)
            with autocast(device, precision):
                out.append(model(hidden, from_depth=depth)["z_hat"].float().cpu())
    return torch.cat(out).numpy().astype(np.float32)
