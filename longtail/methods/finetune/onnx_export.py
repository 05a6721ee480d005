"""Export a run as one ONNX graph from normalised pixels to logits, for onnxruntime alone.

`export_onnx(RUN, OUT)` writes OUT (a new folder, staged next to it and renamed when complete)
with `model.onnx` (input `pixel_values` (batch, 3, S, S) float32, normalised; output `logits`
(batch, C) float32; the batch axis is dynamic), `model.int8.onnx` with `quantize`
(onnxruntime's `quantize_dynamic`: int8 weights, activations quantised on the fly),
`class_names.json`, `export.json` and a README.md whose snippet needs numpy + PIL +
onnxruntime only. Both models carry `class_names` and `preprocessing` (JSON) in their
metadata_props, so `model.onnx` alone is enough to predict.

* fit layout (fit runs, soups, MonoSoup edits, LT-Soups soup/ and final/): the eval-mode
  FineTuneModel, `model(x)["z_hat"]` as `predict_logits` computes it (adapter, head and Sage's
  FIT included). Adapters that fold exactly (export.FOLDABLE and the in-place ones) are folded
  into the CLIP weights first (a plain graph, and what int8 quantisation handles best); the
  others (adaptformer, sg-adapter, vpt) stay modules of the graph.
* probe runs: the backbone named in the training feature file's meta (`longtail features`
  records name, model id, feature kind, preprocessing and a weights fingerprint), rebuilt and
  checked against that fingerprint, then the Probe's logits (L2 normalisation, zero-shot
  interpolation alpha, post-hoc tau log pi, temperature; `Probe.logits`). A feature file with
  no loadable backbone (the synthetic_features preset, your own embeddings) is refused.

Post-hoc terms baked into the graph: out = z / temperature + adjustment (a (C,) deployment
prior correction such as log q - log p); neither is added to the graph when unset.

Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)` (opset 20 unless
`opset`). With torch 2.13 both exporters give the same logits (max abs diff < 2e-5) for tiny
CLIP with LoRA / AdaptFormer / BitFit and EfficientNet-Lite, but the TorchScript one needs no
onnxscript, exports these models 5-20x faster (0.1-1.5 s against 3-7 s) and exists in every
torch the package supports (>= 2.1; `dynamo=` appeared in 2.5). Batch is the only dynamic
axis, so the values it traces as constants (image size, sequence length) are fixed anyway.
"""

from __future__ import annotations

import json
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from longtail.errors import ConfigError, DataError
from longtail.io import check_writable, read_yaml, staged_folder, write_json
from longtail.models.preprocess import InputSpec

MODEL, INT8_MODEL, CLASS_NAMES, MANIFEST = "model.onnx", "model.int8.onnx", "class_names.json", "export.json"
INPUT, OUTPUT = "pixel_values", "logits"
INSTALL = "ONNX export needs onnx and onnxruntime: pip install 'longtail[onnx]'"


def require_onnx() -> None:
    """One-line ConfigError unless onnx and onnxruntime import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ConfigError(INSTALL) from err


# --- graphs ---------------------------------------------------------------------------------------


class FitLogits(nn.Module):
    """pixels -> z_hat of a FineTuneModel (what predict_logits returns)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)["z_hat"]


class ProbeLogits(nn.Module):
    """pixels -> backbone features -> `Probe.logits` (same operations, in torch)."""

    def __init__(self, backbone: nn.Module, probe) -> None:
        super().__init__()
        from longtail.methods.probe.model import log_prior

        self.backbone, self.head, self.zero_shot = backbone, probe.head, probe.zero_shot
        self.normalize, self.alpha, self.tau = probe.normalize, probe.alpha, probe.posthoc_tau
        self.temperature = probe.temperature
        self.register_buffer("log_prior", torch.as_tensor(log_prior(probe.class_counts), dtype=torch.float32))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.backbone.forward_features(pixels).float()
        if self.normalize:
            x = torch.nn.functional.normalize(x, dim=-1)
        z = self.head(x)
        if self.zero_shot is not None and self.alpha != 1.0:
            zs = self.zero_shot(x)
            z = zs if self.alpha == 0.0 else (1.0 - self.alpha) * zs + self.alpha * z
        if self.tau != 0.0:
            z = z - self.tau * self.log_prior
        return z / self.temperature


