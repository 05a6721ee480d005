"""DINOv2, ViT, SigLIP, SigLIP 2 (NaFlex) and ConvNeXt through transformers, offline: tiny random
configs saved with save_pretrained and loaded by folder (model_type dispatch), checked against the
HF model's own output, the prefix cache at every depth, adapters, text prototypes, `features`,
a 1-epoch `fit` with `export`, and the presets' registration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longtail import cli
from longtail.errors import ConfigError
from longtail.models.adapters import inject_adapter, make_adapter_config
from longtail.models.backbone import BACKBONES, PRESET_ARCH, load_backbone

V = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
FAMILIES = ("dinov2", "vit", "siglip", "siglip2", "convnext")
SMALL = {"num_classes": 3, "n_max": 6, "imbalance_ratio": 3, "test_per_class": 2, "size": 16}


def _tokenizer():
    from longtail.models.clip import tiny_tokenizer

    return tiny_tokenizer(16)


def _model(family: str):
    """A seeded tiny random model of the family (and its tokenizer for the SigLIPs)."""
    import transformers as tf

    torch.manual_seed(0)
    tok = _tokenizer()
    text = dict(V, vocab_size=len(tok), max_position_embeddings=16, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    text.pop("image_size"), text.pop("patch_size")
    if family == "dinov2":
        return tf.Dinov2Model(tf.Dinov2Config(**{**V, "mlp_ratio": 2})), None
    if family == "vit":
        return tf.ViTModel(tf.ViTConfig(**V), add_pooling_layer=False), None
    if family == "siglip":
        return tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=V)), tok
    if family == "siglip2":
        vision = {k: v for k, v in V.items() if k != "image_size"} | {"num_patches": 16}
        return tf.Siglip2Model(tf.Siglip2Config(text_config=text, vision_config=vision)), tok
    return tf.ConvNextModel(tf.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 2], num_stages=2, image_size=32)), None


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for family in FAMILIES:
        model, tok = _model(family)
        folder = tmp_path_factory.mktemp(family)
        model.save_pretrained(folder)
        if tok is not None:
            tok.save_pretrained(folder)
        out[family] = (folder, model.eval())
    return out


def _reference(family: str, model, x: torch.Tensor) -> torch.Tensor:
    """The HF model's own pooled output for pixels x."""
    if family == "siglip":
        return model.vision_model(pixel_values=x).pooler_output
    if family == "siglip2":
        b, c, h, w = x.shape
        p = model.config.vision_config.patch_size
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), -1)
        shapes = torch.tensor([[h // p, w // p]] * b)
        return model.vision_model(pixel_values=patches, pixel_attention_mask=torch.ones(b, patches.shape[1]),
                                  spatial_shapes=shapes).pooler_output
    out = model(pixel_values=x)
    return out.last_hidden_state[:, 0] if family == "vit" else out.pooler_output


@pytest.mark.parametrize("family", FAMILIES)
def test_features_equal_the_hf_model_and_the_prefix_cache_at_every_depth(folders, family):
    folder, model = folders[family]
    bb = load_backbone(str(folder))
    assert bb.arch == ("cnn" if family == "convnext" else "vit") and bb.feature_kind == "pooler_output"
    assert bb.has_text == family.startswith("siglip") and not any(p.requires_grad for p in bb.parameters())
    x = torch.randn(2, 3, *bb.transform.output_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = bb.forward_features(x)
        torch.testing.assert_close(whole, _reference(family, model, x), rtol=1e-5, atol=1e-5)
        assert whole.shape == (2, bb.feature_dim)
        for depth in range(bb.num_blocks + 1):
            assert torch.equal(bb.forward_from(bb.forward_prefix(x, depth), depth), whole), depth
            assert torch.equal(bb.forward_between(bb.forward_prefix(x, 0), 0, depth), bb.forward_prefix(x, depth))
    names = {n for n, _ in bb.tuning_root().named_parameters()}
    assert {n for part in bb.feature_modules() for n, _ in part.named_parameters()}  # parts hold weights
    assert all(any(p is q for q in bb.tuning_root().parameters()) for p in bb.bias_parameters())
    assert bb.norm_layers() and len(names) == len(list(bb.tuning_root().parameters()))
    assert set(bb.state_dict()) == {f"model.{k}" for k in model.state_dict()}  # no wrapper keys (ConvNeXt steps)


@pytest.mark.parametrize("family", ["siglip", "siglip2"])
def test_siglip_text_prototypes_are_the_padded_text_embeddings(folders, family):
    folder, model = folders[family]
    bb = load_backbone(str(folder))
    rows = bb.text_embeddings(["cat", "dog"], ["a {}"])
    ids = bb.tokenizer(["a cat", "a dog"], padding="max_length", max_length=16, return_tensors="pt")["input_ids"]
    assert ids.shape == (2, 16)  # padded to the text tower's length, as SigLIP was trained
    with torch.no_grad():
        out = model.get_text_features(input_ids=ids)
    ref = torch.nn.functional.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)
    torch.testing.assert_close(rows, ref, rtol=1e-5, atol=1e-5)
    weight, bias = bb.prototypes(["cat", "dog"], source="text", templates="lift")
    assert weight.shape == (2, bb.feature_dim) and bias is None


@pytest.mark.parametrize("family", ["dinov2", "vit", "siglip"])
@pytest.mark.parametrize("adapter", ["adaptformer", "sg-adapter", "lora", "ssf"])
def test_zero_initialised_vit_adapters_leave_the_new_vits_unchanged(folders, family, adapter):
    bb = load_backbone(str(folders[family][0]))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = bb.forward_features(x)
    options = {"target_modules": "q_proj,out_proj,fc1"} if adapter == "lora" else {}
    handle = inject_adapter(bb, make_adapter_config(adapter, **options), num_classes=4)
    handle.set_text_vector(torch.zeros(bb.feature_dim))
    trained = [n for n, _ in handle.named_trainable_parameters()]
    assert trained and not any(n.startswith("head.") for n in trained)  # SigLIP's pooling head stays frozen
    with torch.no_grad():
        torch.testing.assert_close(bb.forward_features(x), before, rtol=1e-5, atol=1e-5)
    handle.remove()
    assert not any(p.requires_grad for p in bb.parameters())


def test_unsupported_combinations_are_one_line_errors(folders, tmp_path):
    import transformers as tf

    convnext = load_backbone(str(folders["convnext"][0]))
    with pytest.raises(ConfigError) as err:
        inject_adapter(convnext, "adaptformer", 3)
    assert "\n" not in str(err.value) and "needs a ViT backbone" in str(err.value)
    swiglu = tf.Dinov2Model(tf.Dinov2Config(**V, use_swiglu_ffn=True))
    swiglu.save_pretrained(tmp_path / "swiglu")
    bb = load_backbone(str(tmp_path / "swiglu"))
    for name, options in (("lora", {"target_modules": "fc1"}), ("ssf", {})):
        with pytest.raises(ConfigError, match=r"\['fc1'.*do not exist in a Dinov2Layer") as err:
            inject_adapter(bb, make_adapter_config(name, **options), 3)
        assert "\n" not in str(err.value)
    inject_adapter(bb, "adaptformer", 3).remove()  # the parallel adapters still fit a SwiGLU block
    with pytest.raises(ConfigError, match="no text tower"):
        load_backbone(str(folders["dinov2"][0])).text_embeddings(["a"], ["{}"])
    with pytest.raises(ConfigError, match="unknown feature 'projected'"):
        load_backbone(str(folders["vit"][0]), feature="projected")


def test_presets_are_registered_with_real_hub_ids_and_descriptions():
    from longtail.commands.list import entries

    described = dict(entries("backbones"))
    expected = {"dinov2_s14": "facebook/dinov2-small", "dinov2_b14": "facebook/dinov2-base",
                "siglip_b16": "google/siglip-base-patch16-224", "siglip2_b16": "google/siglip2-base-patch16-224",
                "convnext_t": "facebook/convnext-tiny-224", "vit_b16_in21k": "google/vit-base-patch16-224-in21k"}
    for name, hub_id in expected.items():
        assert BACKBONES.get(name).hub_id == hub_id and hub_id in described[name]
        assert PRESET_ARCH[name] == ("cnn" if name.startswith("convnext") else "vit")
    with pytest.raises(ConfigError, match="unknown option 'bogus'"):
        load_backbone("dinov2_s14", bogus=1)  # checked before any download


def test_features_command_writes_siglip_text_prototypes(folders, tmp_path, monkeypatch, capsys):
    from longtail.data.features import load_features

    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "f.npz"
    argv = ["features", "--data", "synthetic_images", "--root", str(tmp_path / "data"), "--backbone",
            str(folders["siglip"][0]), "--out", str(out), "--no-progress", "--batch-size", "8"]
    argv += [f"data_options.{k}={v}" for k, v in SMALL.items()]
    assert cli.main(argv) == 0, capsys.readouterr().err
    fs = load_features(out)
    assert fs.features.shape[1] == 32 and fs.prototypes is not None and fs.prototypes.shape == (3, 32)


FIT = {"siglip": ("lift", {}), "siglip2": ("sage", {"adapter_options": {"alpha": 0.5}}),
       "dinov2": ("partial_ft", {"head_init": "class_mean"}), "vit": ("lift", {"head_init": "class_mean"}),
       "convnext": ("partial_ft", {"head_init": "class_mean", "adapter_options": {"num_blocks": 2}})}


@pytest.mark.parametrize("family", FAMILIES)
def test_fit_one_epoch_then_export_reloads_the_same_predictions(folders, family, tmp_path):
    from longtail.methods.finetune import build_config, fit, load_finetuned, predict_logits
    from longtail.methods.finetune.data import open_split
    from longtail.methods.finetune.export import ExportConfig, export_run

    method, extra = FIT[family]
    options = {"data_options": SMALL, "root": str(tmp_path / "data"), "batch_size": 4, "progress": False,
               "epochs": 1, "lr": 0.01, "augment": "none", "num_workers": 0, "prefix_cache_dir": str(tmp_path / "prefix"),
               **extra}
    cfg = build_config("synthetic_images", str(folders[family][0]), method, options)
    result = fit(cfg, out=tmp_path / "run", report=False)
    assert np.isfinite(result.history[0]["loss"])
    out = export_run(tmp_path / "run", tmp_path / "export", ExportConfig(format="longtail"))
    model, _ = load_finetuned(out, device="cpu")
    test = open_split(cfg, "test")
    np.testing.assert_array_equal(predict_logits(model, test, device="cpu"),
                                  predict_logits(result.model, test, device="cpu"))
