"""MonoSoup: the hand-computed diagonal cases and invariants of docs/methods.md §3.7."""

from __future__ import annotations

import pytest
import torch

from longtail.errors import ConfigError, DataError
from longtail.soups.monosoup import MonoSoupConfig, edit_matrix, lora_dense_state, monosoup

CASES = [
    ((8, 4, 2, 1, 0.5), 4, 0.057848, (7.53722, 3.76861, 1.88430, 0.94215, 0.02892)),
    ((10, 1, 0.5, 0.25), 2, 0.057900, (9.42100, 0.94210, 0.02895, 0.01447)),
    ((5, 0.1, 0.01), 2, 0.002004, (4.98998, 0.09980, 0.00002)),
    ((3, 1), 2, 0.0, (3.0, 1.0)),
]


@pytest.mark.parametrize("diag,k,lam_low,edited", CASES)
def test_diagonal_cases(diag, k, lam_low, edited):
    w0 = torch.randn(len(diag), len(diag), generator=torch.Generator().manual_seed(0))
    w1 = w0 + torch.diag(torch.tensor(diag))
    out, info = edit_matrix(w0, w1, MonoSoupConfig(precision="float64"))
    assert info["k"] == k
    assert info["lambda_low"] == pytest.approx(lam_low, abs=1e-5)
    assert info["lambda_high"] == pytest.approx(1 - lam_low, abs=1e-5)
    expected = torch.diag(torch.tensor(edited, dtype=torch.float64))
    torch.testing.assert_close((out - w0).double(), expected, atol=2e-5, rtol=0)


def test_float32_svd_matches_float64():
    g = torch.Generator().manual_seed(1)
    w0, w1 = torch.randn(20, 12, generator=g), torch.randn(20, 12, generator=g)
    a, _ = edit_matrix(w0, w1, MonoSoupConfig())
    b, _ = edit_matrix(w0, w1, MonoSoupConfig(precision="float64"))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_energy_mode_picks_smallest_k():
    w0 = torch.zeros(4, 4)
    w1 = torch.diag(torch.tensor([4.0, 2.0, 1.0, 0.5]))  # energy fractions .7529 .9412 .9647 1
    _, info = edit_matrix(w0, w1, MonoSoupConfig(mode="energy", energy=0.8, precision="float64"))
    assert info["k"] == 2
    _, info = edit_matrix(w0, w1, MonoSoupConfig(mode="energy", energy=0.7, precision="float64"))
    assert info["k"] == 1


def test_identity_rank1_and_skips():
    g = torch.Generator().manual_seed(2)
    w0 = {"a.weight": torch.randn(8, 6, generator=g), "a.bias": torch.randn(8, generator=g),
          "ln.weight": torch.randn(8, generator=g), "ids": torch.arange(6).unsqueeze(0),
          "extra.weight": torch.randn(3, 3, generator=g)}
    same, log = monosoup(w0, w0)
    assert all(torch.equal(same[k], w0[k]) for k in w0)
    assert not any(e["edited"] for e in log)
    u, v = torch.randn(8, 1, generator=g), torch.randn(1, 6, generator=g)
    w1 = {k: t.clone() for k, t in w0.items()}
    w1["a.weight"] += u @ v
    w1["a.bias"] += 1.0
    w1["new.weight"] = torch.randn(2, 2, generator=g)
    out, log = monosoup(w0, w1, MonoSoupConfig(precision="float64"))
    torch.testing.assert_close(out["a.weight"], w1["a.weight"], atol=1e-5, rtol=0)
    assert torch.equal(out["a.bias"], w1["a.bias"]) and torch.equal(out["new.weight"], w1["new.weight"])
    reasons = {e["tensors"][0]: e.get("reason") for e in log}
    assert reasons["a.bias"] == "fewer than 2 dims" and reasons["new.weight"] == "missing in W0"
    assert reasons["extra.weight"] == "relative update below threshold"
    assert list(out) == list(w1)


