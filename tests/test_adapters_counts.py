"""Exact trainable-parameter counts on a full-size ViT-B/16 vision tower (random weights, no download)."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from longtail.models.adapters import inject_adapter, lift_bottleneck, make_adapter_config

D, L = 768, 12


@pytest.fixture(scope="module")
def vit_b16() -> CLIPVisionModel:
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, image_size=224, patch_size=16)
    return CLIPVisionModel(cfg).eval()


def count(model, name: str, num_classes: int = 100, **overrides) -> int:
    """Inject, count, and undo, so one backbone serves every test."""
    keys_before = list(model.state_dict())
    handle = inject_adapter(model, make_adapter_config(name, **overrides), num_classes)
    try:
        return handle.num_trainable()
    finally:
        handle.remove()
        assert list(model.state_dict()) == keys_before


# (C, r from the LIFT rule, AdaptFormer total, SG-Adapter total) — docs/methods.md §1.3 and §5.2.
PAPER_COUNTS = [
    (100, 4, 101_436, 7_299_240),
    (365, 8, 175_212, 7_483_704),
    (1000, 32, 617_868, 8_590_488),
    (8142, 256, 4_749_324, 18_920_472),
]


@pytest.mark.parametrize(("num_classes", "r", "adaptformer", "sg"), PAPER_COUNTS)
def test_lift_and_sage_parameter_counts(vit_b16, num_classes, r, adaptformer, sg):
    assert lift_bottleneck(num_classes, L) == r
    assert count(vit_b16, "adaptformer", num_classes) == adaptformer == L * ((2 * r + 3) * D + r + 1)
    assert count(vit_b16, "sg-adapter", num_classes) == sg == L * ((5 * r + D + 4) * D + 3 * r + 2)


def test_sg_without_projection_count(vit_b16):
    assert count(vit_b16, "sg-adapter", 100, use_proj=False) == 212_136


def test_adaptformer_down_projection_init_std(vit_b16):
    handle = inject_adapter(vit_b16, make_adapter_config("adaptformer", r=8), 100)
    try:
        downs = torch.cat([layer.adapter.down.weight.flatten() for layer in vit_b16.encoder.layers])
        assert downs.numel() == L * 8 * D
        assert downs.std().item() == pytest.approx(1 / (3 * D) ** 0.5, rel=0.03)
        assert all(layer.adapter.up.weight.abs().sum() == 0 for layer in vit_b16.encoder.layers)
    finally:
        handle.remove()


def test_other_adapter_counts(vit_b16):
    r = lift_bottleneck(1000, L)  # 32
    assert count(vit_b16, "lora", 1000) == L * 3 * r * (D + D)
    assert count(vit_b16, "lora", 100, r=8, target_modules="q_proj,v_proj,fc1") == L * 8 * (2 * D + 2 * D + D + 4 * D)
    assert count(vit_b16, "vpt-shallow", num_prompts=10) == 10 * D
    assert count(vit_b16, "vpt-deep", num_prompts=10) == L * 10 * D
    assert count(vit_b16, "ssf") == L * 2 * (3 * D + D + 4 * D + D)
    # biases per block: q, k, v, out (4d), fc1 (4d), fc2 (d), two LayerNorms (2d); plus pre/post LN.
    assert count(vit_b16, "bitfit") == L * 11 * D + 2 * D
    assert count(vit_b16, "ln-tuning") == (2 * L + 2) * 2 * D
    block = 4 * (D * D + D) + (D * 4 * D + 4 * D) + (4 * D * D + D) + 4 * D
    assert count(vit_b16, "partial", num_blocks=2) == 2 * block + 2 * D
    assert count(vit_b16, "partial", num_blocks=1, include_post_layernorm=False) == block
    assert count(vit_b16, "full") == sum(p.numel() for p in vit_b16.parameters())
    assert count(vit_b16, "none") == 0