class PostHoc(nn.Module):
    """z / temperature + adjustment, each only when set."""

    def __init__(self, inner: nn.Module, temperature: float, adjustment: torch.Tensor | None) -> None:
        super().__init__()
        self.inner, self.temperature = inner, temperature
        self.register_buffer("adjustment", adjustment)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        z = self.inner(pixels)
        if self.temperature != 1.0:
            z = z / self.temperature
        return z if self.adjustment is None else z + self.adjustment


# --- what a run exports ---------------------------------------------------------------------------------


def preprocessing(transform, spec: InputSpec | None = None) -> dict[str, Any]:
    """An EvalTransform in words a reader can reimplement (+ the fit run's size and resize ratio)."""
    size = transform.size
    crop = None if transform.crop_size is None else [int(v) for v in transform.crop_size]
    out = {"resize_shorter_side": size if isinstance(size, int) else None,
           "resize": None if isinstance(size, int) else [int(v) for v in size],  # exact (h, w)
           "center_crop": crop, "interpolation": transform.resample, "rescale": 1 / 255,
           "mean": [float(v) for v in transform.mean], "std": [float(v) for v in transform.std],
           "input_size": [int(v) for v in transform.output_size]}
    if spec is not None:
        out.update(size=spec.size, test_resize_ratio=spec.test_resize_ratio)
    return out


def _fit_graph(run_dir: Path) -> tuple[nn.Module, list[str], dict[str, Any], dict[str, Any]]:
    """(graph, class names, preprocessing, manifest details) of a fit-layout folder."""
    from longtail.methods.finetune.augment import test_transform
    from longtail.methods.finetune.export import ExportConfig, fold_adapter, foldable, plan_export
    from longtail.methods.finetune.loading import load_finetuned
    from longtail.models.clip import CLIPBackbone

    plan = plan_export(run_dir, ExportConfig(format="longtail"))  # the layout checks, one-line errors
    model, info = load_finetuned(run_dir, device="cpu")
    # in the weights: in-place adapters anywhere, SSF / LoRA folded into CLIP (not beside FIT's frozen copy)
    folded = foldable(plan.fit.adapter) and not plan.fit.feature_interchange
    if folded and isinstance(model.backbone, CLIPBackbone):
        fold_adapter(model)
    elif plan.fit.adapter in ("ssf", "lora"):
        folded = False
    fit = plan.fit
    details = {"graph": "backbone + adapter + head (FineTuneModel z_hat)", "adapter_folded": folded,
               "source": {"run": str(run_dir.resolve()), "kind": "fit", "method": fit.method,
                          "backbone": fit.backbone, "adapter": fit.adapter, "dataset": fit.dataset}}
    spec = plan.input_spec
    return FitLogits(model.eval()), list(info["class_names"]), preprocessing(test_transform(spec), spec), details


def _probe_graph(run_dir: Path, config: dict[str, Any]) -> tuple[nn.Module, list[str], dict[str, Any], dict[str, Any]]:
    """(graph, class names, preprocessing, manifest details) of a probe run."""
    from longtail.data.features import read_meta
    from longtail.methods.probe.model import Probe
    from longtail.methods.probe.run import saved_feature_path
    from longtail.models.recorded import recorded_backbone

    train = saved_feature_path(config, "train", run_dir)
    meta = read_meta(train) or {}
    probe = Probe.load(run_dir / "head")
    backbone = recorded_backbone(meta, f"{run_dir}: the probe's training features ({train})")
    if int(backbone.feature_dim) != probe.dim:
        raise DataError(f"{run_dir}: backbone features are {backbone.feature_dim}-d, the probe's {probe.dim}-d")
    names = probe.class_names or [str(c) for c in range(probe.num_classes)]
    details = {"graph": "backbone forward_features + probe logits (normalise, alpha, posthoc tau, temperature)",
               "adapter_folded": False,
               "probe": {"normalize": probe.normalize, "alpha": probe.alpha, "posthoc_tau": probe.posthoc_tau,
                         "temperature": probe.temperature, "zero_shot": probe.zero_shot is not None},
               "source": {"run": str(run_dir.resolve()), "kind": "probe", "method": config["probe"].get("method"),
                          "backbone": meta["backbone"], "model_id": meta.get("model_id"),
                          "features": train, "dataset": meta.get("dataset") or meta.get("data")}}
    return ProbeLogits(backbone.eval(), probe).eval(), list(names), preprocessing(backbone.transform), details  # == the recorded one


