"""`longtail convert openclip`: a tiny state dict in open_clip's key layout (ViT image tower,
text tower at the top level, in_proj packed [q; k; v]) converts to a CLIP folder whose image and
text features equal an open_clip-style forward written here with torch.nn.MultiheadAttention."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from longtail import cli
from longtail.errors import ConfigError
from longtail.models.backbone import load_backbone
from longtail.models.clip import CLIPBackbone, tiny_tokenizer

W, LAYERS, HEADS, PATCH, GRID, EMBED, CTX = 32, 2, 2, 8, 4, 16, 16
MODEL_CFG = {"embed_dim": EMBED, "quick_gelu": True,
             "vision_cfg": {"image_size": PATCH * GRID, "layers": LAYERS, "width": W, "patch_size": PATCH, "head_width": W // HEADS},
             "text_cfg": {"context_length": CTX, "width": W, "heads": HEADS, "layers": LAYERS}}


def _tower(prefix: str, g: torch.Generator) -> dict[str, torch.Tensor]:
    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    out = {}
    for i in range(LAYERS):
        b = f"{prefix}{i}."
        out |= {b + "ln_1.weight": 1 + r(W), b + "ln_1.bias": r(W), b + "attn.in_proj_weight": r(3 * W, W),
                b + "attn.in_proj_bias": r(3 * W), b + "attn.out_proj.weight": r(W, W), b + "attn.out_proj.bias": r(W),
                b + "ln_2.weight": 1 + r(W), b + "ln_2.bias": r(W), b + "mlp.c_fc.weight": r(4 * W, W),
                b + "mlp.c_fc.bias": r(4 * W), b + "mlp.c_proj.weight": r(W, 4 * W), b + "mlp.c_proj.bias": r(W)}
    return out


def openclip_state(vocab: int) -> dict[str, torch.Tensor]:
    """Random tensors under open_clip's CLIP key names (model.py / transformer.py layout)."""
    g = torch.Generator().manual_seed(0)
    state = {"visual.conv1.weight": torch.randn(W, 3, PATCH, PATCH, generator=g) * 0.1,
             "visual.class_embedding": torch.randn(W, generator=g), "visual.positional_embedding": torch.randn(GRID ** 2 + 1, W, generator=g),
             "visual.ln_pre.weight": torch.ones(W), "visual.ln_pre.bias": torch.zeros(W),
             "visual.ln_post.weight": torch.ones(W), "visual.ln_post.bias": torch.zeros(W),
             "visual.proj": torch.randn(W, EMBED, generator=g), "token_embedding.weight": torch.randn(vocab, W, generator=g),
             "positional_embedding": torch.randn(CTX, W, generator=g) * 0.1, "ln_final.weight": torch.ones(W),
             "ln_final.bias": torch.zeros(W), "text_projection": torch.randn(W, EMBED, generator=g),
             "logit_scale": torch.tensor(4.6052)}
    return state | _tower("visual.transformer.resblocks.", g) | _tower("transformer.resblocks.", g)


