"""Inference for fine-tuned models: the LIFT test transform, optional five-crop TTE, batched logits.

Test transform: shorter side -> round(size * 256/224), centre crop size (decoded in CPU
workers); TTE: shorter side -> size + 24, the four corner crops and the centre crop on the
device, logits averaged over the five crops.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from longtail.device import resolve_device
from longtail.methods.finetune.augment import DecodedImages, Normalize, decode_transform, five_crops
from longtail.models.preprocess import EvalTransform


def input_spec(backbone: nn.Module, cfg: Any) -> dict[str, Any]:
    """The model's input size and normalisation (from its eval transform) + the test resize ratio."""
    transform = backbone.transform
    return {"size": int(transform.output_size[0]), "mean": list(transform.mean),
            "std": list(transform.std), "test_resize_ratio": float(cfg.test_resize_ratio)}


def _autocast(device: torch.device, precision: str):
    if device.type != "cuda" or precision == "no":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.float16 if precision == "fp16" or not torch.cuda.is_bf16_supported() else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype)


def _loader(dataset, transform: EvalTransform, batch_size: int, num_workers: int, device) -> DataLoader:
    return DataLoader(DecodedImages(dataset, transform), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, pin_memory=device.type == "cuda")


@torch.no_grad()
def predict_logits(model: nn.Module, dataset, batch_size: int = 256, tte: bool = False,
                   device: str | torch.device = "auto", num_workers: int = 0,
                   precision: str = "auto", progress: bool = False) -> np.ndarray:
    """(N, C) float32 prediction logits (z_hat; averaged over the five crops with TTE)."""
    import sys

    from tqdm.auto import tqdm

    spec = model.input_spec
    size = spec["size"]
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    if tte:
        transform = decode_transform(size + 24, spec["mean"], spec["std"])
    else:
        transform = EvalTransform(size=round(size * spec["test_resize_ratio"]), crop_size=(size, size),
                                  mean=tuple(spec["mean"]), std=tuple(spec["std"]))
    norm = Normalize(spec["mean"], spec["std"]).to(device)
    was_training = model.training
    model.eval().to(device)
    out: list[Tensor] = []
    loader = _loader(dataset, transform, batch_size, num_workers, device)
    try:
        for images, _ in tqdm(loader, desc="predict", disable=not (progress and sys.stderr.isatty()), leave=False):
            x = norm(norm.to_float(images.to(device, non_blocking=True)))
            with _autocast(device, precision):
                if tte:
                    crops = five_crops(x, size)  # (5, B, 3, size, size)
                    z = model(crops.flatten(0, 1))["z_hat"].float().view(5, x.shape[0], -1).mean(0)
                else:
                    z = model(x)["z_hat"].float()
            out.append(z.cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy().astype(np.float32)


@torch.no_grad()
def frozen_features(backbone: nn.Module, dataset, cfg: Any, device) -> tuple[Tensor, Tensor]:
    """Frozen-backbone features of a dataset with the test transform (for class-mean init)."""
    spec = input_spec(backbone, cfg)
    size = spec["size"]
    transform = EvalTransform(size=round(size * spec["test_resize_ratio"]), crop_size=(size, size),
                              mean=tuple(spec["mean"]), std=tuple(spec["std"]))
    norm = Normalize(spec["mean"], spec["std"]).to(device)
    backbone.eval().to(device)
    feats, labels = [], []
    for images, y in _loader(dataset, transform, cfg.eval_batch_size, cfg.num_workers, device):
        with _autocast(device, cfg.precision):
            feats.append(backbone.forward_features(norm(norm.to_float(images.to(device)))).float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)
