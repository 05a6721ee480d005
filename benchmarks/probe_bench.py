"""What the two real-data probe benchmarks (`real_cifar10_lt.py`, `real_tiny100_lt.py`) share:
fitting their rows on the same features and saving their results."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from longtail.methods.probe import ProbeConfig, fit_probe


def fit_rows(configs: list[tuple[str, ProbeConfig]], train, val, test_features: np.ndarray,
             score: Callable[[str, np.ndarray, float], dict], no_val: set[str] = frozenset()) -> list[dict]:
    """Fit every (label, config) on `train` with validation `val` (None for the labels in `no_val`)
    and score its test logits: `score(label, logits, fit seconds)` -> the row; an auto row also
    records what it chose."""
    results = []
    for label, cfg in configs:
        start = time.perf_counter()
        probe = fit_probe(train, cfg, None if label in no_val else val)
        logits = probe.logits(test_features)
        results.append(score(label, logits, time.perf_counter() - start))
        print(f"  {label}: {100 * results[-1]['all']:.2f} ({results[-1]['fit_seconds']:.1f}s)", flush=True)
        if "auto" in probe.info:
            results[-1]["auto_choice"] = probe.info["auto"].get("chosen")
            print(f"    chose {results[-1]['auto_choice']}", flush=True)
    return results


def save_results(out: str | Path, info: dict, table: str) -> Path:
    """The results JSON at `out` and the markdown table beside it (.md)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=2, default=str))
    out.with_suffix(".md").write_text(table + "\n")
    return out
