"""`longtail export --format onnx`: onnxruntime alone gives longtail's logits (fit runs with and
without adapters, folded or not, EfficientNet-Lite, a probe run), with a dynamic batch, the
post-hoc terms in the graph, class names and preprocessing in the metadata, int8 quantisation,
the README snippet (numpy + PIL + onnxruntime), one-line refusals and no overwrite."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from PIL import Image  # noqa: E402

from longtail.cli import main  # noqa: E402
from longtail.methods.finetune import augment, build_config, fit, load_finetuned  # noqa: E402
from longtail.methods.finetune.onnx_export import export_onnx  # noqa: E402

SMALL = {"num_classes": 4, "n_max": 6, "imbalance_ratio": 2, "test_per_class": 2, "size": 16}
TINY = {"image_size": 16, "patch_size": 8}
ATOL = 1e-4


def _probe_run(root):
    """tiny_clip features (with text prototypes) -> a cosine probe with zero-shot interpolation,
    post-hoc tau and a calibrated temperature: every term of Probe.logits is in play."""
    from longtail.data.features import save_features
    from longtail.data.open_images import open_images
    from longtail.methods.probe.config import ProbeConfig
    from longtail.methods.probe.run import run_probe
    from longtail.models.backbone import load_backbone
    from longtail.models.features import extract_features

    backbone = load_backbone("tiny_clip", **TINY)
    sets = {}
    for split in ("train", "test"):
        images = open_images("synthetic_images", split=split, root=root / "data", **SMALL)
        sets[split] = extract_features(backbone, images, batch_size=32, device="cpu", progress=False,
                                       prototypes="auto", cache=False)
        save_features(sets[split], root / f"{split}.npz")
    cfg = ProbeConfig(head="cosine", interpolate=0.5, posthoc_tau=0.7, calibrate="temperature", device="cpu")
    from longtail.data.features import load_features

    train, test = load_features(root / "train.npz"), load_features(root / "test.npz")
    folder, _ = run_probe(train, test, cfg, val=test, out=root / "probe", report=False)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny runs: CLIP with BitFit (in place, no adapter modules), AdaptFormer (kept as graph),
    LoRA (folded); a random-init EfficientNet-Lite0 with its top tuned; a probe run."""
    root = tmp_path_factory.mktemp("onnx")
    clip = {"backbone_options": TINY, "lr": 0.5, "epochs": 1}
    settings = {
        "bitfit": ("tiny_clip", {**clip, "adapter": "bitfit"}),
        "adaptformer": ("tiny_clip", {**clip, "adapter": "adaptformer"}),
        "lora": ("tiny_clip", {**clip, "adapter": "lora"}),
        "efficientnet": ("efficientnet_lite0", {
            "backbone_options": {"image_size": 32, "pretrained": False}, "adapter": "partial",
            "head_init": "random", "lr": 0.5, "epochs": 1, "num_workers": 0}),
    }
    out = {}
    for name, (backbone, options) in settings.items():
        options = {"data_options": SMALL, "root": str(root / "data"), "batch_size": 8, "progress": False, **options}
        fit(build_config("synthetic_images", backbone, "lift", options), out=root / name, report=False)
        out[name] = root / name
    out["probe"] = _probe_run(root)
    return out


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {name: export_onnx(run, root / name, quantize=name == "lora") for name, run in runs.items()}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "image.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)).save(path)
    return path


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _reference(run):
    """(pixels -> longtail's logits, preprocessing transform) for a run of either kind."""
    if (run / "head" / "head.json").is_file():  # probe: the frozen backbone named by its features, Probe.logits
        from longtail.data.features import load_features
        from longtail.methods.probe.model import Probe
        from longtail.models.backbone import load_backbone

        probe = Probe.load(run / "head")
        backbone = load_backbone("tiny_clip", **TINY)
        assert load_features(run.parent / "train.npz").meta["weights"] == backbone.weights_fingerprint()

        def forward(x):
            with torch.no_grad():
                return torch.from_numpy(probe.logits(backbone.forward_features(x)))

        return forward, backbone.transform
    model = load_finetuned(run, device="cpu")[0]  # unfolded: also checks the folding

    def forward(x):
        with torch.no_grad():
            return model(x)["z_hat"]

    return forward, augment.test_transform(model.input_spec)


@pytest.mark.parametrize("name", ["bitfit", "adaptformer", "lora", "efficientnet", "probe"])
def test_onnxruntime_gives_longtails_logits_at_any_batch(runs, exports, name):
    forward, transform = _reference(runs[name])
    session = _session(exports[name] / "model.onnx")
    manifest = json.loads((exports[name] / "export.json").read_text())
    size = manifest["input"]["shape"][2:]
    assert manifest["input"]["name"] == session.get_inputs()[0].name == "pixel_values"
    assert list(transform.output_size) == size
    for batch in (1, 3):
        x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(batch))
        ours = forward(x).numpy()
        theirs = session.run(None, {"pixel_values": x.numpy()})[0]
        assert theirs.shape == ours.shape == (batch, manifest["output"]["shape"][1])
        np.testing.assert_allclose(theirs, ours, rtol=0, atol=ATOL)
        assert (theirs.argmax(1) == ours.argmax(1)).all()
    assert manifest["adapter_folded"] == (name in ("bitfit", "lora", "efficientnet"))  # adaptformer: kept as graph
    if name == "probe":
        assert manifest["probe"]["zero_shot"] and manifest["probe"]["alpha"] == 0.5
        assert manifest["probe"]["posthoc_tau"] == 0.7 and manifest["probe"]["temperature"] != 1.0


