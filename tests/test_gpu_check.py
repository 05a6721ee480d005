"""benchmarks/gpu_check.sh, the prepared GPU check: its shell wrapper reaches gpu_check.py, and
the check runs end to end in --smoke mode on the CPU (in this process: a fresh interpreter would
spend most of its time importing torch and transformers again)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_wrapper_runs_gpu_check_py() -> None:
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_TIMEOUT": "60", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--help"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--smoke" in done.stdout and "One prepared GPU check" in done.stdout


@pytest.mark.slow
def test_gpu_check_smoke_prints_every_figure(monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--smoke", "--device", "cpu"])
    import gpu_check

    gpu_check.main()
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["smoke"] is True
    parts = ("train_step", "efficientnet_full_ft", "feature_extraction", "probe_vs_sklearn", "vmf_sampling")
    errors = {k: result[k]["error"] for k in parts if "error" in result[k]}
    assert not errors
    assert all(result["train_step"][m]["img_s"] > 0 for m in ("lift", "sage", "bare"))
    assert result["efficientnet_full_ft"]["trainable"] > 3_000_000  # every EfficientNet-Lite0 weight trains
    assert result["probe_vs_sklearn"]["ours_s"] > 0 and result["vmf_sampling"]["samples_per_s"] > 0
