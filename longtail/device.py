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


# ----------------------------------------------------------------------- memory budgets
AUTO_SHARE = 0.5  # memory=auto: this share of what is free now (RAM, or the GPU's memory)
_UNITS = {"": 1, "B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def available_memory(device: torch.device | str) -> int:
    """Bytes free now: the GPU's free memory for a CUDA device, else the OS's MemAvailable
    (/proc/meminfo; the whole RAM size where that file does not exist)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def parse_memory(spec: str | int | float) -> int | None:
    """A memory budget in bytes from 'auto' (None: decided on the device at run time), a number
    of bytes, or a size such as '4GB', '512MB', '1.5GiB' (binary units either way)."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        value = float(spec)
    elif isinstance(spec, str) and spec.strip().lower() == "auto":
        return None
    elif isinstance(spec, str):
        text = spec.strip().upper().replace(" ", "")
        number = text.rstrip("KMGTIB")
        unit = text[len(number):]
        try:
            value = float(number) * _UNITS[unit]
        except (KeyError, ValueError):
            raise ConfigError(f"memory must be 'auto' or a size such as 4GB or 512MB, got {spec!r}") from None
    else:
        raise ConfigError(f"memory must be 'auto' or a size such as 4GB or 512MB, got {spec!r}")
    if not value >= 2**10:
        raise ConfigError(f"memory must be at least 1KB, got {spec!r}")
    return int(value)


def memory_budget(spec: str | int | float, device: torch.device | str) -> int:
    """Bytes a computation on `device` may use for its work arrays: the parsed `spec`, or
    AUTO_SHARE of the memory free now for 'auto'."""
    parsed = parse_memory(spec)
    return parsed if parsed is not None else int(AUTO_SHARE * available_memory(device))