def test_metadata_readme_and_class_names(runs, exports, image):
    """model.onnx carries the class names and preprocessing; the README snippet (no longtail,
    no torch) predicts an image file with longtail's logits."""
    for name in ("lora", "efficientnet", "probe"):
        out = exports[name]
        meta = _session(out / "model.onnx").get_modelmeta().custom_metadata_map
        classes = json.loads((out / "class_names.json").read_text())
        assert json.loads(meta["class_names"]) == classes and len(classes) == SMALL["num_classes"]
        assert json.loads(meta["preprocessing"]) == json.loads((out / "export.json").read_text())["preprocessing"]
        code = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S).group(1)
        assert "longtail" not in code and "torch" not in code and len(code.splitlines()) <= 20
        code = code.replace("'path/to/export', \"image.jpg\"", f"{str(out)!r}, {str(image)!r}")
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)
        forward, transform = _reference(runs[name])
        ours = forward(transform(Image.open(image))).numpy()
        np.testing.assert_allclose(namespace["logits"], ours, rtol=0, atol=ATOL)


def test_int8_model_runs_and_mostly_agrees(exports):
    out = exports["lora"]
    assert json.loads((out / "export.json").read_text())["int8_model"] == "model.int8.onnx"
    x = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    full = _session(out / "model.onnx").run(None, {"pixel_values": x})[0]
    int8 = _session(out / "model.int8.onnx")
    assert "class_names" in int8.get_modelmeta().custom_metadata_map
    assert (int8.run(None, {"pixel_values": x})[0].argmax(1) == full.argmax(1)).mean() >= 0.75
    assert not (exports["bitfit"] / "model.int8.onnx").exists()


def test_adjustment_and_temperature_in_the_graph(runs, exports, tmp_path):
    adjustment = np.array([0.5, -1.0, 0.0, 2.0])
    out = export_onnx(runs["adaptformer"], tmp_path / "adjusted", adjustment=adjustment, temperature=2.5)
    post = json.loads((out / "export.json").read_text())["post_hoc"]
    assert post["temperature"] == 2.5 and post["adjustment"] == adjustment.tolist()
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    z = _session(exports["adaptformer"] / "model.onnx").run(None, {"pixel_values": x})[0]
    adjusted = _session(out / "model.onnx").run(None, {"pixel_values": x})[0]
    np.testing.assert_allclose(adjusted, z / 2.5 + adjustment, rtol=0, atol=1e-5)
    with pytest.raises(Exception, match="adjustment must be 4 finite numbers"):
        export_onnx(runs["adaptformer"], tmp_path / "bad", adjustment=np.zeros(3))
    with pytest.raises(Exception, match="temperature must be"):
        export_onnx(runs["adaptformer"], tmp_path / "bad", temperature=0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adjusted"]  # nothing partial left


def test_cli_and_refusals_are_one_line(runs, tmp_path, capsys, monkeypatch):
    from longtail.io import read_yaml, write_yaml

    def refused(*args: str) -> str:
        assert main(["export", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("longtail export: error: ")
        return err

    out = tmp_path / "cli"
    assert main(["export", str(runs["bitfit"]), "--out", str(out), "--format", "onnx", "--quantize"]) == 0
    assert "onnxruntime" in capsys.readouterr().out
    assert {"model.onnx", "model.int8.onnx", "class_names.json", "export.json", "README.md"} == {
        p.name for p in out.iterdir()}
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["format"] == "onnx" and manifest["opset"] >= 17 and manifest["input"]["dtype"] == "float32"
    assert manifest["preprocessing"]["center_crop"] == [16, 16] and manifest["source"]["adapter"] == "bitfit"
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert "exists, not overwritten" in refused(str(runs["bitfit"]), "--out", str(existing), "--format", "onnx")
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    assert "is for --format onnx" in refused(str(runs["bitfit"]), "--out", str(tmp_path / "q"), "--quantize")
    # a probe on features without a backbone (the synthetic_features preset, own embeddings)
    synthetic = tmp_path / "synthetic_probe"
    shutil.copytree(runs["probe"], synthetic)
    config = read_yaml(synthetic / "config.yaml")
    config["train"], config["absolute_paths"]["train"] = "synthetic_features:train", None
    write_yaml(synthetic / "config.yaml", config)
    assert "record no image backbone" in refused(str(synthetic), "--out", str(tmp_path / "s"), "--format", "onnx")
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # not installed
    assert "pip install 'longtail[onnx]'" in refused(str(runs["bitfit"]), "--out", str(tmp_path / "n"),
                                                     "--format", "onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli", "existing", "synthetic_probe"]
