"""Eval preprocessing throughput: longtail's EvalTransform vs Hugging Face CLIPImageProcessor.

Both do the CLIP eval transform (bicubic shorter side -> 224, centre crop 224, mean/std) on
the same images in the same run; prints images/s of each, their ratio and the max difference.
Images: CIFAR-10 JPEGs from ../shared/data/cifar10-jpeg.zip when present, else random 32x32.

    python benchmarks/preprocess_speed.py [--n 512] [--batch 64]
"""

from __future__ import annotations

import argparse
import io
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from longtail.models.preprocess import EvalTransform

ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"


def load_images(n: int) -> tuple[list[Image.Image], str]:
    if ZIP.is_file():
        with zipfile.ZipFile(ZIP) as z:
            names = [m for m in z.namelist() if m.startswith("test/") and m.endswith(".jpg")][:n]
            return [Image.open(io.BytesIO(z.read(m))).convert("RGB") for m in names], "CIFAR-10 test JPEGs"
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)], "random 32x32"


def throughput(fn, images, batch: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            fn(images[i : i + batch])
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    images, source = load_images(args.n)
    hf = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    ours = EvalTransform.from_image_processor(hf)
    diff = (ours(images[:16]) - hf(images=images[:16], return_tensors="pt")["pixel_values"]).abs().max()
    torch.set_num_threads(1)
    ours_ips = throughput(ours, images, args.batch)
    hf_ips = throughput(lambda b: hf(images=b, return_tensors="pt")["pixel_values"], images, args.batch)
    print(f"{len(images)} {source}, batch {args.batch}, 1 thread")
    print(f"longtail EvalTransform:       {ours_ips:8.1f} images/s")
    print(f"HF CLIPImageProcessor ({type(hf).__name__}): {hf_ips:8.1f} images/s")
    print(f"ratio longtail / HF: {ours_ips / hf_ips:.2f}x   max |difference| = {float(diff):.2e}")


if __name__ == "__main__":
    main()
