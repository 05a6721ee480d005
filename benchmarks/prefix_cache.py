"""Training epoch time with the frozen-prefix cache against the same run without it.

Peer (measured in the same run, same config, same images): `longtail fit` with
prefix_cache=off, which decodes, augments (augment=none here, so both see the same pixels) and
runs the whole frozen bottom for every batch. Cached: prefix_cache=on, V = 1 view, the
block-(L-k) states read from the memory-mapped fp16 entry. Each mode trains 2 epochs; the
epoch time is that of the second epoch (warm). The cache is built once by a cold cached run
(its extra wall time is the build cost, printed too); a warm cached run is then timed.

Models (random weights, seeded; accuracy is not the point):
- EfficientNet-Lite0 at 128 px, last-stage fine-tuning (partial, num_blocks=1: its last MBConv
  block + the 1x1 head conv), synthetic 128-px images;
- a ViT-B/16-sized CLIP vision tower built from a config (12 x 768, 224 px), last-2-block
  fine-tuning (partial, num_blocks=2).
Expected ratio: uncached work = the whole forward + the backward of the tuned top, cached work
= the top's forward + backward, plus the decode the cache skips; a thin top (EfficientNet's last
stage at 4 x 4) gains most, two of twelve ViT blocks at most about (12 + 2 b) / (2 + 2 b) with
b ~ 2 the backward/forward cost ratio.

    python benchmarks/prefix_cache.py                       # both models, CPU, 1 thread, ~5 min
    python benchmarks/prefix_cache.py --models efficientnet --images 64
    python benchmarks/prefix_cache.py --device cuda --images 512
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from longtail.methods.finetune import build_config, fit
from longtail.models.backbone import BACKBONES
from longtail.models.clip import CLIPBackbone
from longtail.models.preprocess import EvalTransform

VIT_B16 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               image_size=224, patch_size=16)


def vit_b16(seed: int = 0, revision=None) -> CLIPBackbone:
    """A ViT-B/16-sized CLIP from a config (random weights; minimal text tower, unused)."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=100, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=VIT_B16, projection_dim=16))
    return CLIPBackbone(model, None, EvalTransform(size=224, crop_size=(224, 224)), "bench_vit_b16",
                        f"config:vit_b16:seed={seed}")


MODELS = {
    "efficientnet": {"backbone": "efficientnet_lite0", "size": 128, "num_blocks": 1,
                     "backbone_options": {"image_size": 128, "pretrained": False}},
    "vit_b16": {"backbone": "bench_vit_b16", "size": 224, "num_blocks": 2, "backbone_options": {}},
}


def run(model: str, work: Path, images: int, batch: int, device: str, workers: int) -> dict:
    spec = MODELS[model]
    classes = 4
    data = {"num_classes": classes, "n_max": max(images // classes, 1), "imbalance_ratio": 1,
            "test_per_class": 1, "size": spec["size"]}
    base = {"data_options": data, "root": str(work / f"data_{spec['size']}"), "backbone": spec["backbone"],
            "backbone_options": spec["backbone_options"], "adapter_options": {"num_blocks": spec["num_blocks"]},
            "head_init": "random", "epochs": 2, "batch_size": batch, "eval_batch_size": batch,
            "augment": "none", "prefix_views": 1, "prefix_cache_dir": str(work / "cache"),
            "num_workers": workers, "device": device, "progress": False, "decode_size": spec["size"]}

    def timed_fit(name: str, cache: str) -> tuple[float, float]:
        cfg = build_config("synthetic_images", spec["backbone"], "partial_ft", {**base, "prefix_cache": cache})
        start = time.perf_counter()
        result = fit(cfg, out=work / f"{model}_{name}", report=False)
        last = result.history[-1]
        seen = len(result.splits.train)
        return seen / last["images_per_s"], time.perf_counter() - start

    plain_epoch, plain_wall = timed_fit("plain", "off")
    _, cold_wall = timed_fit("cold", "on")
    cached_epoch, warm_wall = timed_fit("warm", "on")
    return {"model": model, "images": images, "epoch_s_uncached": round(plain_epoch, 3),
            "epoch_s_cached": round(cached_epoch, 3), "ratio": round(plain_epoch / cached_epoch, 2),
            "cache_build_s": round(cold_wall - warm_wall, 2),
            "wall_s": {"uncached": round(plain_wall, 2), "cached_cold": round(cold_wall, 2),
                       "cached_warm": round(warm_wall, 2)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--images", type=int, default=0, help="training images (default 128 CNN, 32 ViT)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2, help="decode workers of the uncached run")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine more threads spin-wait; 0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if "bench_vit_b16" not in BACKBONES:
        BACKBONES.register("bench_vit_b16", vit_b16)
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            images = args.images or (128 if model == "efficientnet" else 32)
            row = run(model, Path(tmp), images, args.batch, args.device, args.workers)
            print(json.dumps(row), flush=True)
            print(f"{model}: epoch {row['epoch_s_uncached']:.2f} s uncached vs {row['epoch_s_cached']:.2f} s "
                  f"cached = {row['ratio']:.1f}x (goal >= 5x); one-off cache build {row['cache_build_s']:.1f} s",
                  flush=True)


if __name__ == "__main__":
    main()
