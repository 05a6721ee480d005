"""Device selection: GPU when present, CPU otherwise."""

from __future__ import annotations

import torch

from longtail.errors import ConfigError


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """'auto' picks CUDA when available; anything else is passed to torch.device."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"unknown device '{name}'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available")
    return device


def autocast(device: torch.device, precision: str):
    """Mixed precision on CUDA per `precision` (auto: bf16 if supported, else fp16); off on CPU."""
    if device.type != "cuda" or precision == "no":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.float16 if precision == "fp16" or not torch.cuda.is_bf16_supported() else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype)
