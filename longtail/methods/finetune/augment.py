"""Images for fine-tuning: CPU workers decode to fixed-size uint8 tensors; the device augments.

Decoding (PIL) runs in DataLoader workers and yields (H, W, 3) uint8 arrays of one size, so
batches are cheap to move; random-resized-crop, flip and normalisation run batched on the GPU
with kornia (RRC to the model size, flip, CLIP mean/std). Resizing is `bilinear` (LIFT and
LT-Soups) or `bicubic` (LIFT+). LIFT+'s minimalist crops (square, minimum scale growing over
the epochs) and five-crop TTE are options.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import kornia.augmentation as K
import numpy as np
import torch
from torch import Tensor, nn

from longtail.models.preprocess import EvalTransform, InputSpec
from longtail.registry import Registry

AUGMENTATIONS: Registry[Callable[..., nn.Module]] = Registry("augmentation")
# LIFT+ `mda_func`: t in [0, 1] (epoch / (epochs - 1)) -> s in [0, 1] (fraction of the scale range)
CROP_SCHEDULES: Registry[Callable[[float], float]] = Registry("crop schedule")
CROP_SCHEDULES.register("min", lambda t: 0.0)
CROP_SCHEDULES.register("max", lambda t: 1.0)
CROP_SCHEDULES.register("linear", lambda t: t)
CROP_SCHEDULES.register("convex", lambda t: 1.0 - math.sqrt(1.0 - t * t))
CROP_SCHEDULES.register("concave", lambda t: math.sqrt(1.0 - (1.0 - t) ** 2))


class DecodedImages(torch.utils.data.Dataset):
    """An ImageDataset as (uint8 (H, W, 3) tensor, label): PIL resize + centre crop in the worker."""

    def __init__(self, images, transform: EvalTransform) -> None:
        self.images = images
        self.transform = transform
        self.labels = torch.as_tensor(np.asarray(images.labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(self.transform.to_uint8(self.images.load(int(i)))), self.labels[i]


def decode_transform(side: int, mean, std, interpolation: str = "bilinear") -> EvalTransform:
    """Shorter side -> `side`, centre crop side x side (PIL, `interpolation`)."""
    return EvalTransform(size=int(side), crop_size=(int(side), int(side)), mean=tuple(mean), std=tuple(std),
                         resample=interpolation)


def test_transform(spec: InputSpec) -> EvalTransform:
    """The test/validation transform of a model's input spec: shorter side -> round(size * ratio),
    centre crop size (ratio 256/224: LIFT's and the LT-Soups authors' resize 256 + crop 224)."""
    return EvalTransform(size=spec.resize, crop_size=(spec.size, spec.size), mean=spec.mean, std=spec.std,
                         resample=spec.interpolation)


class Normalize(nn.Module):
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1], then (x - mean) / std."""

    def __init__(self, mean, std) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def to_float(self, batch: Tensor) -> Tensor:
        return batch.permute(0, 3, 1, 2).float().div_(255.0)

    def forward(self, batch: Tensor) -> Tensor:
        return (batch - self.mean.to(batch.device)) / self.std.to(batch.device)


@AUGMENTATIONS.register("rrc_flip")
class RandomResizedCropFlip(nn.Module):
    """The train transform on the device: random-resized-crop, horizontal flip, normalise."""

    def __init__(self, size: int, mean, std, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 interpolation: str = "bilinear") -> None:
        super().__init__()
        self.norm = Normalize(mean, std)
        self.crop = K.RandomResizedCrop((size, size), scale=tuple(scale), ratio=tuple(ratio),
                                        resample=interpolation.upper(), align_corners=False)
        self.flip = K.RandomHorizontalFlip()

    def forward(self, batch: Tensor) -> Tensor:
        x = self.flip(self.crop(self.norm.to_float(batch)))
        return self.norm(x.clamp_(0.0, 1.0))  # bicubic overshoots [0, 1]; PIL clips too


@AUGMENTATIONS.register("none")
class ResizeOnly(nn.Module):
    """No randomness: resize the decoded square to the model size and normalise."""

    def __init__(self, size: int, mean, std, scale=None, ratio=None, interpolation: str = "bilinear") -> None:
        super().__init__()
        self.size, self.mode = size, interpolation
        self.norm = Normalize(mean, std)

    def forward(self, batch: Tensor) -> Tensor:
        x = self.norm.to_float(batch)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode=self.mode,
                                                align_corners=False, antialias=True).clamp_(0.0, 1.0)
        return self.norm(x)


def train_augmentation(name: str, size: int, mean, std, scale: tuple[float, float],
                       schedule: str = "none", epoch: int = 0, epochs: int = 1,
                       interpolation: str = "bilinear") -> nn.Module:
    """The epoch's train augmentation; with a crop schedule (LIFT+), square crops whose minimum
    scale moves from scale[0] (first epoch) towards scale[1] (last epoch)."""
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    if schedule != "none":
        t = epoch / (epochs - 1) if epochs > 1 else 1.0
        s = CROP_SCHEDULES.get(schedule)(min(max(t, 0.0), 1.0))
        scale = (scale[0] + s * (scale[1] - scale[0]), scale[1])
        ratio = (1.0, 1.0)
    return AUGMENTATIONS.get(name)(size, mean, std, scale=scale, ratio=ratio, interpolation=interpolation)


def five_crops(batch: Tensor, size: int) -> Tensor:
    """(B, C, S, S) -> (5, B, C, size, size): four corners and the centre (LIFT's TTE)."""
    h, w = batch.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), (top, left)]
    return torch.stack([batch[..., i:i + size, j:j + size] for i, j in corners])
