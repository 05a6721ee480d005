"""Training throughput of `-m lift` vs a bare forward+backward of the same frozen CLIP backbone.

Peer (measured in the same run, interleaved): the unadapted backbone + the same cosine head
and LA loss, with backward through every transformer block (the patch-embedding output is
made to require grad, so autograd traverses the blocks exactly as it must for adapters in
every block, and stops before the frozen patch embedding as LIFT's backward does). LIFT: AdaptFormer in every
block + cosine head + LA loss + backward + SGD step. Both get the same pre-normalised pixels;
the ratio is the adapter overhead (goal <= 15 %). Random weights, built from configs.

    python benchmarks/train_step.py --threads 1          # tiny and ViT-B/16-sized, auto device
    python benchmarks/train_step.py --sizes vit_b16 --batch 32 --steps 20 --device cuda
    python benchmarks/train_step.py --engine --threads 1  # the whole engine step (loader, augment, accumulate)

--engine times the fine-tuning engine's optimizer step as `fit` runs it (`runner.train` on
synthetic_images with tiny_clip, 4 micro-batches per step): the median seconds between two
optimizer steps, data loading, device augmentation, bookkeeping and host syncs included. The
bare rows above time the model only, so they cannot see what the loop around it costs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from longtail.methods.finetune import build_config, build_model
from longtail.methods.losses import make_loss
from longtail.models.clip import CLIPBackbone
from longtail.models.preprocess import EvalTransform

SIZES = {  # vision tower shapes; the text tower is kept minimal (unused: head_init=random)
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 image_size=32, patch_size=8),
    "vit_b16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    image_size=224, patch_size=16),
}


def make_backbone(size: str) -> CLIPBackbone:
    from transformers import CLIPConfig, CLIPModel

    vision = SIZES[size]
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=100, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    s = vision["image_size"]
    return CLIPBackbone(model, None, EvalTransform(size=s, crop_size=(s, s)), f"random_{size}", f"config:{size}")


def timed(fn, steps: int, device: torch.device) -> float:
    """Seconds per call (median of `steps` calls)."""
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(size: str, batch: int, steps: int, device: torch.device, num_classes: int = 100) -> dict:
    names = [f"class {i}" for i in range(num_classes)]
    counts = torch.linspace(500, 5, num_classes).round().long().numpy()
    cfg = build_config("synthetic_images", "tiny_clip", "lift", {"head_init": "random"})
    lift = build_model(cfg, make_backbone(size), names).to(device).train()
    peer = build_model(build_config("synthetic_images", "tiny_clip", "linear_probe", {"head_init": "random"}),
                       make_backbone(size), names).to(device).train()
    peer.backbone.model.vision_model.embeddings.register_forward_hook(
        lambda module, args, output: output.detach().requires_grad_(True))
    loss_fn = make_loss("la", counts).to(device)
    optimizer = torch.optim.SGD([p for p in lift.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    s = SIZES[size]["image_size"]
    x = torch.randn(batch, 3, s, s, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def lift_step():
        with amp:
            loss = loss_fn(lift(x)["z"].float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def peer_step():
        with amp:
            loss = loss_fn(peer(x)["z"].float(), y)
        loss.backward()
        peer.zero_grad(set_to_none=True)

    for fn in (lift_step, peer_step):  # warm-up
        fn()
    lift_t, peer_t = [], []
    for _ in range(3):  # interleave to share any background load fairly
        lift_t.append(timed(lift_step, steps, device))
        peer_t.append(timed(peer_step, steps, device))
    lt, pt = statistics.median(lift_t), statistics.median(peer_t)
    return {"size": size, "batch": batch, "lift_img_s": batch / lt, "peer_img_s": batch / pt,
            "overhead": lt / pt - 1.0, "trainable": lift.num_trainable()}


def bench_engine(steps: int, batch: int, grad_accum: int, device: str) -> dict:
    """Median seconds per optimizer step of the engine (`runner.train`, no run folder)."""
    from longtail.methods.finetune.runner import train

    cfg = build_config("synthetic_images", "tiny_clip", "lift", {
        "steps": steps, "batch_size": batch, "grad_accum": grad_accum, "device": device, "progress": False,
        "num_workers": 0, "head_init": "random", "eval_batch_size": 256})
    stamps: list[float] = []
    train(cfg, on_step=lambda step: stamps.append(time.perf_counter()))
    gaps = [b - a for a, b in zip(stamps[1:], stamps[2:])]  # the first step pays for warm-up
    return {"steps": steps, "batch": batch, "grad_accum": grad_accum, "step_s": statistics.median(gaps)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="tiny,vit_b16")
    p.add_argument("--batch", type=int, default=None, help="default: 64 tiny / 4 vit_b16 on CPU, 64 on GPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (3 rounds); default 20 tiny / 2 vit_b16 on CPU")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU intra-op threads (1 gives stable timings on a loaded machine)")
    p.add_argument("--engine", action="store_true", help="time the engine's optimizer step instead (runner.train)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from longtail.device import resolve_device

    device = resolve_device(args.device)
    if args.engine:
        r = bench_engine(args.steps or 40, args.batch or 64, 4, str(device))
        print(f"engine on {device}: {r['step_s'] * 1e3:.1f} ms per optimizer step "
              f"(batch {r['batch']} = {r['grad_accum']} micro-batches, median of {r['steps'] - 2} steps)")
        return
    print(f"device: {device}{' (' + torch.cuda.get_device_name(0) + ')' if device.type == 'cuda' else ''}, "
          f"torch threads: {torch.get_num_threads()}")
    print(f"{'size':8} {'batch':>5} {'lift img/s':>11} {'bare fwd+bwd img/s':>19} {'adapter overhead':>17} {'trainable':>10}")
    for size in args.sizes.split(","):
        big = size == "vit_b16" and device.type == "cpu"
        r = bench(size, args.batch or (4 if big else 64), args.steps or (2 if big else 20), device)
        print(f"{r['size']:8} {r['batch']:5d} {r['lift_img_s']:11.1f} {r['peer_img_s']:19.1f} "
              f"{100 * r['overhead']:16.1f}% {r['trainable']:10d}")


if __name__ == "__main__":
    main()
