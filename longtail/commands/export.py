"""`longtail export`: write a fine-tuned run as a folder that transformers / peft / torch load alone."""

from __future__ import annotations

import argparse

HELP = "export a run for transformers / peft / plain torch / onnxruntime (merged weights, LoRA adapter, ONNX)"
DESCRIPTION = """\
Write a fit run (or a soup, MonoSoup edit, LT-Soups soup/ or final/ of fit runs) as a new
folder the field's libraries load without longtail:

  merged    CLIP: the adapter folded into the weights (full, partial, bitfit, norm-tuning,
            ssf, lora), the whole CLIPModel saved with save_pretrained, so CLIPModel /
            CLIPVisionModel.from_pretrained(DIR) give the run's features; EfficientNet-Lite:
            model.safetensors + config.json + the network as plain-torch source
  peft      LoRA runs (their default): adapter_config.json + adapter_model.safetensors for
            peft.PeftModel.from_pretrained(CLIPModel, DIR); the base model goes to DIR/base
            when it is not a hub id or folder (tiny_clip), or with --with-base
  longtail  the run's weights in the fit layout (any adapter, Sage's FIT), for load_finetuned
  auto      peft for LoRA runs, merged otherwise (default)
  onnx      model.onnx: one graph from normalised pixels to logits (dynamic batch) for
            onnxruntime, any adapter (foldable ones folded) and probe runs on features from
            `longtail features` (backbone + probe head); --quantize adds model.int8.onnx
            (int8 dynamic quantisation); class names and preprocessing in its metadata;
            needs pip install 'longtail[onnx]'

Every export also holds head.safetensors (cosine: weight, scale; linear: weight, bias),
class_names.json, export.json (format, feature, head, preprocessing, provenance) and a
README.md with a short load-and-predict snippet. Adapters that add modules (adaptformer,
sg-adapter, vpt) do not fold into the weights and are refused unless --format longtail.
The folder is written under a temporary name and renamed when complete; an existing DIR is
never overwritten.

examples:
  longtail export runs/lift_c100 --out exports/lift_c100 --format longtail
  longtail export runs/full_ft --out exports/full_ft
  longtail export runs/lora --out exports/lora_adapter             # peft adapter folder
  longtail export runs/lora --out exports/lora_merged format=merged
  longtail export runs/lift --out exports/lift_onnx --format onnx --quantize
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from longtail.config import add_override_arguments

    p.add_argument("run", help="fit run folder (or a soup / MonoSoup / LT-Soups soup of fit runs; onnx: also a probe run)")
    p.add_argument("--out", required=True, help="folder to create (never overwritten)")
    add_override_arguments(p, "format=merged with_base=true; fields: format, with_base, quantize")
    p.add_argument("--format", help="auto (default), merged, peft, longtail or onnx (= format=...)")
    p.add_argument("--with-base", action="store_true", default=None,
                   help="peft: also write the base CLIP model to DIR/base (= with_base=true)")
    p.add_argument("--prior", help="onnx: bake the deployment prior into the graph: balanced | train | "
                   "FILE.csv of class,weight (docs/methods.md §13; default: as trained)")
    p.add_argument("--quantize", action="store_true", default=None,
                   help="onnx: also write model.int8.onnx, int8 dynamic quantisation (= quantize=true)")


def run(args: argparse.Namespace) -> int:
    from longtail.config import apply_overrides, command_overrides
    from longtail.io import read_json
    from longtail.methods.finetune.export import ExportConfig, export_run

    sugar = {"format": args.format, "with_base": args.with_base, "quantize": args.quantize}
    cfg = apply_overrides(ExportConfig(), command_overrides(args.overrides, sugar))
    if args.prior and cfg.format != "onnx":
        from longtail.errors import ConfigError

        raise ConfigError("--prior goes into an ONNX graph only: add --format onnx (or use longtail predict --prior)")
    if cfg.format == "onnx":
        from longtail.methods.finetune.onnx_export import export_onnx

        out = export_onnx(args.run, args.out, quantize=cfg.quantize, adjustment=_prior_adjustment(args.run, args.prior))
        print(f"exported {args.run} (onnx, loads with onnxruntime) to {out}; see {out / 'README.md'}")
        return 0
    out = export_run(args.run, args.out, cfg)
    manifest = read_json(out / "export.json")
    print(f"exported {args.run} ({manifest['format']}, loads with {manifest['library']}) to {out}; "
          f"see {out / 'README.md'}")
    return 0


def _prior_adjustment(run: str, prior: str | None):
    """log q - log p_source per class for `--prior` (None: the run's logits as trained)."""
    if prior is None:
        return None
    import numpy as np

    from longtail.errors import ConfigError
    from longtail.methods.predictor import Predictor

    if prior.startswith("estimate"):
        raise ConfigError("--prior estimate needs the images to predict; use longtail predict, or export with "
                          "the prior it wrote (--prior FILE.prior.csv)")
    predictor = Predictor.from_run(run, device="cpu")
    target, _ = predictor.target_prior(prior)
    return predictor.adjust(np.zeros((1, len(predictor.class_names))), target)[0]
