"""One prepared GPU check: every GPU figure the README asks for, printed as one JSON object.

Measures, on the default device (CUDA when present):
- `lift` and `sage` training images/s and peak memory on a ViT-B/16-sized CLIP (random weights,
  bf16 autocast) against a bare forward+backward of the same frozen backbone (benchmarks/
  train_step.py's peer: backward through every block, no adapter);
- EfficientNet-Lite0 full fine-tuning images/s at 224 px (random weights: speed does not depend
  on their values), through the fine-tuning model builder;
- frozen feature extraction images/s (ViT-B/16-sized CLIP and EfficientNet-Lite0, fp16 autocast,
  model throughput on pre-decoded pixels);
- the linear probe (L-BFGS, CE) on 100k x 768 features on the device against scikit-learn's
  LogisticRegression on the CPU (same objective, same tolerance, all CPU cores);
- 1M vMF samples (d = 768, 1,000 distinct (mu, kappa)) with the batched Wood sampler.

`--smoke` shrinks every size so the whole check runs on a CPU in seconds (a test runs it);
its numbers mean nothing. Budget on one H100/H200: well under 8 minutes (benchmarks/gpu_check.sh).

    python benchmarks/gpu_check.py [--smoke] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import SIZES, make_backbone  # noqa: E402  (benchmarks/ is not a package)

from longtail.device import resolve_device  # noqa: E402
from longtail.methods.finetune import build_config, build_model  # noqa: E402
from longtail.methods.losses import make_loss  # noqa: E402

SMOKE_SIZES = {"vit": "tiny", "effnet_px": 64, "batch": 4, "steps": 2, "probe_n": 2000, "probe_d": 32,
               "probe_c": 10, "vmf_n": 10_000, "vmf_groups": 10}
FULL_SIZES = {"vit": "vit_b16", "effnet_px": 224, "batch": 64, "steps": 10, "probe_n": 100_000, "probe_d": 768,
              "probe_c": 100, "vmf_n": 1_000_000, "vmf_groups": 1000}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(step, batch: int, steps: int, device: torch.device) -> tuple[float, float | None]:
    """(images/s as the median over `steps` timed calls after one warm-up, peak memory MiB or None)."""
    step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return batch / statistics.median(times), peak


def autocast(device: torch.device, dtype: torch.dtype = torch.bfloat16):
    return torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda")


def training_throughput(model: torch.nn.Module, image_size: int, sizes: dict, device: torch.device) -> dict:
    """Images/s and peak memory of SGD steps (LA loss, bf16 autocast on CUDA) on random pixels."""
    num_classes = model.head.weight.shape[0]
    loss_fn = make_loss("la", np.linspace(500, 5, num_classes).round().astype(np.int64)).to(device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    x = torch.randn(sizes["batch"], 3, image_size, image_size, device=device)
    y = torch.randint(0, num_classes, (sizes["batch"],), device=device)

    def step():
        with autocast(device):
            loss = loss_fn(model(x)["z"].float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    img_s, peak = throughput(step, sizes["batch"], sizes["steps"], device)
    return {"img_s": round(img_s, 1), "peak_mib": None if peak is None else round(peak)}


def train_steps(sizes: dict, device: torch.device, num_classes: int = 100) -> dict:
    """LIFT / Sage / bare forward+backward on the ViT-B/16-sized CLIP."""
    names = [f"class {i}" for i in range(num_classes)]
    out = {}
    for method in ("lift", "sage", "bare"):
        preset = "linear_probe" if method == "bare" else method
        cfg = build_config("synthetic_images", "tiny_clip", preset, {"head_init": "random"})
        model = build_model(cfg, make_backbone(sizes["vit"]), names).to(device).train()
        if method == "bare":  # backward through every block, as an adapter in every block needs
            model.backbone.model.vision_model.embeddings.register_forward_hook(
                lambda module, args, output: output.detach().requires_grad_(True))
        out[method] = training_throughput(model, SIZES[sizes["vit"]]["image_size"], sizes, device)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for method in ("lift", "sage"):
        out[method]["time_vs_bare"] = round(out["bare"]["img_s"] / out[method]["img_s"], 3)
    return {"backbone": f"CLIP {sizes['vit']} (random weights, bf16 autocast on CUDA)", "batch": sizes["batch"], **out}


def effnet_full_ft(sizes: dict, device: torch.device, num_classes: int = 100) -> dict:
    """EfficientNet-Lite0, every weight trained, through the fine-tuning model builder."""
    names = [f"class {i}" for i in range(num_classes)]
    px = sizes["effnet_px"]
    cfg = build_config("synthetic_images", "efficientnet_lite0", "full_ft",
                       {"head_init": "random", "backbone_options": {"pretrained": False, "image_size": px}})
    from longtail.models.backbone import load_backbone

    model = build_model(cfg, load_backbone(cfg.backbone, **cfg.backbone_options), names).to(device).train()
    return {"image_size": px, "batch": sizes["batch"], "trainable": model.num_trainable(),
            **training_throughput(model, px, sizes, device)}


@torch.no_grad()
def extraction(sizes: dict, device: torch.device) -> dict:
    """Frozen forward throughput (fp16 autocast on CUDA) on pre-decoded pixels."""
    from longtail.models.backbone import load_backbone

    out = {}
    batch = sizes["batch"] * 4
    for name, backbone, px in (
        (f"clip_{sizes['vit']}", make_backbone(sizes["vit"]), SIZES[sizes["vit"]]["image_size"]),
        ("efficientnet_lite0", load_backbone("efficientnet_lite0", pretrained=False, image_size=sizes["effnet_px"]),
         sizes["effnet_px"]),
    ):
        backbone = backbone.to(device).eval()
        x = torch.randn(batch, 3, px, px, device=device)

        def step(backbone=backbone, x=x):
            with autocast(device, torch.float16):
                backbone.forward_features(x)

        out[name] = round(throughput(step, batch, sizes["steps"], device)[0], 1)
    return {"batch": batch, "img_s": out}


def probe_vs_sklearn(sizes: dict, device: torch.device) -> dict:
    """Our L-BFGS probe on the device vs scikit-learn on every CPU core, same objective and tol."""
    from sklearn.linear_model import LogisticRegression

    from longtail.data.features import FeatureSet
    from longtail.methods.probe import ProbeConfig, fit_probe

    n, d, c = sizes["probe_n"], sizes["probe_d"], sizes["probe_c"]
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((c, d)).astype(np.float32)
    labels = rng.integers(0, c, n)
    x = centres[labels] + 2.0 * rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    train = FeatureSet(features=x, labels=labels, class_names=[f"c{i}" for i in range(c)])
    cfg = ProbeConfig(method="linear", loss="ce", device=str(device))
    fit_probe(train, cfg)  # warm-up (CUDA context, kernels)
    sync(device)
    start = time.perf_counter()
    fit_probe(train, cfg)
    sync(device)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    LogisticRegression(C=1.0, max_iter=1000, tol=1e-4).fit(x, labels)
    peer = time.perf_counter() - start
    return {"n": n, "d": d, "classes": c, "ours_s": round(ours, 3), "sklearn_cpu_s": round(peer, 3),
            "cpu_cores": os.cpu_count(), "time_ratio": round(ours / peer, 4)}


def vmf(sizes: dict, device: torch.device) -> dict:
    from longtail.maths.vmf import sample_vmf

    n, groups, d = sizes["vmf_n"], sizes["vmf_groups"], sizes["probe_d"]
    g = torch.Generator(device=device).manual_seed(0)
    mu = torch.nn.functional.normalize(torch.randn(groups, d, device=device, generator=g), dim=1)
    kappa = torch.linspace(50.0, 500.0, groups, device=device)
    idx = torch.arange(n, device=device) % groups

    def step():
        sample_vmf(mu[idx], kappa[idx], generator=g)

    per_s, _ = throughput(step, n, 3, device)
    return {"samples": n, "dim": d, "groups": groups, "samples_per_s": round(per_s)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for a CPU test; the numbers mean nothing")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = resolve_device(args.device)
    sizes = SMOKE_SIZES if args.smoke else FULL_SIZES
    torch.manual_seed(0)
    result = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({platform.machine()})",
              "torch": torch.__version__, "smoke": args.smoke}
    start = time.perf_counter()
    for name, fn in (("train_step", train_steps), ("efficientnet_full_ft", effnet_full_ft),
                     ("feature_extraction", extraction), ("probe_vs_sklearn", probe_vs_sklearn), ("vmf_sampling", vmf)):
        t = time.perf_counter()
        try:
            result[name] = fn(sizes, device)
        except Exception as err:  # one failing part must not lose the others' figures
            result[name] = {"error": f"{type(err).__name__}: {err}"}
        result[name]["seconds"] = round(time.perf_counter() - t, 1)
        print(f"# {name} done in {result[name]['seconds']} s", file=sys.stderr, flush=True)
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
