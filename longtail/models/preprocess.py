"""The eval image transform (resize, centre crop, normalise) in PIL + torch, without torchvision.

Written by hand because torchvision does not import with this project's torch; it follows
the Hugging Face `CLIPImageProcessor` steps exactly (PIL resize, floor-offset centre crop,
rescale 1/255, mean/std), so features match the reference preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from longtail.errors import ConfigError, DataError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EvalTransform:
    """Resize (shorter side to `size`, or exactly (h, w)), centre crop, scale to [0, 1], normalise."""

    size: int | tuple[int, int] = 224
    crop_size: tuple[int, int] | None = (224, 224)
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        if self.resample.upper() not in Image.Resampling.__members__:
            names = ", ".join(m.lower() for m in Image.Resampling.__members__)
            raise ConfigError(f"unknown resample '{self.resample}'; choose from: {names}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"mean/std must be 3 values with std > 0, got {self.mean}, {self.std}")
        sizes = [self.size] if isinstance(self.size, int) else list(self.size)
        if min([*sizes, *(self.crop_size or ())]) < 1:  # issue 22 item 16: image_size=0 is no size
            raise ConfigError(f"image sizes must be >= 1 pixel, got size {self.size}, crop {self.crop_size}")

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the produced tensors."""
        if self.crop_size is not None:
            return tuple(self.crop_size)
        if isinstance(self.size, int):
            raise ConfigError("a shorter-side resize without a crop gives ragged sizes; set crop_size")
        return tuple(self.size)

    def resize_shape(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step (HF rule: long side = int(size * long / short))."""
        if not isinstance(self.size, int):
            return self.size[1], self.size[0]
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.size * long / short)
        return (self.size, new_long) if width <= height else (new_long, self.size)

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """PIL (left, top, right, bottom) of the centre crop; outside pixels are zero-padded."""
        ch, cw = self.output_size
        top, left = (height - ch) // 2, (width - cw) // 2
        return left, top, left + cw, top + ch

    def to_uint8(self, image: Image.Image) -> np.ndarray:
        """One image -> (H, W, 3) uint8 after resize and crop."""
        image = image.convert("RGB")
        size = self.resize_shape(*image.size)
        if size != image.size:
            image = image.resize(size, resample=Image.Resampling[self.resample.upper()])
        if self.crop_size is not None:
            box = self.crop_box(*image.size)
            if box != (0, 0, *image.size):
                image = image.crop(box)
        return np.array(image, dtype=np.uint8)  # a writable copy, as torch.from_numpy wants

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, scaled to [0, 1] and standardised."""
        x = batch.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)

    def __call__(self, images: Sequence[Image.Image] | Image.Image) -> torch.Tensor:
        """PIL image(s) -> (B, 3, H, W) float32 tensor (B = 1 for a single image)."""
        if isinstance(images, Image.Image):
            images = [images]
        batch = np.stack([self.to_uint8(im) for im in images])
        return self.normalize(torch.from_numpy(batch))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_image_processor(cls, processor: Any) -> EvalTransform:
        """Read the steps from a Hugging Face image processor (or its config dict)."""
        cfg = processor if isinstance(processor, dict) else processor.to_dict()
        size: int | tuple[int, int] = 224
        if cfg.get("do_resize", True):
            raw = cfg.get("size", 224)
            if isinstance(raw, dict) and "shortest_edge" in raw:
                size = int(raw["shortest_edge"])
            elif isinstance(raw, dict):
                size = (int(raw["height"]), int(raw["width"]))
            else:
                size = int(raw)
        crop = None
        if cfg.get("do_center_crop", True) and cfg.get("crop_size") is not None:
            raw = cfg["crop_size"]
            crop = (int(raw["height"]), int(raw["width"])) if isinstance(raw, dict) else (int(raw),) * 2
        if not cfg.get("do_rescale", True):
            raise ConfigError("image processors without do_rescale are not supported")
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if cfg.get("do_normalize", True):
            mean = tuple(float(v) for v in cfg.get("image_mean", CLIP_MEAN))
            std = tuple(float(v) for v in cfg.get("image_std", CLIP_STD))
        resample = cfg.get("resample", Image.Resampling.BICUBIC)
        if not isinstance(resample, str):
            resample = Image.Resampling(int(resample)).name.lower()
        return cls(size=size, crop_size=crop, mean=mean, std=std, resample=resample)


@dataclass(frozen=True)
class InputSpec:
    """What a fine-tuned model's test images go through: centre crop `size` after resizing the
    shorter side to round(size * test_resize_ratio) with `interpolation`, then mean / std.

    Saved with the weights as a plain dict (`to_dict`); `from_dict` reads it back, checking the
    keys (a dict saved before `interpolation` existed reads as bicubic, what those runs used).
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    test_resize_ratio: float
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.size < 1 or self.test_resize_ratio <= 0:
            raise DataError(f"input spec: size must be >= 1 and test_resize_ratio > 0, "
                            f"got {self.size}, {self.test_resize_ratio}")
        EvalTransform(size=self.size, crop_size=(self.size, self.size), mean=self.mean, std=self.std,
                      resample=self.interpolation)  # the same checks of mean, std and resample

    @property
    def resize(self) -> int:
        """The shorter side before the centre crop."""
        return round(self.size * self.test_resize_ratio)

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std),
                "test_resize_ratio": self.test_resize_ratio, "interpolation": self.interpolation}

    @classmethod
    def from_dict(cls, values: Any, where: str = "input spec") -> InputSpec:
        """An InputSpec from its saved dict; one-line DataError on a missing or unknown key or a bad value."""
        if isinstance(values, InputSpec):
            return values
        if not isinstance(values, dict):
            raise DataError(f"{where}: the input spec is not a mapping (got {type(values).__name__})")
        known = ("size", "mean", "std", "test_resize_ratio", "interpolation")
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise DataError(f"{where}: unknown input spec key '{unknown[0]}' (known: {', '.join(known)})")
        missing = [k for k in known[:4] if k not in values]
        if missing:
            raise DataError(f"{where}: the input spec has no '{missing[0]}'")
        try:
            return cls(size=int(values["size"]), mean=tuple(values["mean"]), std=tuple(values["std"]),
                       test_resize_ratio=float(values["test_resize_ratio"]),
                       interpolation=str(values.get("interpolation", "bicubic")))
        except (TypeError, ValueError, ConfigError) as err:
            raise DataError(f"{where}: bad input spec ({str(err).splitlines()[0]})") from err
