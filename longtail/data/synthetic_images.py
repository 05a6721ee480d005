"""A small generated long-tailed image set: the offline default for tests, demos and smoke runs.

Each class is a coloured grating with its own hue and orientation, plus random phase,
frequency jitter, hue jitter and pixel noise, so classes are learnable but not trivial.
Written once (seeded, deterministic) as PNGs in the folder layout
`<cache>/<train|test>/<class>/<i>.png` and reused; the folder is built in a temporary
directory and renamed into place, so a crash never leaves a half-written set.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from longtail.data.profiles import exponential_profile

VERSION = 2  # bump when the generator changes, so old caches are not reused
HUE_NAMES = (  # colour names at hues 0, 30, ..., 330 degrees
    "red", "orange", "yellow", "lime", "green", "spring green", "cyan", "azure", "blue",
    "violet", "magenta", "rose",
)


@dataclass(frozen=True)
class SyntheticImagesConfig:
    """Size of the generated set: 10 classes, 200 -> 10 train images (IR 20), 30 test per class."""

    num_classes: int = 10
    n_max: int = 200
    imbalance_ratio: float = 20.0
    test_per_class: int = 30
    size: int = 32
    noise: float = 0.12
    seed: int = 0

    def folder_name(self) -> str:
        return (
            f"synthetic_images_v{VERSION}_c{self.num_classes}_n{self.n_max}"
            f"_ir{self.imbalance_ratio:g}_t{self.test_per_class}_s{self.size}"
            f"_z{self.noise:g}_seed{self.seed}"
        )

    def train_counts(self) -> np.ndarray:
        return exponential_profile(self.n_max, self.num_classes, self.imbalance_ratio)


def class_names(num_classes: int) -> list[str]:
    """Names from each class's hue ('red stripes', ...), numbered when two share a colour."""
    names: list[str] = []
    for c in range(num_classes):
        name = f"{HUE_NAMES[round(12 * c / num_classes) % 12]} stripes"
        names.append(name if name not in names else f"{name} {c}")
    return names


def _hsv_to_rgb(h: np.ndarray, s: float, v: float) -> np.ndarray:
    """Vectorised HSV -> RGB for hue arrays in [0, 1) (shape (..., 3) output)."""
    k = (np.array([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def generate_class(cfg: SyntheticImagesConfig, c: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n images (n, size, size, 3) uint8 of class c, all at once."""
    s = cfg.size
    yy, xx = np.mgrid[0:s, 0:s] / s
    theta = np.pi * c / cfg.num_classes  # orientation of the stripes
    freq = 2.0 + 3.0 * rng.random((n, 1, 1))
    phase = 2 * np.pi * rng.random((n, 1, 1))
    proj = xx * np.cos(theta) + yy * np.sin(theta)
    grating = 0.5 + 0.5 * np.sin(2 * np.pi * freq * proj + phase)  # (n, s, s)
    hue = (c / cfg.num_classes + 0.04 * rng.standard_normal(n)) % 1.0
    colour = _hsv_to_rgb(hue, 0.8, 0.95)[:, None, None, :]  # (n, 1, 1, 3)
    background = 0.15 + 0.1 * rng.random((n, 1, 1, 1))
    img = background + (colour - background) * grating[..., None]
    img = img + cfg.noise * rng.standard_normal(img.shape)
    return (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8)


def _write(cfg: SyntheticImagesConfig, folder: Path) -> None:
    rng = np.random.default_rng(cfg.seed)
    names = class_names(cfg.num_classes)
    splits = {"train": cfg.train_counts(), "test": np.full(cfg.num_classes, cfg.test_per_class)}
    for split, counts in splits.items():
        for c, n in enumerate(counts.tolist()):
            class_dir = folder / split / names[c]
            class_dir.mkdir(parents=True)
            for i, pixels in enumerate(generate_class(cfg, c, n, rng)):
                Image.fromarray(pixels, "RGB").save(class_dir / f"{i:04d}.png")
    (folder / "synthetic.json").write_text(json.dumps({"version": VERSION, **asdict(cfg)}, indent=2))


def cache_dir() -> Path:
    """$LONGTAIL_CACHE, else ~/.cache/longtail."""
    return Path(os.environ.get("LONGTAIL_CACHE") or Path.home() / ".cache" / "longtail")


def ensure_synthetic_images(
    root: str | os.PathLike | None = None, cfg: SyntheticImagesConfig | None = None
) -> Path:
    """Folder of the generated set under `root` (default cache_dir()); written on first use."""
    cfg = cfg or SyntheticImagesConfig()
    parent = Path(root) if root is not None else cache_dir()
    final = parent / cfg.folder_name()
    if (final / "synthetic.json").is_file():
        return final
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cfg.folder_name()}.", dir=parent))
    try:
        _write(cfg, tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: keep theirs
            if not (final / "synthetic.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
