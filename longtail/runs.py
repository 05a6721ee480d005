"""Run folders: every run writes a new folder with its config, environment, data statistics,
metrics and weights; nothing is overwritten and a failed run leaves nothing half-written.
"""

from __future__ import annotations

import datetime as _dt
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from longtail.errors import ConfigError, DataError
from longtail.io import read_json, read_yaml, write_json, write_yaml

DEFAULT_ROOT = Path("runs")
_PACKAGES = (
    "longtail", "torch", "numpy", "transformers", "peft", "accelerate", "safetensors",
    "datasets", "kornia", "torchmetrics", "scipy", "scikit-learn", "pillow",
)


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a run's result depends on."""
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return res.stdout.strip() or None if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(seed: int | None = None, device: str | None = None) -> dict[str, Any]:
    """What env.json records: versions, platform, device, seed, command line."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "seed": seed,
        "device": device,
        "cuda_available": cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": __import__("os").cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "packages": package_versions(),
        "git_commit": _git_commit(),
        "argv": sys.argv,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def config_dict(config: Any) -> dict[str, Any]:
    """A dataclass (possibly nested) or mapping as a plain dict."""
    if is_dataclass(config) and not isinstance(config, type):
        return asdict(config)
    return dict(config)


def _default_folder(root: Path, kind: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = root / f"{kind}-{stamp}"
    path, i = base, 1
    while path.exists() or _staging(path).exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def _staging(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


class Run:
    """A run folder. With `staged=True` files go to a hidden '.NAME.partial' folder that is
    renamed to NAME by `finish()`, so an interrupted or failed run leaves no half-written run.
    Long jobs that must resume (fine-tuning) use `staged=False` and record their status."""

    def __init__(self, folder: Path, staged: bool) -> None:
        self.folder = folder
        self.staged = staged
        self.dir = _staging(folder) if staged else folder
        self.finished = False

    def path(self, name: str) -> Path:
        return self.dir / name

    def write_json(self, name: str, obj: Any) -> Path:
        return write_json(self.path(name), obj)

    def write_yaml(self, name: str, obj: Any) -> Path:
        return write_yaml(self.path(name), obj)

    def finish(self, metrics: dict[str, Any] | None = None) -> Path:
        """Write metrics.json, mark the run finished and publish the folder."""
        if metrics is not None:
            self.write_json("metrics.json", metrics)
        status = {"status": "finished", "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        self.write_json("status.json", status)
        if self.staged:
            if self.folder.exists():
                raise DataError(f"run folder appeared while running, not overwritten: {self.folder}")
            self.dir.rename(self.folder)
            self.dir = self.folder
        self.finished = True
        return self.folder

    def abort(self) -> None:
        """Drop a staged run's partial folder (failed runs leave nothing behind)."""
        if self.staged and not self.finished and self.dir.exists():
            shutil.rmtree(self.dir)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def create_run(
    out: str | Path | None,
    kind: str,
    config: Any,
    *,
    seed: int | None = None,
    device: str | None = None,
    staged: bool = True,
    resume: bool = False,
) -> Run:
    """Create a new run folder at `out` (default runs/KIND-TIMESTAMP) with config.yaml and env.json.

    An existing `out` is an error unless `resume=True` (and the run is unstaged)."""
    folder = _default_folder(DEFAULT_ROOT, kind) if out is None else Path(out)
    if folder.exists() and any(folder.iterdir()):
        if not resume:
            raise ConfigError(f"run folder already exists, not overwritten: {folder} (choose another --out)")
        if staged:
            raise ConfigError("resume needs an unstaged run")
        return Run(folder, staged=False)
    run = Run(folder, staged=staged)
    if run.dir.exists():  # leftovers of an interrupted staged run
        shutil.rmtree(run.dir)
    run.dir.mkdir(parents=True)
    cfg = config_dict(config)
    run.write_yaml("config.yaml", {"kind": kind, **cfg})
    run.write_json("env.json", environment(seed=seed, device=device))
    if not staged:
        run.write_json("status.json", {"status": "running"})
    return run


def load_run(folder: str | Path) -> dict[str, Any]:
    """Read a finished run's config, metrics and stats (what eval/report need)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"run folder not found: {folder}")
    if not (folder / "config.yaml").exists():
        raise DataError(f"{folder} is not a longtail run (no config.yaml)")
    out: dict[str, Any] = {"folder": folder, "config": read_yaml(folder / "config.yaml")}
    for name in ("metrics", "env", "data_stats", "status"):
        p = folder / f"{name}.json"
        out[name] = read_json(p) if p.exists() else None
    return out