def test_conv_round_trip_and_dtype():
    g = torch.Generator().manual_seed(3)
    w0 = torch.randn(6, 3, 2, 2, generator=g).half()
    w1 = (w0.float() + 0.1 * torch.randn(6, 3, 2, 2, generator=g)).half()
    out, _ = edit_matrix(w0, w1, MonoSoupConfig())
    assert out.shape == w1.shape and out.dtype == torch.float16
    flat, _ = edit_matrix(w0.reshape(6, -1), w1.reshape(6, -1), MonoSoupConfig())
    assert torch.equal(out.reshape(6, -1), flat)


def test_scale_and_permutation_equivariance():
    g = torch.Generator().manual_seed(4)
    w0, delta = torch.randn(10, 7, generator=g), torch.randn(10, 7, generator=g)
    cfg = MonoSoupConfig(precision="float64")
    base, _ = edit_matrix(w0, w0 + delta, cfg)
    scaled, _ = edit_matrix(w0, w0 + 3.0 * delta, cfg)
    torch.testing.assert_close(scaled - w0, 3.0 * (base - w0), atol=1e-5, rtol=1e-5)
    rows, cols = torch.randperm(10, generator=g), torch.randperm(7, generator=g)
    perm, _ = edit_matrix(w0[rows][:, cols], (w0 + delta)[rows][:, cols], cfg)
    torch.testing.assert_close(perm, base[rows][:, cols], atol=1e-5, rtol=1e-5)


def test_qkv_stacked_vs_separate():
    g = torch.Generator().manual_seed(5)
    keys = [f"l.self_attn.{p}_proj.weight" for p in "qkv"]
    w0 = {k: torch.randn(4, 4, generator=g) for k in keys}
    w1 = {k: w0[k] + torch.randn(4, 4, generator=g) for k in keys}
    stacked, log_s = monosoup(w0, w1, MonoSoupConfig(precision="float64"))
    separate, log_p = monosoup(w0, w1, MonoSoupConfig(qkv="separate", precision="float64"))
    assert len(log_s) == 1 and log_s[0]["tensors"] == keys and len(log_p) == 3
    cat0, cat1 = torch.cat([w0[k] for k in keys]), torch.cat([w1[k] for k in keys])
    fused, _ = edit_matrix(cat0, cat1, MonoSoupConfig(precision="float64"))
    torch.testing.assert_close(torch.cat([stacked[k] for k in keys]), fused)
    alone, _ = edit_matrix(w0[keys[0]], w1[keys[0]], MonoSoupConfig(precision="float64"))
    torch.testing.assert_close(separate[keys[0]], alone)
    assert not torch.allclose(stacked[keys[0]], separate[keys[0]])


def test_lora_dense_update_has_low_rank():
    g = torch.Generator().manual_seed(6)
    w0 = {"enc.q.weight": torch.randn(8, 8, generator=g)}
    lora = {"base_model.model.enc.q.lora_A.default.weight": torch.randn(2, 8, generator=g),
            "base_model.model.enc.q.lora_B.default.weight": torch.randn(8, 2, generator=g)}
    w1 = lora_dense_state(w0, lora, scaling=0.5)
    expected = w0["enc.q.weight"] + 0.5 * lora["base_model.model.enc.q.lora_B.default.weight"] @ \
        lora["base_model.model.enc.q.lora_A.default.weight"]
    torch.testing.assert_close(w1["enc.q.weight"], expected)
    _, log = monosoup(w0, w1)
    assert log[0]["k"] <= 2
    # the file's other tensors (a trained head) are W1's, not W0's; a B of the wrong size is named
    head = torch.randn(3, 8, generator=g)
    w1 = lora_dense_state({**w0, "head.weight": torch.zeros(3, 8)}, {**lora, "base_model.model.head.weight": head}, 0.5)
    assert torch.equal(w1["head.weight"], head)
    bad = {**lora, "base_model.model.enc.q.lora_B.default.weight": torch.randn(4, 2, generator=g)}
    with pytest.raises(DataError, match="update of shape \\(4, 8\\)"):
        lora_dense_state(w0, bad, 0.5)


def test_bad_config():
    with pytest.raises(ConfigError, match="qkv"):
        MonoSoupConfig(qkv="fused")
    with pytest.raises(ConfigError, match="rank rule"):
        MonoSoupConfig(mode="nuclear")
