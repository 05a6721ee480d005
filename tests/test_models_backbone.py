"""Backbones: tiny CLIP features/text embeddings per docs/methods.md §1.1, preprocessing, loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from longtail.errors import ConfigError
from longtail.models.backbone import BACKBONES, Backbone, backbone_names, load_backbone
from longtail.models.preprocess import EvalTransform
from longtail.models.templates import LIFT, SAGE60, get_templates


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny_clip")


def test_presets_registered():
    names = backbone_names()
    for name in ("tiny_clip", "clip_vit_b16", "clip_vit_b32", "clip_vit_l14", "clip_vit_l14_laion2b"):
        assert name in names and name in BACKBONES


def test_forward_features_is_post_layernorm_cls_without_projection(tiny):
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = tiny.forward_features(pixels)
        vision = tiny.model.vision_model(pixel_values=pixels)
        manual = tiny.model.vision_model.post_layernorm(vision.last_hidden_state[:, 0])
        image_features = tiny.model.get_image_features(pixel_values=pixels)
    image_features = getattr(image_features, "pooler_output", image_features)
    assert feats.shape == (3, tiny.feature_dim) == (3, 32)
    torch.testing.assert_close(feats, vision.pooler_output)
    torch.testing.assert_close(feats, manual)
    # get_image_features is the *projected* embedding: a different space (16-d here)
    assert image_features.shape == (3, 16)
    torch.testing.assert_close(feats @ tiny.model.visual_projection.weight.T, image_features)


def _manual_text_embeddings(backbone, class_names, templates):
    """docs/methods.md §1.1 written out one prompt at a time (no batching, no padding)."""
    rows = []
    with torch.no_grad():
        for name in class_names:
            per_template = []
            for t in templates:
                tok = backbone.tokenizer([t.format(name.replace("_", " "))], return_tensors="pt")
                out = backbone.model.get_text_features(**tok)
                emb = getattr(out, "pooler_output", out)[0]
                per_template.append(emb / emb.norm())
            e = torch.stack(per_template).mean(0)  # not renormalised before the mapping
            w = e @ backbone.model.visual_projection.weight
            rows.append(w / w.norm())
    return torch.stack(rows)


def test_text_embeddings_match_formula_and_are_unit(tiny):
    names = ["cat", "golden_retriever", "a much longer class name here"]
    templates = SAGE60[:5]
    got = tiny.text_embeddings(names, templates)
    assert got.shape == (3, tiny.feature_dim)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(got, _manual_text_embeddings(tiny, names, templates), atol=1e-5, rtol=1e-5)
    # the mean is taken before normalising: differs from normalising each mapped template
    per = torch.stack([tiny.text_embeddings(names, [t]) for t in templates]).mean(0)
    assert not torch.allclose(got, F.normalize(per, dim=-1), atol=1e-4)


def test_text_embeddings_underscores_and_errors(tiny):
    torch.testing.assert_close(tiny.text_embeddings(["big_cat"], LIFT), tiny.text_embeddings(["big cat"], LIFT))
    with pytest.raises(ConfigError, match="'\\{\\}'"):
        tiny.text_embeddings(["cat"], ["no slot"])
    with pytest.raises(ConfigError):
        tiny.text_embeddings([], LIFT)


def test_prototypes_hook(tiny):
    w, b = tiny.prototypes(["cat", "dog"], source="text", templates="sage60")
    torch.testing.assert_close(w, tiny.text_embeddings(["cat", "dog"], SAGE60))
    assert b is None and tiny.default_prototype_source == "text"
    with pytest.raises(ConfigError, match="choose from: text"):
        tiny.prototypes(["cat"], source="imagenet")


def test_templates():
    assert get_templates("lift") == ("a photo of a {}.",)
    assert len(SAGE60) == 60 == len(set(SAGE60))
    assert all(t.count("{}") == 1 for t in SAGE60)
    assert SAGE60[0] == "a photo of a {}." and SAGE60[-1] == "itap of the {}."
    with pytest.raises(ConfigError, match="lift"):
        get_templates("nope")


def test_tiny_clip_is_deterministic_per_seed(tiny):
    again, other = load_backbone("tiny_clip"), load_backbone("tiny_clip", seed=1)
    assert again.weights_fingerprint() == tiny.weights_fingerprint()
    assert other.weights_fingerprint() != tiny.weights_fingerprint()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again.forward_features(x), tiny.forward_features(x))


def test_cache_key_tracks_weights(tiny):
    b = load_backbone("tiny_clip")
    key = b.cache_key()
    assert key["model_id"] == tiny.model_id and key["feature_kind"] == "pooler_output"
    with torch.no_grad():
        b.model.vision_model.post_layernorm.bias.add_(0.01)  # e.g. a fine-tuned copy
    assert b.cache_key()["weights"] != key["weights"]


def test_load_from_save_pretrained_folder(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    loaded = load_backbone(str(tmp_path / "m"))
    assert type(loaded) is type(tiny) and loaded.feature_dim == tiny.feature_dim
    assert loaded.transform == tiny.transform
    assert loaded.model_id == str((tmp_path / "m").resolve())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.forward_features(x), tiny.forward_features(x))
    torch.testing.assert_close(loaded.text_embeddings(["cat"], LIFT), tiny.text_embeddings(["cat"], LIFT))


def test_bad_names():
    with pytest.raises(ConfigError, match="tiny_clip"):
        load_backbone("no_such_backbone")
    with pytest.raises(ConfigError, match="tiny_clip"):
        load_backbone("tiny_clip", revision="v1")


def test_backbone_without_text_tower():
    class Plain(Backbone):
        name, feature_dim = "plain", 4

    with pytest.raises(ConfigError, match="no text tower"):
        Plain().text_embeddings(["cat"], LIFT)
    with pytest.raises(ConfigError, match="cannot make 'text'"):
        Plain().prototypes(["cat"])
    assert Plain().default_prototype_source is None


# --- preprocessing --------------------------------------------------------------------------


def test_resize_and_crop_geometry():
    t = EvalTransform(size=32, crop_size=(32, 32))
    assert t.resize_shape(50, 37) == (43, 32)  # long side int(32 * 50 / 37) = 43
    assert t.resize_shape(37, 50) == (32, 43)
    assert t.crop_box(43, 32) == (5, 0, 37, 32)  # left = (43 - 32) // 2
    assert t.crop_box(32, 43) == (0, 5, 32, 37)


def test_crop_position_and_normalisation_hand_case():
    # 5 x 3 image whose red channel is the column index; no resize (short side 3 == size)
    arr = np.zeros((3, 5, 3), dtype=np.uint8)
    arr[..., 0] = np.arange(5, dtype=np.uint8)[None, :] * 50
    arr[..., 1] = 255
    t = EvalTransform(size=3, crop_size=(3, 3), mean=(0.5, 0.5, 0.0), std=(0.5, 0.25, 1.0))
    out = t([Image.fromarray(arr)])
    assert out.shape == (1, 3, 3, 3) and out.dtype == torch.float32
    expected_red = (np.array([50, 100, 150]) / 255 - 0.5) / 0.5  # columns 1..3 kept
    np.testing.assert_allclose(out[0, 0, 0].numpy(), expected_red, rtol=1e-6)
    np.testing.assert_allclose(out[0, 1].numpy(), np.full((3, 3), (1.0 - 0.5) / 0.25))
    np.testing.assert_allclose(out[0, 2].numpy(), np.zeros((3, 3)))


def test_bicubic_constant_image_and_batching():
    t = EvalTransform(size=8, crop_size=(8, 8))
    images = [Image.new("RGB", (20, 11), (200, 100, 0)), Image.new("L", (9, 30), 64)]
    out = t(images)
    assert out.shape == (2, 3, 8, 8)
    mean, std = np.array(t.mean), np.array(t.std)
    np.testing.assert_allclose(out[0, :, 4, 4].numpy(), (np.array([200, 100, 0]) / 255 - mean) / std, rtol=1e-5)
    np.testing.assert_allclose(out[1, :, 0, 0].numpy(), (64 / 255 - mean) / std, rtol=1e-5)


def test_matches_hf_clip_image_processor():
    transformers = pytest.importorskip("transformers")
    proc = transformers.CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 256, (61, 29, 3), dtype=np.uint8))]
    t = EvalTransform.from_image_processor(proc)
    assert t.size == 24 and t.crop_size == (24, 24) and t.resample == "bicubic"
    ref = proc(images=images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(t(images), ref, atol=1e-5, rtol=1e-5)


def test_transform_validation():
    with pytest.raises(ConfigError, match="resample"):
        EvalTransform(resample="fancy")
    with pytest.raises(ConfigError, match="std"):
        EvalTransform(std=(1.0, 0.0, 1.0))


def test_folder_errors(tmp_path):
    with pytest.raises(ConfigError, match="folder not found"):
        load_backbone(str(tmp_path / "missing" / "model"))
    transformers = pytest.importorskip("transformers")
    transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="model type 'bert'; choose from: clip"):
        load_backbone(str(tmp_path))


def test_unknown_backbone_option_is_a_named_error():
    from longtail.errors import ConfigError
    from longtail.models.backbone import load_backbone

    with pytest.raises(ConfigError, match="backbone 'tiny_clip': unknown option 'bogus' \\(options: seed"):
        load_backbone("tiny_clip", bogus=1)