def run_graph(run_dir: str | Path) -> tuple[nn.Module, list[str], dict[str, Any], dict[str, Any]]:
    """(eval-mode module pixels -> logits, class names, preprocessing, manifest details) of a run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run folder not found: {run_dir}")
    config = read_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
    if isinstance(config, dict) and config.get("kind") == "probe":
        return _probe_graph(run_dir, config)
    return _fit_graph(run_dir)


# --- writing --------------------------------------------------------------------------------------


def _check_post_hoc(adjustment, temperature: float, num_classes: int) -> torch.Tensor | None:
    if not np.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"temperature must be a finite number > 0, got {temperature}")
    if adjustment is None:
        return None
    adj = np.asarray(adjustment, dtype=np.float64)
    if adj.shape != (num_classes,) or not np.all(np.isfinite(adj)):
        raise ConfigError(f"adjustment must be {num_classes} finite numbers (one per class), got shape {adj.shape}")
    return torch.as_tensor(adj, dtype=torch.float32)


@contextmanager
def _quiet():
    """Silence the exporter's tracer / deprecation warnings and onnxruntime's root-logger advice."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def write_onnx(graph: nn.Module, path: Path, size: list[int], opset: int | None) -> None:
    """torch.onnx.export with a dynamic batch axis (TorchScript exporter, see the module docstring)."""
    import inspect

    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    example = torch.zeros(2, 3, *size)
    with _quiet(), torch.no_grad():
        torch.onnx.export(graph, (example,), str(path), input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                          opset_version=opset, **legacy)


def set_metadata(path: Path, props: dict[str, str]) -> int:
    """Write `props` into the model's metadata_props; return its (default-domain) opset."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


QUANTIZED_OPS = ("MatMul", "Gemm")  # dynamic quantisation's home: linear layers (ViT blocks, heads)


def write_int8(source: Path, target: Path) -> None:
    """int8 dynamic quantisation of the linear layers (weights int8, activations quantised per
    batch at run time). Convolutions stay fp32: measured on EfficientNet-Lite0 (real Tiny-ImageNet
    photos, benchmarks/predict_speed.py), quantising its convolutions too cost 22 points of top-1
    and ran at half the fp32 speed (depthwise convolutions have no fast int8 kernel there)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8,
                         op_types_to_quantize=list(QUANTIZED_OPS))


def export_onnx(run_dir: str | Path, out_dir: str | Path, *, adjustment: np.ndarray | None = None,
                temperature: float = 1.0, quantize: bool = False, opset: int | None = None) -> Path:
    """Write the ONNX export of `run_dir` to the new folder `out_dir` (see the module docstring)."""
    from longtail.runs import package_versions

    out = Path(out_dir)
    if out.exists():
        raise ConfigError(f"{out} exists, not overwritten")
    check_writable(out)
    require_onnx()
    graph, class_names, pre, details = run_graph(run_dir)
    adj = _check_post_hoc(adjustment, float(temperature), len(class_names))
    graph = PostHoc(graph, float(temperature), adj).eval()
    with staged_folder(out) as staging:
        write_onnx(graph, staging / MODEL, pre["input_size"], opset)
        props = {"class_names": json.dumps(class_names), "preprocessing": json.dumps(pre),
                 "longtail_export": json.dumps({"input": INPUT, "output": OUTPUT, "source": details["source"]})}
        used_opset = set_metadata(staging / MODEL, props)
        if quantize:
            write_int8(staging / MODEL, staging / INT8_MODEL)
            set_metadata(staging / INT8_MODEL, props)
        write_json(staging / CLASS_NAMES, class_names)
        manifest = {
            "format": "onnx", "library": "onnxruntime", "model": MODEL, "int8_model": INT8_MODEL if quantize else None,
            "exporter": "torch.onnx.export (TorchScript, dynamo=False)", "opset": used_opset,
            "input": {"name": INPUT, "shape": ["batch", 3, *pre["input_size"]], "dtype": "float32",
                      "layout": "NCHW, normalised (see preprocessing)"},
            "output": {"name": OUTPUT, "shape": ["batch", len(class_names)], "dtype": "float32"},
            **{k: v for k, v in details.items() if k != "source"},
            "post_hoc": {"formula": "logits = z / temperature + adjustment", "temperature": float(temperature),
                         "adjustment": None if adj is None else adj.tolist()},
            "class_names": CLASS_NAMES, "preprocessing": pre, "source": details["source"],
            "torch_version": torch.__version__, "longtail_version": package_versions()["longtail"],
        }
        write_json(staging / MANIFEST, manifest)
        (staging / "README.md").write_text(readme(manifest), encoding="utf-8")
    return out


