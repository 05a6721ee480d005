"""`longtail predict`'s file: a run's predictions for many images, streamed in resumable shards.

Images are scored in shards of `shard_size` (each shard's logits and per-image read status
saved atomically under a hidden '.FILE.shards' folder), so an interrupted run continues where
it stopped and gives the same bytes; the deployment prior and the reject option are applied
once every logit is known (the prior may be estimated from all of them); the table is written
atomically and never over an existing file. Columns: path, label, score, status, then
label_1, prob_1, ... label_k, prob_k (probabilities after the prior).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from longtail.data.features import FeatureSet
from longtail.data.images import ImageDataset
from longtail.errors import ConfigError
from longtail.io import PathClaim, atomic_path, check_writable, write_json, write_text
from longtail.methods.predictor import Predictor

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}


def check_outputs(out: str | Path, logits_out: str | Path | None = None) -> Path:
    """Refuse, before any work, an output that exists, is of an unknown type or cannot be written."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise ConfigError(f"--out {out}: unknown table type '{out.suffix}' (use {', '.join(FORMATS)})")
    for path, flag in ((out, "--out"), (logits_out, "--logits")):
        if path is None:
            continue
        if Path(path).exists():
            raise ConfigError(f"{flag} {path} exists, not overwritten")
        check_writable(path, flag, folder=False)
    if logits_out is not None and Path(logits_out).suffix != ".npz":
        raise ConfigError(f"--logits {logits_out}: must be a .npz file")
    if out.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as err:
            raise ConfigError("--out *.parquet needs pyarrow (pip install pyarrow)") from err
    return out


def predict_to_file(predictor: Predictor, images: ImageDataset | FeatureSet, out: str | Path, *, top_k: int = 5,
                    prior: str | None = None, reject: str | None = None, logits_out: str | Path | None = None,
                    shard_size: int = 1024, progress: bool = True) -> dict[str, Any]:
    """Score `images` (or precomputed features of them) with the run, write the table `out` (+ the
    raw logits, the prior used); return a summary (images, ok, unreadable, rejected, prior)."""
    out = check_outputs(out, logits_out)
    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    if reject is not None:
        predictor.thresholds(reject, None)  # a bad rule or a run without validation fails before any image
    claim = PathClaim(out, "--out")
    try:
        if isinstance(images, FeatureSet):
            if predictor.feature_logits is None:
                raise ConfigError(f"{predictor.folder}: --features is for probe runs; give images with --data")
            logits, reasons = predictor.feature_logits(images), [None] * images.num_samples
            images = _FeatureRows(images.source, images.num_samples)
        else:
            logits, reasons = _scored(predictor, images, out, shard_size, progress)
        rows, target, prior_record, reject_record = predictor.table(
            logits, reasons, [images.describe(i) for i in range(len(images))], top_k, prior, reject)
        ok = np.array([r is None for r in reasons])
        _write_table(out, rows)
        if target is not None and prior is not None:
            write_text(prior_path(out), "class,weight\n" + "".join(
                f"{_csv_cell(n)},{w:.8g}\n" for n, w in zip(predictor.class_names, target)))
        if logits_out is not None:
            with atomic_path(logits_out) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, logits=logits, ok=ok, paths=np.asarray([images.describe(i) for i in range(len(images))]),
                         class_names=np.asarray(predictor.class_names))
        shutil.rmtree(_shard_dir(out), ignore_errors=True)
    finally:
        claim.release()
    rejected = sum(1 for r in rows if r["status"].startswith("rejected"))
    return {"images": len(images), "ok": int(ok.sum()), "unreadable": int((~ok).sum()), "rejected": rejected,
            "prior": prior_record, "reject": reject_record, "out": str(out)}


def prior_path(out: Path) -> Path:
    """Where the prior used for `out` is written (class,weight CSV)."""
    return out.with_name(f"{out.name}.prior.csv")


def _shard_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.shards")


def _scored(predictor: Predictor, images: ImageDataset, out: Path, shard_size: int,
            progress: bool) -> tuple[np.ndarray, list[str | None]]:
    """(raw logits (N, C) with NaN rows for unreadable images, per-image reason or None), from the
    shards of an interrupted run where they match this run and these images."""
    from longtail.progress import progress_bar

    folder = _shard_dir(out)
    identity = {"run": str(predictor.folder.resolve()), "images": _images_digest(images),
                "shard_size": shard_size, "classes": len(predictor.class_names)}
    manifest = folder / "manifest.json"
    if folder.exists() and (not manifest.is_file() or json.loads(manifest.read_text()) != identity):
        shutil.rmtree(folder)  # another run's or other images' shards (we hold the claim on `out`)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(manifest, identity)
    starts = range(0, len(images), shard_size)
    done = sum(1 for s in starts if (folder / f"{s:09d}.npz").is_file())
    logits, reasons = [], []
    bar = progress_bar(total=len(images), desc="predict", unit="image", enabled=progress,
                       initial=min(done * shard_size, len(images)))
    for start in starts:
        path = folder / f"{start:09d}.npz"
        if not path.is_file():
            part = images.subset(np.arange(start, min(start + shard_size, len(images))))
            z, why = predictor.score(part)
            with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, logits=z, reasons=np.asarray([w or "" for w in why]))
            bar.update(len(part))
        with np.load(path, allow_pickle=False) as shard:
            logits.append(shard["logits"])
            reasons += [str(r) or None for r in shard["reasons"]]
    bar.close()
    return np.concatenate(logits), reasons


class _FeatureRows:
    """Rows of a feature file, named FILE#i."""

    def __init__(self, source: str, n: int) -> None:
        self.source, self.n = source, n

    def __len__(self) -> int:
        return self.n

    def describe(self, i: int) -> str:
        return f"{self.source}#{i}"


def _images_digest(images: ImageDataset) -> str:
    h = hashlib.sha256(images.reader.identity().encode())
    h.update("\n".join(map(str, images.items.tolist())).encode())
    return h.hexdigest()[:20]


def _csv_cell(text: str) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([text])
    return buffer.getvalue()


def _write_table(out: Path, rows: list[dict[str, Any]]) -> None:
    kind = FORMATS[out.suffix.lower()]
    with atomic_path(out) as tmp:
        if kind == "csv":
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
                writer.writeheader()
                writer.writerows({k: "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)
                                  for k, v in row.items()} for row in rows)
        elif kind == "jsonl":
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(row) + "\n" for row in rows)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), tmp)
