"""benchmarks/deployment.py (label-shift correction and the reject option at deployment): its
--smoke mode runs end to end on synthetic features, and its resampling / verdict helpers do
what the protocol says."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "deployment.py"
STATUSES = {"met", "missed", "equal within noise"}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("deployment_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["deployment_bench"] = module  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("deployment_bench", None)


def test_smoke_runs_end_to_end(bench, tmp_path):
    out = tmp_path / "deployment_smoke.json"
    info = bench.main(["--smoke", "--seeds", "2", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["smoke"] is True and saved["seeds"] == 2
    assert out.with_suffix(".md").read_text().count("| balanced (no correction) |") == 2  # both probes
    (data,) = info["datasets"]
    assert [p["probe"] for p in data["probes"]] == ["cosine + LA (default)", "linear CE + post-hoc LA"]
    for probe in data["probes"]:
        assert probe["temperature"] > 0
        for prior in bench.PRIORS:
            res = probe["priors"][prior]
            assert set(bench.ROWS) <= set(res["accuracy"])
            for row in bench.ROWS:
                acc = res["accuracy"][row]
                assert len(acc["values"]) == 2 and 0.0 <= acc["mean"] <= 1.0
            assert res["goal"]["status"] in STATUSES
        for rule in probe["reject"].values():
            assert abs(rule["coverage"]["mean"] - 0.9) < 0.1  # thresholds fitted on validation for 90 %
            assert rule["goal_error_fall"]["status"] in STATUSES
            assert rule["goal_group_rates"]["status"] in STATUSES
            assert 0.0 <= rule["aurc"]["mean"] <= 1.0


def test_deployment_sets_follow_the_prior_and_cycle_the_pool(bench):
    labels = np.repeat(np.arange(3), [4, 4, 4])
    idx = bench.draw_set(labels, np.array([0.8, 0.2, 0.0]), np.random.default_rng(0))
    assert idx.size == 12 and not (labels[idx] == 2).any()
    head = idx[labels[idx] == 0]
    counts = np.bincount(head, minlength=4)[:4]
    assert counts.max() - counts.min() <= 1  # every image once before any repeats
    priors = bench.deployment_priors(np.array([100, 10, 50]))
    assert np.allclose(priors["reversed"], np.array([10, 100, 50]) / 160)  # counts handed out in reverse rank
    assert np.allclose(priors["balanced"], 1 / 3)


def test_verdict_rule(bench):
    rng = np.random.default_rng(0)
    clusters = np.arange(2000)
    assert bench.verdict(rng.normal(0.1, 0.5, 2000), clusters)["status"] == "met"
    assert bench.verdict(rng.normal(-0.1, 0.5, 2000), clusters)["status"] == "missed"
    assert bench.verdict(rng.normal(0.0, 0.5, 20), clusters[:20])["status"] == "equal within noise"
    d = rng.normal(0.0, 1.0, 100)
    dup = np.repeat(d, 4)  # every image four times: the same information, the same SE (up to dof)
    assert bench.cluster_se(dup, np.repeat(np.arange(100), 4)) == pytest.approx(bench.cluster_se(d, np.arange(100)),
                                                                                 rel=1e-9)
