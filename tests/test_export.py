"""`longtail export`: merged CLIP loads with transformers alone, LoRA with peft, EfficientNet with
plain torch, each giving longtail's features and logits; refusals are one line; no overwrite."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from longtail.cli import main
from longtail.io import read_yaml, write_yaml
from longtail.methods.finetune import augment, build_config, fit, load_finetuned
from longtail.methods.finetune.export import ExportConfig, export_run
from longtail.methods.finetune.predict import predict, predict_logits

SMALL = {"num_classes": 4, "n_max": 6, "imbalance_ratio": 2, "test_per_class": 2, "size": 16}
TINY = {"image_size": 16, "patch_size": 8}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny fit runs, one per adapter (1 epoch at a high lr, so every adapter moved): CLIP with
    LoRA, SSF, partial (projected features), Sage (SG-Adapter + FIT), and a random-init
    EfficientNet-Lite0 with its last block tuned."""
    root = tmp_path_factory.mktemp("export")
    clip = {"backbone_options": TINY, "lr": 0.5, "epochs": 1}
    settings = {
        "lora": ("tiny_clip", "lift", {**clip, "adapter": "lora"}),
        "ssf": ("tiny_clip", "lift", {**clip, "adapter": "ssf"}),
        "partial": ("tiny_clip", "lift", {**clip, "adapter": "partial", "backbone_options.feature": "projected"}),
        "sage": ("tiny_clip", "sage", {**clip, "templates": "lift"}),
        "efficientnet": ("efficientnet_lite0", "lift", {
            "backbone_options": {"image_size": 32, "pretrained": False}, "adapter": "partial",
            "head_init": "random", "lr": 0.5, "epochs": 1, "num_workers": 0}),
    }
    for name, (backbone, method, options) in settings.items():
        options = {"data_options": SMALL, "root": str(root / "data"), "batch_size": 8, "progress": False, **options}
        fit(build_config("synthetic_images", backbone, method, options), out=root / name, report=False)
    return {name: root / name for name in settings}


def _head_logits(folder, features):
    head = load_file(folder / "head.safetensors")
    return head["scale"] * F.normalize(features, dim=-1) @ F.normalize(head["weight"], dim=-1).T


def _readme_logits(folder, image_path, plain: bool = True):
    """Run the README's snippet on one image, as a user would (`plain`: no longtail import in it)."""
    code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    assert ("longtail" not in code) == plain
    code = code.replace("'path/to/export', \"image.jpg\"", f"{str(folder)!r}, {str(image_path)!r}")
    namespace: dict = {}
    path = list(sys.path)
    try:
        exec(compile(code, "README.md", "exec"), namespace)
    finally:  # the EfficientNet snippet imports the exported network source from DIR
        sys.path[:] = path
        sys.modules.pop("efficientnet_lite", None)
    return namespace["logits"]


def _longtail_logits(run, image_path):
    model = load_finetuned(run, device="cpu")[0]
    with torch.no_grad():
        return model(augment.test_transform(model.input_spec)(Image.open(image_path)))["z_hat"]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "image.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("adapter", ["ssf", "partial", "lora"])
def test_merged_clip_loads_with_transformers_alone(runs, tmp_path, image, adapter):
    from transformers import CLIPModel, CLIPVisionModel

    from longtail.models.backbone import load_backbone

    out = tmp_path / "merged"
    export_run(runs[adapter], out, ExportConfig(format="merged"))
    model = load_finetuned(runs[adapter], device="cpu")[0]
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["format"] == "merged" and manifest["head"]["type"] == "cosine"
    with torch.no_grad():
        ours = model.features(x)
        vision = CLIPVisionModel.from_pretrained(out).eval()(pixel_values=x).pooler_output
        clip = CLIPModel.from_pretrained(out).eval()
        full = clip.vision_model(pixel_values=x).pooler_output
        if manifest["feature"] == "image_embeds":  # backbone_options.feature=projected
            vision = full = clip.visual_projection(full)
        pretrained = load_backbone("tiny_clip", **TINY, feature=model.backbone.feature).forward_features(x)
        torch.testing.assert_close(vision, ours, rtol=0, atol=1e-5)
        torch.testing.assert_close(full, ours, rtol=0, atol=1e-5)
        assert (pretrained - ours).abs().max() > 1e-3  # the adapter did change the features
        torch.testing.assert_close(_head_logits(out, vision), model(x)["z_hat"], rtol=0, atol=1e-5)
    # the README snippet (CLIPImageProcessor + head) gives longtail's logits for an image file
    torch.testing.assert_close(_readme_logits(out, image), _longtail_logits(runs[adapter], image), rtol=0, atol=1e-5)
    assert json.loads((out / "class_names.json").read_text()) == load_finetuned(runs[adapter])[1]["class_names"]


