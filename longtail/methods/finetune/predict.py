"""Inference for fine-tuned models: the one prediction loop (logits, or frozen features).

Test transform: shorter side -> round(size * test_resize_ratio), centre crop size, decoded
in CPU workers (`augment.test_transform`); TTE: shorter side -> size + 24, the four corner
crops and the centre crop on the device, logits averaged over the five crops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from longtail.device import autocast, resolve_device
from longtail.methods.finetune.augment import (
    DecodedImages,
    Normalize,
    decode_transform,
    five_crops,
    test_transform,
)
from longtail.models.preprocess import InputSpec


def input_spec(backbone: nn.Module, cfg: Any) -> InputSpec:
    """The model's input size and normalisation (from its eval transform), test resize ratio and
    interpolation: what `predict_logits` needs, saved with the weights."""
    transform = backbone.transform
    return InputSpec(size=int(transform.output_size[0]), mean=tuple(transform.mean), std=tuple(transform.std),
                     test_resize_ratio=float(cfg.test_resize_ratio), interpolation=cfg.interpolation)


@torch.no_grad()
def predict(forward: Callable[[Tensor], Tensor], dataset, spec: InputSpec, batch_size: int = 256,
            device: str | torch.device = "auto", num_workers: int = 0, precision: str = "auto",
            tte: bool = False, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(outputs (N, K) float32, labels (N,)) of `forward` over a dataset's test-transformed images.

    `forward` maps a normalised (B, 3, size, size) batch to (B, K); with `tte` it sees the
    five crops as one batch and the outputs are averaged over them.
    """
    from longtail.progress import progress_bar

    device = resolve_device(device) if not isinstance(device, torch.device) else device
    size = spec.size
    transform = decode_transform(size + 24, spec.mean, spec.std, spec.interpolation) if tte else test_transform(spec)
    norm = Normalize(spec.mean, spec.std).to(device)
    loader = DataLoader(DecodedImages(dataset, transform), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    out: list[Tensor] = []
    labels: list[Tensor] = []
    for images, y in progress_bar(loader, desc="predict", unit="batch", enabled=progress, leave=False):
        x = norm(norm.to_float(images.to(device, non_blocking=True)))
        with autocast(device, precision):
            if tte:
                z = forward(five_crops(x, size).flatten(0, 1)).float().view(5, x.shape[0], -1).mean(0)
            else:
                z = forward(x).float()
        out.append(z.cpu())
        labels.append(y)
    return torch.cat(out).numpy().astype(np.float32), torch.cat(labels).numpy()


def predict_logits(model: nn.Module, dataset, batch_size: int = 256, tte: bool = False,
                   device: str | torch.device = "auto", num_workers: int = 0,
                   precision: str = "auto", progress: bool = False) -> np.ndarray:
    """(N, C) float32 prediction logits (z_hat) of a FineTuneModel, in eval mode."""
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    was_training = model.training
    model.eval().to(device)
    try:
        logits, _ = predict(lambda x: model(x)["z_hat"], dataset, model.input_spec, batch_size, device,
                            num_workers, precision, tte, progress)
    finally:
        model.train(was_training)
    return logits


def evaluation_logits(model: nn.Module, cfg: Any, dataset, device: str | torch.device = "auto",
                      progress: bool = False, tte: bool | None = None) -> np.ndarray:
    """(N, C) logits for a run's metrics (tte: cfg.tte) and validation (tte=False): from the
    frozen-prefix cache of the images where the run trains from it (`prefix.cached_logits`),
    else `predict_logits`."""
    from longtail.methods.finetune.prefix import cached_logits

    tte = cfg.tte if tte is None else tte
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    was_training = model.training
    try:
        logits = None if tte else cached_logits(model, cfg, dataset, device, cfg.precision)
    finally:
        model.train(was_training)
    if logits is not None:
        return logits
    return predict_logits(model, dataset, batch_size=cfg.eval_batch_size, tte=tte, device=device,
                          num_workers=cfg.num_workers, precision=cfg.precision, progress=progress)


def frozen_features(backbone: nn.Module, dataset, cfg: Any, device) -> tuple[Tensor, Tensor]:
    """Frozen-backbone features of a dataset with the test transform (for class-mean init)."""
    backbone.eval().to(device)
    feats, labels = predict(backbone.forward_features, dataset, input_spec(backbone, cfg), cfg.eval_batch_size,
                            device, cfg.num_workers, cfg.precision)
    return torch.from_numpy(feats), torch.from_numpy(labels)
