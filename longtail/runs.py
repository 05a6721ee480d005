"""Run folders: every run writes a new folder with its config, environment, data statistics,
metrics and weights; nothing is overwritten and a failed run leaves nothing half-written.
"""

from __future__ import annotations

import csv
import datetime as _dt
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from longtail.errors import ConfigError, DataError
from longtail.io import PathClaim, atomic_path, read_json, read_yaml, write_json, write_yaml

DEFAULT_ROOT = Path("runs")
FORMAT_VERSION = 2  # of config.yaml; bump with a migration in `load_run` when the layout changes
_PACKAGES = (
    "longtail", "torch", "numpy", "transformers", "peft", "accelerate", "safetensors",
    "datasets", "kornia", "scipy", "scikit-learn", "pillow",
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
    while path.exists() or _staging(path).exists() or path.with_name(f".{path.name}.lock").exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def _staging(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


class Run:
    """A run folder. With `staged=True` files go to a hidden '.NAME.partial' folder that is
    renamed to NAME by `finish()`, so an interrupted or failed run leaves no half-written run.
    Long jobs that must resume (fine-tuning) use `staged=False` and record their status."""

    def __init__(self, folder: Path, staged: bool, claim: PathClaim | None = None) -> None:
        self.folder = folder
        self.staged = staged
        self.dir = _staging(folder) if staged else folder
        self.finished = False
        self.claim = claim  # this process's exclusive claim on `folder` (None: another rank's)

    def release(self) -> None:
        """Give up the claim on the folder (another process may then write it)."""
        if self.claim is not None:
            self.claim.release()

    def path(self, name: str) -> Path:
        return self.dir / name

    def write_json(self, name: str, obj: Any) -> Path:
        return write_json(self.path(name), obj)

    def write_yaml(self, name: str, obj: Any) -> Path:
        return write_yaml(self.path(name), obj)

    def finish(self, metrics: dict[str, Any] | None = None) -> Path:
        """Write metrics.json (+ per_class.csv), mark the run finished and publish the folder."""
        if metrics is not None:
            self.write_json("metrics.json", metrics)
            write_per_class_csv(self.path("per_class.csv"), metrics.get("per_class") or [],
                                metrics.get("class_scores"))
        status = {"status": "finished", "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        self.write_json("status.json", status)
        if self.staged:
            if self.folder.is_dir() and not any(self.folder.iterdir()):
                self.folder.rmdir()  # an empty folder given as --out is accepted
            if self.folder.exists():
                raise DataError(f"run folder appeared while running, not overwritten: {self.folder}")
            self.dir.rename(self.folder)
            self.dir = self.folder
        self.finished = True
        self.release()
        return self.folder

    def abort(self) -> None:
        """Drop a staged run's partial folder (failed runs leave nothing behind)."""
        if self.staged and not self.finished and self.dir.exists():
            shutil.rmtree(self.dir)
        self.release()

    def mark(self, status: str, error: str | None = None) -> None:
        """Record an unfinished unstaged run's status ('running', 'interrupted' or 'failed',
        with the one-line error) in status.json; a finished or vanished run is left alone."""
        if self.staged or self.finished or not self.dir.is_dir():
            return
        record = {"status": status, "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        if error is not None:
            record["error"] = error
        self.write_json("status.json", record)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """A staged run that raised is dropped; an unstaged one (kept for --resume) records
        'interrupted' (KeyboardInterrupt, SystemExit) or 'failed' with the error's first line."""
        if exc_type is None:
            return
        if self.staged:
            self.abort()
        elif issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
            self.mark("interrupted")
        else:
            lines = str(exc).strip().splitlines()
            self.mark("failed", f"{exc_type.__name__}: {lines[0] if lines else ''}".rstrip(": "))
        self.release()


def create_run(
    out: str | Path | None,
    kind: str,
    config: Any,
    *,
    seed: int | None = None,
    device: str | None = None,
    staged: bool = True,
    resume: bool = False,
    claim: bool = True,
) -> Run:
    """Create a new run folder at `out` (default runs/KIND-TIMESTAMP) with config.yaml and env.json.

    An existing non-empty `out` is an error unless `resume=True` (and the run is unstaged; its
    config.yaml then records `config`, the resumed invocation's, which the caller checked). The
    process claims `out` first (`io.PathClaim`): a second process given the same `out` while this
    one runs fails at once with one line, and only the claim holder removes a dead run's staging
    leftovers. `claim=False`: the folder is already claimed by another rank of this job."""
    folder, owner = _claimed_folder(out, kind) if claim else (Path(out), None)
    try:
        if folder.exists() and any(folder.iterdir()):
            if not resume:
                raise ConfigError(f"run folder already exists, not overwritten: {folder} (choose another --out)")
            if staged:
                raise ConfigError("resume needs an unstaged run")
            run = Run(folder, staged=False, claim=owner)
            if owner is not None:  # the config of the latest invocation (the caller checked what may change)
                write_config(run, kind, config)
            run.mark("running")
            return run
        run = Run(folder, staged=staged, claim=owner)
        if run.dir.exists():  # leftovers of an interrupted staged run (its process is gone: we hold the claim)
            shutil.rmtree(run.dir)
        run.dir.mkdir(parents=True, exist_ok=not staged)
        write_config(run, kind, config)
        run.write_json("env.json", environment(seed=seed, device=device))
        if not staged:
            run.write_json("status.json", {"status": "running"})
        return run
    except BaseException:
        if owner is not None:
            owner.release()
        raise


def write_config(run: Run, kind: str, config: Any) -> Path:
    """config.yaml: the run's kind, the format version and its config (the one writer)."""
    return run.write_yaml("config.yaml", {"kind": kind, "format_version": FORMAT_VERSION, **config_dict(config)})


def _claimed_folder(out: str | Path | None, kind: str) -> tuple[Path, PathClaim]:
    """(folder, this process's claim on it): `out`, or the first free runs/KIND-TIMESTAMP[-i]."""
    if out is not None:
        return Path(out), PathClaim(out, "run folder")
    for _ in range(100):
        folder = _default_folder(DEFAULT_ROOT, kind)
        try:
            return folder, PathClaim(folder, "run folder")
        except ConfigError:  # another process took this name in the same second
            continue
    raise ConfigError(f"could not claim a new run folder under {DEFAULT_ROOT}; pass --out")


def load_run(folder: str | Path) -> dict[str, Any]:
    """Read a finished run's config, metrics and stats (what eval/report need)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"run folder not found: {folder}")
    if not (folder / "config.yaml").exists():
        raise DataError(f"{folder} is not a longtail run (no config.yaml)")
    config = read_yaml(folder / "config.yaml")
    if not isinstance(config, dict) or "kind" not in config:
        raise DataError(f"{folder / 'config.yaml'} records no run kind; not a longtail run")
    version = config.setdefault("format_version", 0)  # 0: written before versions; same layout
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DataError(f"{folder}: config format_version {version} is newer than this longtail "
                        f"understands ({FORMAT_VERSION}); upgrade longtail")
    out: dict[str, Any] = {"folder": folder, "config": config}
    for name in ("metrics", "env", "data_stats", "status"):
        p = folder / f"{name}.json"
        out[name] = read_json(p) if p.exists() else None
    return out


def write_per_class_csv(path: Path, per_class: list[dict[str, Any]],
                        scores: dict[str, list[Any]] | None = None) -> None:
    """per_class.csv: one row per class (name, train count, group, test count, then, where the
    metrics have `class_scores`, times predicted, precision, recall and F1; accuracy last, as
    before). Accuracy is empty for a class without test images; precision / recall / F1 follow
    scikit-learn's zero_division=0."""
    if not per_class:
        return
    scores = scores or {}
    extra = [k for k in ("n_predicted", "precision", "recall", "f1") if len(scores.get(k) or ()) == len(per_class)]
    rows = [{**{k: v for k, v in row.items() if k != "accuracy"}, **{k: scores[k][i] for k in extra},
             "accuracy": row.get("accuracy")} for i, row in enumerate(per_class)]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# ----------------------------------------------------------------------------- legacy


@dataclass(frozen=True)
class RunKind:
    """Deprecated: what `register_kind` took. The run kinds are the explicit table
    `longtail.methods.run_kinds.RUN_KINDS`; this class and `register_kind` stay only so that the
    registration line in `methods/finetune/__init__.py` keeps importing until it is deleted."""

    name: str
    evaluate: Callable[[dict[str, Any], str | None], dict[str, Any]]
    load_config: Callable[[dict[str, Any]], Any] | None = None
    description: str = ""


def register_kind(kind: RunKind) -> RunKind:
    """Deprecated no-op (see `RunKind`): nothing reads a registry of run kinds any more."""
    return kind
