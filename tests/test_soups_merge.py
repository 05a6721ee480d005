"""Linear merges: coefficients (docs/methods.md §2.7), streaming from safetensors, greedy soup."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from longtail.errors import ConfigError, DataError, UnknownNameError
from longtail.soups.greedy import greedy_soup
from longtail.soups.merge import (
    load_state_dict,
    merge,
    merge_coefficients,
    recursive_weights,
    save_state_dict,
)


def _model(seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "enc.weight": torch.randn(6, 5, generator=g).to(dtype),
        "enc.bias": torch.randn(6, generator=g).to(dtype),
        "head.weight": torch.randn(3, 6, generator=g).to(dtype),
        "position_ids": torch.arange(4).unsqueeze(0),
    }


@pytest.mark.parametrize("method,params,has_base", [
    ("uniform", {}, False), ("weighted", {"weights": [1, 2, 3, 4, 5, 6, 7]}, False),
    ("recursive", {"lam": 0.7}, True), ("recursive", {"lam": 0.3}, False), ("wise", {"alpha": 0.4}, True),
])
def test_weights_sum_to_one(method, params, has_base):
    assert merge_coefficients(method, 7, has_base, **params).total == pytest.approx(1.0, abs=1e-12)


def test_recursive_closed_form_matches_methods_table():
    c = recursive_weights(7, True, 0.7)
    expected = [0.00051, 0.0017, 0.0057, 0.0189, 0.063, 0.21, 0.70]
    np.testing.assert_allclose(c.ingredients, expected, rtol=0.03)
    assert c.base == pytest.approx(0.3**7)


def test_recursive_equals_training_path_loop():
    models = [_model(i) for i in range(4)]
    base = _model(99)
    soup = {k: v.clone() for k, v in base.items()}
    for m in models:  # the reference training loop: soup <- (1 - lam) soup + lam theta_i
        soup = {k: (0.3 * soup[k] + 0.7 * m[k]) if v.is_floating_point() else v for k, v in soup.items()}
    merged, _ = merge("recursive", models, base=base, lam=0.7)
    for k in soup:
        torch.testing.assert_close(merged[k], soup[k])


def test_identical_ingredients_and_limits():
    m, base = _model(0), _model(1)
    for method, params, b in [("uniform", {}, None), ("recursive", {"lam": 0.7}, None),
                              ("weighted", {"weights": [1, 5, 2]}, None)]:
        out, _ = merge(method, [m, m, m], base=b, **params)
        for k in m:
            torch.testing.assert_close(out[k], m[k])
    models = [_model(i) for i in range(3)]
    last, _ = merge("recursive", models, base=base, lam=1.0)
    for k in base:
        torch.testing.assert_close(last[k], models[-1][k])
    tiny, _ = merge("recursive", models, base=base, lam=1e-9)
    for k in base:
        torch.testing.assert_close(tiny[k], base[k])


def test_streaming_average_equals_stacked_mean(tmp_path):
    models = [_model(i, torch.float16) for i in range(5)]
    files = [save_state_dict(m, tmp_path / f"m{i}.safetensors") for i, m in enumerate(models)]
    (tmp_path / "run").mkdir()
    save_state_dict(models[0], tmp_path / "run" / "model.safetensors")
    out, _ = merge("uniform", files[1:] + [tmp_path / "run"])
    order = models[1:] + models[:1]
    for k in models[0]:
        if k == "position_ids":
            assert torch.equal(out[k], models[0][k])
            continue
        expected = torch.stack([m[k].float() for m in order]).mean(0).to(torch.float16)
        assert out[k].dtype == torch.float16
        torch.testing.assert_close(out[k], expected, atol=1e-3, rtol=1e-3)
    assert load_state_dict(files[0]).keys() == models[0].keys()


def test_bad_inputs_raise_clear_errors(tmp_path):
    a, b = _model(0), _model(1)
    b.pop("head.weight")
    with pytest.raises(DataError, match="keys differ"):
        merge("uniform", [a, b])
    c = _model(2)
    c["head.weight"] = torch.zeros(4, 6)
    with pytest.raises(DataError, match="shape"):
        merge("uniform", [a, c])
    with pytest.raises(UnknownNameError, match="uniform"):
        merge("nope", [a])
    with pytest.raises(ConfigError, match="base"):
        merge("wise", [a])
    with pytest.raises(ConfigError, match="weights"):
        merge("weighted", [a, a], weights=[1.0])
    (tmp_path / "x.pt").write_bytes(b"junk")
    with pytest.raises(DataError, match="safetensors"):
        merge("uniform", [tmp_path / "x.pt"])
    with pytest.raises(DataError, match="no such"):
        merge("uniform", [tmp_path / "missing.safetensors"])


def test_greedy_soup_never_lowers_balanced_accuracy(tmp_path):
    target = _model(123)
    torch.manual_seed(0)
    models = [{k: (target[k] + s * torch.randn_like(target[k].float())) if target[k].is_floating_point()
               else target[k] for k in target} for s in (0.5, 3.0, 0.7, 5.0, 0.6)]

    def score(sd):  # a stand-in for balanced validation accuracy: closeness to the target
        return {"class_mean": float(1.0 / (1.0 + sum((sd[k].float() - target[k]).norm() ** 2
                                                      for k in ("enc.weight", "head.weight"))))}

    log = tmp_path / "greedy.jsonl"
    snapshot = [{k: v.clone() for k, v in m.items()} for m in models]
    res = greedy_soup(models, score, log_path=log)
    singles = [score(m)["class_mean"] for m in models]
    assert res.score >= max(singles)
    assert res.score == pytest.approx(score(res.state_dict)["class_mean"])
    assert res.members[0] == int(np.argmax(singles))
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    tries = [e for e in entries if e["step"] == "try"]
    assert len(tries) == len(models) - 1
    best = singles[res.members[0]]
    for e in tries:  # accepted exactly when the soup strictly improved
        assert e["accepted"] == (e["soup_score"] > best)
        best = max(best, e["soup_score"]) if e["accepted"] else best
    for m, s in zip(models, snapshot):  # inputs are not modified
        assert all(torch.equal(m[k], s[k]) for k in m)  # the far-off ingredient is rejected