def test_lora_peft_adapter_gives_longtails_logits(runs, tmp_path, image):
    from peft import PeftModel
    from transformers import CLIPModel

    from longtail.methods.finetune.data import open_split
    from longtail.models.backbone import load_backbone

    out = tmp_path / "peft"
    assert main(["export", str(runs["lora"]), "--out", str(out)]) == 0  # auto: a peft folder for LoRA
    assert {"adapter_config.json", "adapter_model.safetensors", "base"} <= {p.name for p in out.iterdir()}
    model, info = load_finetuned(runs["lora"], device="cpu")
    test_set = open_split(info["config"], "test")
    expected = predict_logits(model, test_set, device="cpu")  # longtail's eval/predict path
    for base in (CLIPModel.from_pretrained(out / "base"), load_backbone("tiny_clip", **TINY).model):
        peft_model = PeftModel.from_pretrained(base, out).eval()

        def forward(x, peft_model=peft_model):
            return _head_logits(out, peft_model.vision_model(pixel_values=x).pooler_output)

        logits, _ = predict(forward, test_set, model.input_spec, device="cpu")
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5)
        with peft_model.disable_adapter():  # the adapter is what makes the difference
            plain, _ = predict(forward, test_set, model.input_spec, device="cpu")
        assert np.abs(plain - expected).max() > 1e-3
    assert not any(".text_model." in k for k in peft_model.state_dict() if "lora_" in k)  # vision tower only
    torch.testing.assert_close(_readme_logits(out, image), _longtail_logits(runs["lora"], image), rtol=0, atol=1e-5)


def test_longtail_format_keeps_any_adapter_and_fit(runs, tmp_path, image):
    out = tmp_path / "lt"
    export_run(runs["sage"], out, ExportConfig(format="longtail"))
    a, _ = load_finetuned(runs["sage"], device="cpu")
    b, _ = load_finetuned(out, device="cpu")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(b(x)["z_hat"], a(x)["z_hat"], rtol=0, atol=0)
        torch.testing.assert_close(_head_logits(out, b.features(x)), a(x)["z"], rtol=0, atol=1e-5)
        assert (a(x)["z_hat"] - a(x)["z"]).abs().max() > 1e-4  # FIT's cross terms are part of the prediction
    torch.testing.assert_close(_readme_logits(out, image, plain=False), _longtail_logits(runs["sage"], image))


def test_refusals_are_one_line_and_nothing_is_overwritten(runs, tmp_path, capsys):
    def refused(*args: str) -> str:
        assert main(["export", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("longtail export: error: ")
        return err

    import shutil

    adaptformer = tmp_path / "adaptformer"  # the checks read the config before any weights load
    shutil.copytree(runs["lora"], adaptformer)
    config = read_yaml(adaptformer / "config.yaml")  # a fit run's one config
    config["adapter"], config["adapter_options"] = "adaptformer", {}
    write_yaml(adaptformer / "config.yaml", config)
    err = refused(str(adaptformer), "--out", str(tmp_path / "a"))
    assert "adaptformer" in err and "ssf" in err and "--format longtail" in err
    assert "feature interchange" in refused(str(runs["sage"]), "--out", str(tmp_path / "f"))
    assert "is for LoRA runs" in refused(str(runs["ssf"]), "--out", str(tmp_path / "b"), "--format", "peft")
    assert "run folder not found" in refused(str(tmp_path / "nope"), "--out", str(tmp_path / "c"))
    (tmp_path / "empty").mkdir()
    assert "not a finished fit run" in refused(str(tmp_path / "empty"), "--out", str(tmp_path / "d"))
    assert "unknown export format" in refused(str(runs["ssf"]), "--out", str(tmp_path / "e"), "format=tflite")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert "exists, not overwritten" in refused(str(runs["ssf"]), "--out", str(existing))
    assert [p.name for p in existing.iterdir()] == ["keep.txt"] and (existing / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adaptformer", "empty", "existing"]  # nothing partial left


def test_failed_export_leaves_nothing(runs, tmp_path, monkeypatch):
    import longtail.methods.finetune.export as export

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "write_common", boom)
    with pytest.raises(RuntimeError):
        export_run(runs["ssf"], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_efficientnet_export_loads_with_plain_torch(runs, tmp_path, image):
    """model.safetensors + the exported network source (no longtail) give longtail's logits."""
    out = tmp_path / "eff"
    assert main(["export", str(runs["efficientnet"]), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["variant"] == "efficientnet_lite0" and config["preprocessing"]["center_crop"] == 32
    torch.testing.assert_close(_readme_logits(out, image), _longtail_logits(runs["efficientnet"], image),
                               rtol=0, atol=1e-5)
    assert "longtail" not in (out / "efficientnet_lite.py").read_text().split('"""')[-1]
