"""benchmarks/predict_speed.py --smoke runs end to end (tiny CLIP, generated images, seconds)."""

import importlib.util
from pathlib import Path

import pytest


def test_predict_speed_benchmark_smoke(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "cache"))
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "predict_speed.py"
    spec = importlib.util.spec_from_file_location("predict_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--smoke", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "longtail predict (probe run, CSV)" in out and "onnx int8" in out
