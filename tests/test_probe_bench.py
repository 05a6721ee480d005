"""benchmarks/probe_bench.add_paired: every benchmark row against the reference row on the same
test images, with the paired SE and the verdict rule (issue 25: tables that say how sure they are)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def probe_bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "probe_bench.py"
    spec = importlib.util.spec_from_file_location("probe_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_are_paired_with_the_reference_and_judged_by_the_rule(probe_bench):
    labels = np.repeat(np.arange(2), 4)  # two classes, four images each
    ref = labels.copy()
    ref[[0, 4]] = 1 - labels[[0, 4]]  # one error per class: 75 % each
    same = ref.copy()
    worse = (1 - labels)  # all wrong: 0 %
    rows = [{"method": "default probe", probe_bench.PRED: ref}, {"method": "twin", probe_bench.PRED: same},
            {"method": "broken", probe_bench.PRED: worse}]
    claims = probe_bench.add_paired(rows, labels, "default probe", 2, claims=(("twin", "broken"),))
    by = {r["method"]: r for r in rows}
    assert by["default probe"]["verdict"] == "reference"
    assert by["twin"]["vs_ref"] == 0 and by["twin"]["vs_ref_se"] == 0 and by["twin"]["verdict"] == "equal within noise"
    assert by["broken"]["vs_ref"] == pytest.approx(-0.75)
    # by hand: d_i = -1 on the 3 images per class the reference gets right, 0 on the other:
    # s_c^2 = var([-1, -1, -1, 0], ddof=1) = 0.25, SE = sqrt(2 * 0.25 / 4) / 2
    assert by["broken"]["vs_ref_se"] == pytest.approx(np.sqrt(2 * 0.25 / 4) / 2)
    assert by["broken"]["verdict"] == "worse"
    assert claims[0]["diff"] == pytest.approx(-0.75) and claims[0]["verdict"] == "worse"
    assert all(probe_bench.PRED not in r for r in rows)  # per-image predictions dropped after pairing


def test_claims_on_a_shot_group_with_a_goal(probe_bench):
    labels = np.repeat(np.arange(3), 4)  # class 2 is the only few-shot class
    groups = ["many", "many", "few"]
    a = labels.copy()
    a[labels == 2] = 0  # A misses every few-shot image
    b = labels.copy()
    b[[8]] = 0  # B gets three of the four
    rows = [{"method": "A", probe_bench.PRED: a}, {"method": "B", probe_bench.PRED: b}]
    claims = probe_bench.add_paired(rows, labels, "A", 3, groups=groups,
                                    claims=(("A", "B", "few", 0.5), ("A", "B", "medium"), ("A", "B", "class_mean", 0.3)))
    few, mean = claims  # no medium-shot class: that claim is left out
    # few: d = [1, 1, 1, 0] on class 2, diff 0.75, SE = sqrt(var / 4) = sqrt(0.25 / 4) = 0.25
    assert few["metric"] == "few" and few["diff"] == pytest.approx(0.75) and few["se"] == pytest.approx(0.25)
    assert few["goal_verdict"] == "equal within noise"  # 0.75 - 2 * 0.25 = 0.25 does not clear 0.5
    assert mean["diff"] == pytest.approx(0.25) and mean["goal_verdict"] == "equal within noise"
    assert "goal" not in probe_bench.add_paired(
        [{"method": "A", probe_bench.PRED: a}, {"method": "B", probe_bench.PRED: b}], labels, "A", 3,
        claims=(("A", "B"),))[0]