def _mha(state: dict[str, torch.Tensor], b: str) -> nn.MultiheadAttention:
    mha = nn.MultiheadAttention(W, HEADS)  # open_clip's ResidualAttentionBlock.attn
    mha.load_state_dict({k: state[b + "attn." + k] for k in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")})
    return mha


def _blocks(state, prefix: str, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """open_clip's Transformer (sequence-first, QuickGELU) on (N, L, D)."""
    x = x.transpose(0, 1)
    for i in range(LAYERS):
        b = f"{prefix}{i}."

        def ln(h, name, b=b):
            return F.layer_norm(h, (W,), state[b + name + ".weight"], state[b + name + ".bias"])

        h = ln(x, "ln_1")
        x = x + _mha(state, b)(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = F.linear(ln(x, "ln_2"), state[b + "mlp.c_fc.weight"], state[b + "mlp.c_fc.bias"])
        x = x + F.linear(h * torch.sigmoid(1.702 * h), state[b + "mlp.c_proj.weight"], state[b + "mlp.c_proj.bias"])
    return x.transpose(0, 1)


def reference_image(state, pixels: torch.Tensor) -> torch.Tensor:
    x = F.conv2d(pixels, state["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([state["visual.class_embedding"].expand(x.shape[0], 1, W), x], dim=1) + state["visual.positional_embedding"]
    x = _blocks(state, "visual.transformer.resblocks.", F.layer_norm(x, (W,), state["visual.ln_pre.weight"], state["visual.ln_pre.bias"]), None)
    return F.layer_norm(x, (W,), state["visual.ln_post.weight"], state["visual.ln_post.bias"])[:, 0] @ state["visual.proj"]


def reference_text(state, ids: torch.Tensor) -> torch.Tensor:
    x = state["token_embedding.weight"][ids] + state["positional_embedding"][: ids.shape[1]]
    causal = torch.full((ids.shape[1],) * 2, float("-inf")).triu(1)
    x = F.layer_norm(_blocks(state, "transformer.resblocks.", x, causal), (W,), state["ln_final.weight"], state["ln_final.bias"])
    return x[torch.arange(len(ids)), ids.argmax(dim=-1)] @ state["text_projection"]  # pooled at the end-of-text token


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openclip")
    tok = tiny_tokenizer(CTX)
    tok.save_pretrained(tmp / "tok")
    state = openclip_state(len(tok))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp / "ckpt.pt")
    (tmp / "open_clip_config.json").write_text(json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}))
    assert cli.main(["convert", "openclip", str(tmp / "ckpt.pt"), "--config", str(tmp / "open_clip_config.json"),
                     "--tokenizer", str(tmp / "tok"), "--out", str(tmp / "hf")]) == 0
    return tmp, state


def test_in_proj_is_split_into_q_k_v_like_multihead_attention(converted):
    tmp, state = converted
    bb = load_backbone(str(tmp / "hf"))
    h = torch.randn(2, 5, W, generator=torch.Generator().manual_seed(3))
    layer = bb.model.vision_model.encoder.layers[1]
    with torch.no_grad():
        ours = layer.self_attn(hidden_states=h)[0]
        theirs = _mha(state, "visual.transformer.resblocks.1.")(h.transpose(0, 1), h.transpose(0, 1), h.transpose(0, 1),
                                                                   need_weights=False)[0].transpose(0, 1)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_converted_features_equal_the_open_clip_forward(converted):
    tmp, state = converted
    bb = load_backbone(str(tmp / "hf"), feature="projected")
    assert isinstance(bb, CLIPBackbone) and bb.model.config.vision_config.hidden_act == "quick_gelu"
    assert bb.transform.mean == (0.5,) * 3 and bb.transform.output_size == (PATCH * GRID,) * 2
    pixels = torch.randn(2, 3, PATCH * GRID, PATCH * GRID, generator=torch.Generator().manual_seed(4))
    ids = bb.tokenizer(["a photo of a cat", "dog"], padding=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(bb.forward_features(pixels), reference_image(state, pixels), rtol=1e-4, atol=1e-4)
        text = bb.model.get_text_features(input_ids=ids)
        text = text if isinstance(text, torch.Tensor) else text.pooler_output
        torch.testing.assert_close(text, reference_text(state, ids), rtol=1e-4, atol=1e-4)
    rows = bb.text_embeddings(["cat", "dog"], ["a {}"])  # text prototypes work on the converted folder
    assert rows.shape == (2, EMBED)


def test_safetensors_input_and_one_line_refusals(converted, tmp_path, capsys):
    src, state = converted
    save_file(state, str(tmp_path / "m.safetensors"))
    assert cli.main(["convert", "openclip", str(tmp_path / "m.safetensors"), "--config", str(src / "open_clip_config.json"),
                     "--out", str(tmp_path / "hf"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["vision"] == {"width": W, "layers": LAYERS, "heads": HEADS, "mlp": 4 * W} and not summary["text_prototypes"]
    a = load_backbone(str(tmp_path / "hf")).model.state_dict()
    b = load_backbone(str(src / "hf")).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)  # .pt (wrapped, module.-prefixed) and .safetensors agree
    config = ["--config", str(src / "open_clip_config.json")]
    cases = [({"visual.transformer.resblocks.0.ls_1.gamma": torch.ones(W)}, config, "layer scale"),
             ({}, [], "activation is not in the checkpoint"),
             ({}, ["--activation", "gelu"], "not divisible into 0 heads; give the model config"),
             ({"visual.extra": torch.ones(1)}, config, "has no place in CLIPModel")]
    capsys.readouterr()  # drop the loads' progress output
    for i, (extra, flags, message) in enumerate(cases):
        save_file(state | extra, str(tmp_path / f"bad{i}.safetensors"))
        assert cli.main(["convert", "openclip", str(tmp_path / f"bad{i}.safetensors"), *flags, "--out", str(tmp_path / f"o{i}")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and not (tmp_path / f"o{i}").exists()
    with pytest.raises(ConfigError, match="exists"):
        from longtail.models.openclip_convert import convert_openclip

        convert_openclip(tmp_path / "m.safetensors", tmp_path / "hf", activation="gelu")
