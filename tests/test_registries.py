"""Contract tests over every registered name of the user-facing registries (timm's pattern:
`test_model_forward` over `list_models()`), so a newly registered loss, probe method, adapter
or merge method is tested by default. Tiny sizes: the whole file runs in a few seconds.

The fit presets (METHOD_PRESETS) are covered the same way by
tests/test_finetune_train.py::test_every_method_runs_offline, and the samplers by
tests/test_samplers.py."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from longtail.data.synthetic_features import make_synthetic_benchmark
from longtail.methods.losses import LOSSES, make_loss
from longtail.methods.probe import Probe, ProbeConfig, fit_probe, load_methods
from longtail.models.adapters import ADAPTERS, inject_adapter, make_adapter_config
from longtail.soups.merge import MERGE_METHODS, merge

# ----------------------------------------------------------------------------------- losses

COUNTS = [20, 8, 3, 1]


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_gives_a_finite_loss_and_gradient(name):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0, 0, 1, 3])
    loss = make_loss(name, COUNTS)  # the default options
    value = loss(logits, labels)
    assert value.shape == () and torch.isfinite(value), name
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0, name
    # the per-sample losses average to the loss (the engine's and the probe's two call paths)
    per_sample = loss.per_sample(logits.detach(), labels)
    assert per_sample.shape == (8,) and torch.isfinite(per_sample).all()
    # a confident correct prediction costs less than a confident wrong one
    right, wrong = torch.full((1, 4), -5.0, dtype=torch.float64), torch.full((1, 4), -5.0, dtype=torch.float64)
    right[0, 2], wrong[0, 0] = 5.0, 5.0
    assert loss(right, torch.tensor([2])) < loss(wrong, torch.tensor([2])), name


# ---------------------------------------------------------------------------- probe methods

@pytest.fixture(scope="module")
def bench():
    """4 well-separated classes (one per superclass), 40 -> 5 training rows."""
    return make_synthetic_benchmark(seed=2, num_classes=4, dim=8, n_max=40, imbalance_ratio=8, n_val=4,
                                    n_test=10, bayes_per_class=10, superclass_size=1)


# Options a method needs on a 4-class, 40-row set (a new method that needs some: add them here).
PROBE_OPTIONS = {"distribution-calibration": {"head_threshold": 10}}  # default: many-shot (> 100) heads


@pytest.mark.parametrize("name", load_methods().names())
def test_every_probe_method_fits_predicts_and_reloads(bench, name, tmp_path):
    """Fits a tiny feature set, predicts finite logits of the right shape (right on an easy
    benchmark, where every method scores 97-100 %) and reloads from its head folder to the same logits."""
    cfg = ProbeConfig(method=name, max_iter=30, method_options=PROBE_OPTIONS.get(name, {}))
    probe = fit_probe(bench.train, cfg, bench.val)
    logits = probe.logits(bench.test.features)
    assert logits.shape == (bench.test.features.shape[0], 4) and np.isfinite(logits).all(), name
    accuracy = float((logits.argmax(1) == bench.test.labels).mean())
    assert accuracy >= 0.9, (name, accuracy)  # chance is 0.25
    probe.save(tmp_path / "head")
    np.testing.assert_allclose(Probe.load(tmp_path / "head").logits(bench.test.features), logits,
                               rtol=1e-5, atol=1e-5, err_msg=name)


# --------------------------------------------------------------------------------- adapters

HIDDEN, CLASSES = 32, 5


@pytest.fixture(scope="module")
def vision():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    return CLIPVisionModel(CLIPVisionConfig(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, image_size=16, patch_size=8)).eval()


@pytest.mark.parametrize("name", ADAPTERS.names())
def test_every_adapter_builds_keeps_the_forward_shape_and_round_trips(vision, name):
    """Injected into a tiny CLIP vision tower: the pooled output keeps its shape and stays
    finite, exactly the handle's parameters train (a gradient reaches them), and the trainable
    state dict loaded into a second copy gives the same output."""
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    text = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(2))
    model_a, model_b = copy.deepcopy(vision), copy.deepcopy(vision)
    handle = inject_adapter(model_a, make_adapter_config(name), CLASSES)
    handle.set_text_vector(text)
    out = model_a(pixel_values=pixels).pooler_output
    assert out.shape == (2, HIDDEN) and torch.isfinite(out).all(), name
    trainable = {n for n, p in model_a.named_parameters() if p.requires_grad}
    assert {n for n, _ in handle.named_trainable_parameters()} == trainable, name
    assert handle.num_trainable() == sum(p.numel() for p in handle.trainable_parameters())
    if name == "none":
        assert not trainable
        return
    with torch.no_grad():  # move every trainable tensor off its init, so the round trip is not trivial
        for p in handle.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    out = model_a(pixel_values=pixels).pooler_output
    (out * torch.randn(2, HIDDEN, generator=torch.Generator().manual_seed(4))).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in handle.trainable_parameters()), name
    handle_b = inject_adapter(model_b, make_adapter_config(name), CLASSES)
    handle_b.set_text_vector(text)
    handle_b.load_trainable_state_dict({k: v.detach().clone() for k, v in handle.trainable_state_dict().items()})
    with torch.no_grad():
        torch.testing.assert_close(model_b(pixel_values=pixels).pooler_output, out.detach())


# ---------------------------------------------------------------------------- merge methods

# Parameters a method cannot default (a new method that needs some: add them here).
MERGE_PARAMS = {"weighted": {"weights": [1.0, 3.0]}}


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"enc.weight": torch.randn(3, 4, generator=g), "enc.bias": torch.randn(3, generator=g),
            "position_ids": torch.arange(4)}


@pytest.mark.parametrize("name", MERGE_METHODS.names())
def test_every_merge_method_merges_two_state_dicts(name):
    """With and without a base where the method allows it: coefficients sum to one, the merge
    is that linear combination, integer buffers pass through, identical inputs merge to themselves."""
    a, b, base = _state(0), _state(1), _state(2)
    params = MERGE_PARAMS.get(name, {})
    merged_any = False
    for theta0 in (None, base):
        try:
            merged, coefs = merge(name, [a, b], base=theta0, **params)
        except Exception as err:  # a method may refuse to run without a base (WiSE-FT), never with one
            assert theta0 is None and "base" in str(err), (name, err)
            continue
        merged_any = True
        assert coefs.total == pytest.approx(1.0) and len(coefs.ingredients) == 2, name
        assert merged.keys() == a.keys() and torch.equal(merged["position_ids"], a["position_ids"])
        expected = coefs.ingredients[0] * a["enc.weight"] + coefs.ingredients[1] * b["enc.weight"]
        if theta0 is not None:
            expected = expected + coefs.base * base["enc.weight"]
        torch.testing.assert_close(merged["enc.weight"], expected)
        same, _ = merge(name, [a, a], base=None if theta0 is None else a, **params)
        torch.testing.assert_close(same["enc.weight"], a["enc.weight"])
    assert merged_any, name
