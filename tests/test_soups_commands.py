"""`longtail soup` / `longtail monosoup` on safetensors files, recipes, and fit runs (slow)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from longtail.cli import main
from longtail.soups.merge import save_state_dict
from longtail.soups.monosoup import MonoSoupConfig, monosoup
from tests.conftest import copy_runs


def _write(tmp_path, n=3):
    files = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        state = {"layer.q_proj.weight": torch.randn(4, 4, generator=g), "layer.k_proj.weight": torch.randn(4, 4, generator=g),
                 "layer.v_proj.weight": torch.randn(4, 4, generator=g), "layer.bias": torch.randn(4, generator=g)}
        files.append(save_state_dict(state, tmp_path / f"m{i}.safetensors"))
    return files


def test_soup_uniform_weighted_and_never_overwrite(tmp_path, capsys):
    files = _write(tmp_path)
    assert main(["soup", *map(str, files), "--out", str(tmp_path / "u")]) == 0
    assert main(["soup", *map(str, files), "--out", str(tmp_path / "quiet"), "--no-report"]) == 0
    assert (tmp_path / "u" / "report.html").is_file() and not (tmp_path / "quiet" / "report.html").exists()
    states = [load_file(f) for f in files]
    out = load_file(tmp_path / "u" / "model.safetensors")
    torch.testing.assert_close(out["layer.bias"], sum(s["layer.bias"] for s in states) / 3)
    log = json.loads((tmp_path / "u" / "soup_log.json").read_text())
    assert log["soups"]["soup"]["weights"] == pytest.approx([1 / 3] * 3)
    assert main(["soup", "-m", "weighted", *map(str, files), "--weights", "1", "0", "3",
                 "--out", str(tmp_path / "w")]) == 0
    out = load_file(tmp_path / "w" / "model.safetensors")
    torch.testing.assert_close(out["layer.bias"], 0.25 * states[0]["layer.bias"] + 0.75 * states[2]["layer.bias"])
    assert main(["soup", *map(str, files), "--out", str(tmp_path / "u")]) == 2  # exists: refused
    assert "already exists" in capsys.readouterr().err
    assert main(["soup", "-m", "wise", str(files[0]), "--out", str(tmp_path / "x")]) == 2  # no base
    assert main(["soup", "-m", "uniform", str(files[0]), "--lam", "0.3", "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_recipe_and_wise_sweep(tmp_path):
    files = _write(tmp_path)
    (tmp_path / "soup.yaml").write_text(
        "method: recursive\nbase: m0.safetensors\ningredients:\n  - m1.safetensors\n  - m2.safetensors\n"
        "parameters: {lam: 0.5}\n")
    assert main(["soup", "--recipe", str(tmp_path / "soup.yaml"), "--out", str(tmp_path / "r")]) == 0
    s = [load_file(f) for f in files]
    out = load_file(tmp_path / "r" / "model.safetensors")
    torch.testing.assert_close(out["layer.bias"], 0.25 * s[0]["layer.bias"] + 0.25 * s[1]["layer.bias"] + 0.5 * s[2]["layer.bias"])
    (tmp_path / "bad.yaml").write_text("method: uniform\ningredient: [m1.safetensors]\n")
    assert main(["soup", "--recipe", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "b")]) == 2
    assert main(["soup", "-m", "wise", str(files[1]), "--base", str(files[0]), "--alpha", "0", "1",
                 "--out", str(tmp_path / "ws")]) == 0
    a0 = load_file(tmp_path / "ws" / "wise_alpha_0" / "model.safetensors")
    a1 = load_file(tmp_path / "ws" / "wise_alpha_1" / "model.safetensors")
    assert torch.equal(a0["layer.bias"], s[0]["layer.bias"]) and torch.equal(a1["layer.bias"], s[1]["layer.bias"])


def test_monosoup_command_matches_library(tmp_path):
    w0, w1 = _write(tmp_path, 2)
    assert main(["monosoup", "--w0", str(w0), "--w1", str(w1), "--device", "cpu", "--out", str(tmp_path / "m")]) == 0
    out = load_file(tmp_path / "m" / "model.safetensors")
    expected, log = monosoup(load_file(w0), load_file(w1), MonoSoupConfig(device="cpu"))
    assert all(torch.equal(out[k], expected[k]) for k in expected)
    saved = json.loads((tmp_path / "m" / "monosoup_log.json").read_text())
    assert len(saved) == len(log) == 2 and len(saved[0]["tensors"]) == 3  # q/k/v stacked + bias


def test_soups_of_fit_runs_with_evaluation(tiny_runs, tmp_path):
    """The shared tiny runs (copied: write_report rewrites a run's page): a greedy soup of two
    fit runs with 3 held-out images per class, evaluated; a MonoSoup of a fit run, evaluated."""
    ft0, ft1, g, mono = copy_runs(tiny_runs, tmp_path, "ft0", "ft1", "soup", "mono")
    rows = json.loads((g / "comparison.json").read_text())
    assert [r["name"] for r in rows] == ["ingredient ft0", "ingredient ft1", "soup"]
    assert all(r["head_tail_ratio"] is not None for r in rows)
    decisions = [json.loads(x) for x in (g / "greedy.jsonl").read_text().splitlines()]
    scores = [d["score"] for d in decisions if d["step"] == "score"]
    assert decisions[-1]["score"] >= max(scores)
    assert (g / "model_config.json").exists()  # the soup folder loads like a fit run
    from longtail.eval.report import write_report
    from longtail.methods.finetune import RunModel
    from longtail.methods.run_kinds import evaluate_run
    from longtail.runs import load_run
    from longtail.soups.merge import load_state_dict

    # `longtail eval` of the soup (whole test split, not only the non-held-out part) = the
    # soup weights loaded into ingredient ft0's model; the soup folder is a full run
    again = RunModel(ft0, "cpu").metrics(load_state_dict(g))
    assert evaluate_run(g)["class_mean"] == pytest.approx(again["class_mean"])
    assert load_run(g)["config"]["kind"] == "soup"
    for name in ("metrics.json", "per_class.csv", "report.html", "data_stats.json", "env.json"):
        assert (g / name).is_file(), name
    (g / "report.html").unlink()
    assert write_report(g).is_file()
    # a soup of fit runs is soupable again, like a fit run (a uniform soup, evaluated)
    assert main(["soup", str(g), str(ft1), "--eval", "--device", "cpu", "--out", str(tmp_path / "g2")]) == 0
    assert load_run(tmp_path / "g2")["config"]["kind"] == "soup"
    assert [r["name"] for r in json.loads((tmp_path / "g2" / "comparison.json").read_text())] == [
        "ingredient soup", "ingredient ft1", "soup"]
    rows = json.loads((mono / "comparison.json").read_text())
    assert rows[0]["all"] == pytest.approx(json.loads((ft0 / "metrics.json").read_text())["all"])
    assert evaluate_run(mono)["all"] == pytest.approx(rows[1]["all"])
    assert (mono / "report.html").is_file() and (mono / "per_class.csv").is_file()