# --- README -----------------------------------------------------------------------------------------


def snippet(manifest: dict[str, Any], folder: str = "path/to/export") -> str:
    """numpy + PIL + onnxruntime code that predicts one image with the export at `folder`."""
    pre = manifest["preprocessing"]
    if pre["resize"] is not None:
        resize = 'image = image.resize(tuple(p["resize"][::-1]), Image.Resampling[p["interpolation"].upper()])\n'
    else:
        resize = ('(w, h), r = image.size, p["resize_shorter_side"]  # shorter side to r, as the run did\n'
                  "image = image.resize((r, int(r * h / w)) if w <= h else (int(r * w / h), r), "
                  'Image.Resampling[p["interpolation"].upper()])\n')
    crop = ("" if pre["center_crop"] is None else
            'ch, cw = p["center_crop"]\nleft, top = (image.width - cw) // 2, (image.height - ch) // 2\n'
            "image = image.crop((left, top, left + cw, top + ch))\n")
    return ("import json\nimport numpy as np\nimport onnxruntime as ort\nfrom PIL import Image\n\n"
            f"DIR, IMAGE = {folder!r}, \"image.jpg\"\n"
            f'session = ort.InferenceSession(f"{{DIR}}/{manifest["model"]}", providers=["CPUExecutionProvider"])\n'
            "meta = session.get_modelmeta().custom_metadata_map  # class names + preprocessing ride in the model\n"
            'p, classes = json.loads(meta["preprocessing"]), json.loads(meta["class_names"])\n'
            'image = Image.open(IMAGE).convert("RGB")\n'
            f"{resize}{crop}"
            "x = np.asarray(image, dtype=np.float32) / 255\n"
            'x = ((x - np.float32(p["mean"])) / np.float32(p["std"])).transpose(2, 0, 1)[None]\n'
            f'logits = session.run(None, {{"{INPUT}": x}})[0]\n'
            "print(classes[int(logits[0].argmax())])\n")


def readme(manifest: dict[str, Any]) -> str:
    """README.md text for an ONNX export described by `manifest` (export.json)."""
    src, pre, post = manifest["source"], manifest["preprocessing"], manifest["post_hoc"]
    resize = (f"shorter side to {pre['resize_shorter_side']}" if pre["resize"] is None
              else f"resize to {pre['resize'][0]} x {pre['resize'][1]}")
    crop = "" if pre["center_crop"] is None else f", centre crop {pre['center_crop'][0]} x {pre['center_crop'][1]}"
    extra = [f"temperature {post['temperature']}"] if post["temperature"] != 1.0 else []
    extra += ["a per-class adjustment (export.json post_hoc.adjustment)"] if post["adjustment"] is not None else []
    int8 = (f"- `{manifest['int8_model']}`: the same graph with int8 weights (onnxruntime dynamic quantisation; "
            "check its accuracy on your data)\n") if manifest.get("int8_model") else ""
    return (
        f"# {src.get('method')} on {src.get('dataset')} ({src.get('backbone')}, {src['kind']} run) as ONNX\n\n"
        f"Exported by `longtail export --format onnx` (longtail {manifest['longtail_version']}, torch "
        f"{manifest['torch_version']}, opset {manifest['opset']}) from `{src['run']}`.\n\n"
        f"- `{manifest['model']}`: {manifest['graph']}"
        f"{' with the adapter folded into the weights' if manifest['adapter_folded'] else ''}; input "
        f"`{manifest['input']['name']}` {manifest['input']['shape']} float32 (normalised), output "
        f"`{manifest['output']['name']}` {manifest['output']['shape']}"
        f"{'; logits include ' + ' and '.join(extra) if extra else ''}\n{int8}"
        f"- preprocessing: {resize} ({pre['interpolation']}){crop}, x / 255, mean {pre['mean']}, std {pre['std']}\n"
        "- class names (`class_names.json`) and preprocessing are also in the model's metadata_props; "
        "`export.json` holds all of the above\n\n"
        f"```python\n{snippet(manifest)}```\n"
    )
