"""`longtail fit`: fine-tune a CLIP backbone (LIFT, LIFT+, Sage, baselines) from three presets."""

from __future__ import annotations

import argparse
import json

HELP = "fine-tune a backbone with adapters (LIFT, LIFT+, Sage, linear probe, full FT) on images"
DESCRIPTION = """\
Fine-tune with presets on three axes, as in LIFT+: data (-d), backbone (-b), method (-m),
then KEY=VALUE overrides of any config field (unknown keys are an error listing the valid
ones; dict fields take dotted keys, e.g. loss_options.gamma=0.06). Writes a run folder with
config.yaml, env.json, data_stats.json, resumable checkpoints, the trained weights
(adapter_model.safetensors + adapter_config.json), metrics.json (all/many/medium/few/ECE,
images/s, GPU memory), per_class.csv and report.html.

Multi-GPU / multi-node: launch the same command with `accelerate launch -m longtail fit ...`
or `torchrun --nproc_per_node N -m longtail fit ...`; batch_size is the global batch.

examples:
  longtail fit -d synthetic_images -b tiny_clip -m lift epochs=1         # offline smoke run
  longtail fit -d cifar100_ir100 -b clip_vit_b16 -m lift --out runs/lift_c100 root=DATA/cifar100
  longtail fit -d imagenet_lt -b clip_vit_b16 -m sage root=/data/imagenet tte=true
  longtail fit --out runs/lift_c100 --resume                            # continue an interrupted run
  longtail fit --list
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--data", help="data preset (see --list)")
    p.add_argument("-b", "--backbone", help="backbone preset, hub id or model folder")
    p.add_argument("-m", "--method", help="method preset: lift, lift_plus, sage, zero_shot, linear_probe, full_ft")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. epochs=1 lr=0.02")
    p.add_argument("--out", help="run folder (default runs/fit-TIMESTAMP); never overwritten unless --resume")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--list", action="store_true", help="list presets and config keys, then exit")
    p.add_argument("--json", action="store_true", help="print the summary metrics as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from longtail.config import parse_overrides
    from longtail.errors import ConfigError
    from longtail.methods.finetune import config as fc
    from longtail.methods.finetune import presets
    from longtail.methods.finetune.runner import RESUME_SAFE_KEYS, config_from_run, fit

    if args.list:
        for title, reg in (("data", presets.DATA_PRESETS), ("backbone", presets.BACKBONE_PRESETS),
                           ("method", presets.METHOD_PRESETS)):
            print(f"{title} presets: {', '.join(reg.names())}")
        print(f"config keys: {', '.join(fc.valid_keys())}")
        return 0
    overrides = parse_overrides(args.overrides)
    if args.resume:
        if not args.out:
            raise ConfigError("--resume needs --out RUN_FOLDER (the interrupted run)")
        bad = sorted(set(overrides) - set(RESUME_SAFE_KEYS))
        if bad:
            raise ConfigError(f"on --resume only {', '.join(RESUME_SAFE_KEYS)} may change, got {', '.join(bad)}")
        cfg = fc.apply_overrides(config_from_run(args.out), overrides)
    else:
        missing = [flag for flag, value in (("-d", args.data), ("-b", args.backbone), ("-m", args.method)) if not value]
        if missing:
            raise ConfigError(f"missing {', '.join(missing)} (see longtail fit --list)")
        cfg = presets.build_config(args.data, args.backbone, args.method, overrides)
    result = fit(cfg, out=args.out, resume=args.resume, report=not args.no_report)
    if result.run_dir is None or "all" not in result.metrics:  # a non-main DDP process
        return 0
    keys = ("all", "many", "medium", "few", "ece", "train_images_per_s", "max_gpu_memory_gb", "num_trainable")
    summary = {k: result.metrics.get(k) for k in keys}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"run folder: {result.run_dir}")
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    return 0
