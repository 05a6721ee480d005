"""Fine-tuning a CNN (EfficientNet-Lite0, random seeded weights, 32 px) through the backbone
interface: tuning modes, ViT-only refusals, prototype head init, a partial-FT run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from longtail.errors import ConfigError
from longtail.methods.finetune import build_config, build_model, fit, load_finetuned, predict_logits
from longtail.methods.finetune.checkpoint import WEIGHTS
from longtail.methods.finetune.data import open_split
from longtail.models.adapters import inject_adapter, make_adapter_config
from longtail.models.backbone import load_backbone

SMALL = {"num_classes": 4, "n_max": 12, "imbalance_ratio": 4, "test_per_class": 4, "size": 16}
VIT_ONLY = ["adaptformer", "sg-adapter", "vpt-shallow", "vpt-deep", "lora", "ssf"]


def cnn(**kw):
    return load_backbone("efficientnet_lite0", pretrained=False, image_size=32, **kw)


def trainable(backbone) -> set[str]:
    return {n for n, p in backbone.tuning_root().named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", ["efficientnet_lite0", "tiny_clip"])
def test_prefix_then_rest_equals_the_whole_forward(name):
    bb = cnn() if name != "tiny_clip" else load_backbone("tiny_clip", image_size=16, patch_size=8)
    x = torch.randn(2, 3, *bb.transform.output_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = bb.forward_features(x)
        for depth in sorted({0, 1, bb.num_blocks // 2, bb.num_blocks - 1, bb.num_blocks}):
            torch.testing.assert_close(bb.forward_from(bb.forward_prefix(x, depth), depth), whole, rtol=0, atol=0)


def test_tuning_modes_choose_the_cnn_weights_they_name():
    bb = cnn()
    last = len(bb.blocks()) - 1
    modes = {
        "none": set(),
        "bitfit": {n for n, _ in bb.tuning_root().named_parameters() if n.endswith("bias") and not n.startswith("_fc")},
        "norm-tuning": {n for n, _ in bb.tuning_root().named_parameters() if "_bn" in n},
        "partial": {n for n, _ in bb.tuning_root().named_parameters()
                    if n.startswith((f"_blocks.{last}.", "_conv_head", "_bn1."))},
        "full": {n for n, _ in bb.tuning_root().named_parameters() if not n.startswith("_fc")},
    }
    for name, expected in modes.items():
        handle = inject_adapter(bb, name, num_classes=3)
        assert trainable(bb) == expected, name
        handle.remove()
        assert trainable(bb) == set()
    assert modes["bitfit"] < modes["norm-tuning"]  # EfficientNet convs have no bias: BitFit = BN shifts
    assert inject_adapter(bb, "ln-tuning", 3).num_trainable() == inject_adapter(cnn(), "bn-tuning", 3).num_trainable()


def test_batchnorm_statistics_stay_frozen_unless_asked_for_tuned_blocks():
    bb = cnn()
    handle = inject_adapter(bb, "partial", 3)
    bb.train()
    assert not any(m.training for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d))
    handle.remove()
    handle = inject_adapter(bb, make_adapter_config("partial", num_blocks=2, update_bn_stats="true"), 3)
    bb.train()
    tuned = [*bb.blocks()[-2:], *bb.top()]
    assert all(m.training for t in tuned for m in t.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not any(m.training for m in bb.blocks()[0].modules() if isinstance(m, torch.nn.BatchNorm2d))
    handle.remove()
    bb.train()
    assert not any(m.training for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d))


@pytest.mark.parametrize("name", VIT_ONLY)
def test_vit_only_adapters_refuse_a_cnn_in_one_line(name):
    with pytest.raises(ConfigError) as err:
        inject_adapter(cnn(), name, 3)
    message = str(err.value)
    assert "\n" not in message and f"'{name}' needs a ViT" in message
    fitting = message.split("choose one of: ")[1].split(", ")
    assert {"partial", "bitfit", "norm-tuning", "full", "none"} <= set(fitting) and not set(VIT_ONLY) & set(fitting)


def test_vit_only_adapter_fails_before_data_or_head_init():
    with pytest.raises(ConfigError, match="'adaptformer' needs a ViT"):  # a preset: when the config is built
        build_config("synthetic_images", "efficientnet_lite0", "lift")
    cfg = build_config("synthetic_images", "tiny_clip", "lift", {"head_init": "class_mean"})

    def never():
        raise AssertionError("head init ran")

    with pytest.raises(ConfigError, match="'adaptformer' needs a ViT"):  # any backbone: before the head
        build_model(cfg, cnn(), ["a", "b"], never)


def test_prototype_head_init_uses_imagenet_rows():
    bb = cnn()
    wnids = ["n01443537", "n01440764"]  # ImageNet classes 1 and 0, matched directly
    cfg = build_config("synthetic_images", "efficientnet_lite0", "partial_ft", {"head_init": "prototypes"})
    model = build_model(cfg, bb, wnids)
    torch.testing.assert_close(model.head.weight.detach(), F.normalize(bb.model._fc.weight[[1, 0]].detach(), dim=1))
    cifar = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert build_model(cfg, bb, cifar).head.weight.shape == (10, 1280)  # the bundled CIFAR-10 map
    with pytest.raises(ConfigError, match="ImageNet-class map"):
        build_model(cfg, bb, ["x", "y"])


def test_cnn_partial_ft_lowers_loss_and_keeps_the_prefix_bit_identical(tmp_path):
    options = {"data_options": SMALL, "root": str(tmp_path / "data"), "batch_size": 8, "progress": False,
               "backbone_options": {"image_size": 32, "pretrained": False}, "head_init": "random",
               "epochs": 4, "lr": 0.01, "augment": "none", "prefix_cache": "off", "num_workers": 0}
    cfg = build_config("synthetic_images", "efficientnet_lite0", "partial_ft", options)
    result = fit(cfg, out=tmp_path / "run", report=False)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    before, after = cnn().state_dict(), result.model.backbone.state_dict()
    last = len(result.model.backbone.blocks()) - 1
    for key, value in before.items():
        name = key.removeprefix("model.")
        if name.startswith((f"_blocks.{last}.", "_conv_head", "_bn1.")) and not any(
                s in name for s in ("running_", "num_batches")):
            continue
        assert torch.equal(after[key], value), key  # frozen weights and every BN statistic untouched
    assert not torch.equal(after["model._conv_head.weight"], before["model._conv_head.weight"])


def test_updated_bn_statistics_are_saved_and_reload_with_the_run(tmp_path):
    options = {"data_options": SMALL, "root": str(tmp_path / "data"), "batch_size": 8, "progress": False,
               "backbone_options": {"image_size": 32, "pretrained": False}, "head_init": "random",
               "epochs": 1, "lr": 0.01, "prefix_cache": "off", "num_workers": 0,
               "adapter_options": {"num_blocks": 1, "update_bn_stats": True}}
    cfg = build_config("synthetic_images", "efficientnet_lite0", "partial_ft", options)
    result = fit(cfg, out=tmp_path / "run", report=False)
    saved = load_file(tmp_path / "run" / WEIGHTS)
    key = "backbone.model._bn1.running_mean"
    assert key in saved and not torch.equal(saved[key], cnn().state_dict()["model._bn1.running_mean"])
    assert "backbone.model._blocks.0._bn1.running_mean" not in saved  # frozen blocks keep theirs
    model, _ = load_finetuned(tmp_path / "run", device="cpu")
    test = open_split(cfg, "test")
    np.testing.assert_array_equal(predict_logits(model, test, device="cpu"),
                                  predict_logits(result.model, test, device="cpu"))


def test_an_lt_profile_option_shapes_the_training_split_only(tmp_path):
    from conftest import write_random_images

    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        write_random_images(tmp_path / split, {"a": 8, "b": 8, "c": 8}, (8, 10), seed=len(split))
    cfg = build_config(str(tmp_path), "efficientnet_lite0", "partial_ft", {"data_options": {"ir": 4}})
    assert open_split(cfg, "train").class_counts().tolist() == [8, 4, 2]
    assert open_split(cfg, "test").class_counts().tolist() == [8, 8, 8]
