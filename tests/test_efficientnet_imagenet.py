"""ImageNet class list, class -> ImageNet maps (JSON/text), their errors, and classifier
prototypes (mean of the mapped rows and biases = mean of the mapped logits)."""

from __future__ import annotations

import json

import pytest
import torch

from longtail.errors import ConfigError
from longtail.models.efficientnet import EfficientNetLiteBackbone, weights_path
from longtail.models.imagenet import (
    averaging_matrix,
    bundled_map,
    classifier_prototypes,
    imagenet_classes,
    imagenet_names,
    imagenet_wnids,
    parse_entry,
    read_class_map,
    resolve_class_map,
)

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_imagenet_class_list_is_standard():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and len(set(wnids)) == 1000
    assert wnids == sorted(wnids)  # the standard index order is sorted by WordNet id
    names = imagenet_names()
    assert (wnids[0], names[0]) == ("n01440764", "tench")
    assert (wnids[404], names[404]) == ("n02690373", "airliner")
    assert (wnids[281], names[281]) == ("n02123045", "tabby")
    assert (wnids[999], names[999]) == ("n15075141", "toilet tissue")
    assert imagenet_classes()[817] == ("n04285008", "sports car, sport car")


def test_parse_entry_wnid_index_and_errors():
    assert parse_entry("n02690373") == 404
    assert parse_entry(404) == parse_entry("404") == 404
    assert parse_entry(" 999 ") == 999
    with pytest.raises(ValueError, match="unknown WordNet id 'n99999999'"):
        parse_entry("n99999999")
    with pytest.raises(ValueError, match="out of range 0-999"):
        parse_entry(1000)
    with pytest.raises(ValueError, match="neither a WordNet id"):
        parse_entry("airliner")
    with pytest.raises(ValueError, match="needs a 1000-class"):
        parse_entry("n02690373", num_outputs=10)
    assert parse_entry(7, num_outputs=10) == 7


def test_read_json_and_text_maps(tmp_path):
    plain = tmp_path / "m.json"
    plain.write_text(json.dumps({"plane": ["n02690373", 895], "cat": 281, "ship": "n03673027"}))
    assert read_class_map(plain) == {"plane": ["n02690373", "895"], "cat": ["281"], "ship": ["n03673027"]}
    wrapped = tmp_path / "w.json"
    wrapped.write_text(json.dumps({"note": "hand-made", "classes": {"cat": [281, 282]}}))
    assert read_class_map(wrapped) == {"cat": ["281", "282"]}
    text = tmp_path / "m.txt"
    text.write_text("# class: imagenet classes\nsports car: n04285008, 511 468\n\ncat: 281  # tabby\n")
    assert read_class_map(text) == {"sports car": ["n04285008", "511", "468"], "cat": ["281"]}


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("bad.json", "{not json", "invalid JSON"),
        ("list.json", "[1, 2]", "must be a JSON object"),
        ("nested.json", '{"cat": [[281]]}', "class 'cat' must map to WordNet ids or indices"),
        ("bool.json", '{"cat": true}', "class 'cat' must map"),
        ("nocolon.txt", "cat 281\n", "nocolon.txt:1: expected 'class name: wnid_or_index"),
        ("twice.txt", "cat: 281\ncat: 282\n", "twice.txt:2: class 'cat' is listed twice"),
    ],
)
def test_malformed_map_files(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        read_class_map(path)


def test_missing_map_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read ImageNet map"):
        read_class_map(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("mapping", "match"),
    [
        ({"dog": [207]}, r"class 'cat' is missing \(the map has: dog\)"),
        ({"cat": ["n99999999"]}, "class 'cat': unknown WordNet id 'n99999999'"),
        ({"cat": [1000]}, "class 'cat': ImageNet index 1000 is out of range 0-999"),
        ({"cat": []}, "class 'cat' maps to no ImageNet classes"),
        ({"cat": ["tabby"]}, "class 'cat': 'tabby' is neither"),
    ],
)
def test_resolve_errors_are_one_line(mapping, match):
    with pytest.raises(ConfigError, match=match) as info:
        resolve_class_map(["cat"], mapping, src="map.json")
    assert "\n" not in str(info.value) and str(info.value).startswith("map.json: ")


def test_averaging_matrix_exact():
    avg = averaging_matrix([[0, 2], [1], [3, 3, 4]], num_outputs=5)
    expected = torch.tensor(
        [[0.5, 0, 0.5, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0.5, 0.5]], dtype=torch.float64
    )  # a duplicated entry counts once
    assert torch.equal(avg, expected)


def test_classifier_prototypes_average_rows_and_logits(tmp_path):
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(1000, 6, generator=gen), torch.randn(1000, generator=gen)
    path = tmp_path / "m.txt"
    path.write_text("plane: n02690373, 895\ncat: 281 282 283\nextra: 5\n")  # extra keys ignored
    protos, pbias = classifier_prototypes(weight, bias, ["cat", "plane"], path)
    assert torch.allclose(protos[0], weight[281:284].mean(0)) and torch.allclose(pbias[0], bias[281:284].mean())
    assert torch.allclose(protos[1], (weight[404] + weight[895]) / 2)
    feats = torch.randn(4, 6, generator=gen)
    logits = feats @ weight.T + bias
    assert torch.allclose(feats @ protos.T + pbias, torch.stack([logits[:, 281:284].mean(1), logits[:, [404, 895]].mean(1)], 1), atol=1e-5)
    protos2, none_bias = classifier_prototypes(weight, None, ["cat"], {"cat": [281, 282, 283]})
    assert none_bias is None and torch.allclose(protos2[0], protos[0])


def test_bundled_cifar10_map_is_complete_and_consistent():
    path = bundled_map("cifar10_imagenet")
    doc = json.loads(path.read_text())
    assert "hand-made" in doc["description"].lower()
    groups = resolve_class_map(CIFAR10, read_class_map(path), src=str(path))
    names = imagenet_names()
    for cls, group in zip(CIFAR10, groups):
        assert [names[i] for i in group] == doc["imagenet_names"][cls]  # stated names match the ids
    by_class = dict(zip(CIFAR10, groups))
    assert {names[i] for i in by_class["deer"]} == {"hartebeest", "impala", "gazelle"}  # no deer in ImageNet-1k
    assert set(by_class["cat"]) == {281, 282, 283, 284, 285}
    assert sum(len(g) >= 3 for g in groups) >= 8  # several ImageNet classes for most classes
    all_ids = [i for g in groups for i in g]
    assert len(all_ids) == len(set(all_ids))  # no ImageNet class serves two CIFAR classes
    with pytest.raises(ConfigError, match="no bundled ImageNet map 'nope'; bundled maps: .*cifar10_imagenet"):
        bundled_map("nope")


def _has_lite0() -> bool:
    try:
        return weights_path("efficientnet_lite0").is_file()
    except ConfigError:
        return False


def test_backbone_prototypes_use_its_fc_rows():
    bb = EfficientNetLiteBackbone("efficientnet_lite0", image_size=32, pretrained=_has_lite0())
    protos, pbias = bb.prototypes(["plane", "cat"], imagenet_map={"plane": ["n02690373", 895], "cat": 281})
    fc = bb.model._fc
    assert protos.shape == (2, 1280) and pbias.shape == (2,)
    assert torch.allclose(protos[0], (fc.weight[404] + fc.weight[895]) / 2)
    assert torch.allclose(pbias[1], fc.bias[281])
    p2, _ = bb.prototypes(CIFAR10, source="imagenet", imagenet_map="bundled:cifar10_imagenet", templates="lift")
    assert p2.shape == (10, 1280) and torch.isfinite(p2).all()
