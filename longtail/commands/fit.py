"""`longtail fit`: fine-tune a backbone (CLIP: LIFT, LIFT+, Sage, baselines; CNNs: partial FT,
BitFit, norm tuning, full FT) from three presets."""

from __future__ import annotations

import argparse
import json

HELP = "fine-tune a backbone with adapters (LIFT, LIFT+, Sage, partial / linear / full FT) on images"
DESCRIPTION = """\
Fine-tune with presets on three axes, as in LIFT+: data (-d, any dataset name of the data
layer), backbone (-b), method (-m), then KEY=VALUE overrides of any config field (unknown
keys are an error listing the valid ones; dict fields take dotted keys, e.g.
loss_options.gamma=0.06). Names are checked before any data is read. Writes a run folder with
config.yaml, env.json, data_stats.json, resumable checkpoints, the trained weights
(model.safetensors + model_config.json), metrics.json (all/many/medium/few/ECE,
images/s, GPU memory), per_class.csv and report.html.

CNNs (efficientnet_lite0/2) take the tuning modes none, bitfit, norm-tuning, partial and full;
partial_ft trains the last block(s) + head conv from a frozen-prefix cache (prefix_cache=auto:
the frozen bottom runs once per image and view, stored fp16 on disk and reused across runs).

Multi-GPU / multi-node: launch the same command with `accelerate launch -m longtail fit ...`
or `torchrun --nproc_per_node N -m longtail fit ...`; batch_size is the global batch.

examples:
  longtail fit -d synthetic_images -b tiny_clip -m lift epochs=1         # offline smoke run
  longtail fit -d cifar100_ir100 -b clip_vit_b16 -m lift --out runs/lift_c100 root=DATA/cifar100
  longtail fit -d imagenet_lt -b clip_vit_b16 -m sage root=/data/imagenet tte=true
  longtail fit -d cifar10-jpeg.zip -b efficientnet_lite0 -m partial_ft --option ir=100   # CIFAR-10-LT
  longtail fit -d tiny-imagenet-100a.zip -b efficientnet_lite0 -m partial_ft --option ir=100 adapter_options.num_blocks=2
  longtail fit --out runs/lift_c100 --resume                            # continue an interrupted run
  longtail fit -d synthetic_images -b tiny_clip -m full_ft steps=20 ema_decay=0.99 n_evals=2 val_per_class=2
  longtail fit --list
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from longtail.config import add_option_argument, add_override_arguments

    p.add_argument("-d", "--data", help="dataset name of the data layer (see longtail list datasets), e.g. cifar100_ir100")
    p.add_argument("-b", "--backbone", help="backbone preset, hub id or model folder")
    p.add_argument("-m", "--method",
                   help="method preset: lift, lift_plus, sage, zero_shot, linear_probe, partial_ft, full_ft")
    add_override_arguments(p, "epochs=1 lr=0.02 loss_options.tau=0.5")
    add_option_argument(p)
    p.add_argument("--out", help="run folder (default runs/fit-TIMESTAMP); never overwritten unless --resume")
    p.add_argument("--resume", action="store_true", help="continue the interrupted fit run in --out")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--list", action="store_true", help="list presets and config keys, then exit")
    p.add_argument("--json", action="store_true", help="print the summary metrics as JSON on stdout")


def resume_config(args: argparse.Namespace, overrides: dict):
    """The saved config of the fit run in --out; -d/-b/-m and KEY=VALUE must agree with it
    (only runtime keys may change), each disagreement a one-line error naming the key."""
    from longtail.config import apply_overrides
    from longtail.errors import ConfigError
    from longtail.methods.finetune.runner import RESUME_SAFE_KEYS, config_from_run

    if not args.out:
        raise ConfigError("--resume needs --out RUN_FOLDER (the interrupted run)")
    saved = config_from_run(args.out)
    flags = {"dataset": args.data, "backbone": args.backbone, "method": args.method}
    for key, value in flags.items():
        if value is not None and value != getattr(saved, key):
            raise ConfigError(f"--resume: the run was made with {key}={getattr(saved, key)}, not {value}")
    cfg = apply_overrides(saved, overrides)
    for key in overrides:
        head = key.split(".")[0]
        if head not in RESUME_SAFE_KEYS and getattr(cfg, head) != getattr(saved, head):
            raise ConfigError(f"--resume: '{key}' differs from the run's; only {', '.join(RESUME_SAFE_KEYS)} may change")
    return cfg


def run(args: argparse.Namespace) -> int:
    from longtail.config import command_overrides
    from longtail.errors import ConfigError
    from longtail.eval.metrics import summary
    from longtail.io import to_jsonable
    from longtail.methods.finetune import config as fc
    from longtail.methods.finetune import presets
    from longtail.methods.finetune.runner import fit

    if args.list:
        print(f"datasets with fine-tuning settings: {', '.join(presets.DATASET_SETTINGS)} (any dataset works)")
        for title, reg in (("backbone", presets.BACKBONE_PRESETS), ("method", presets.METHOD_PRESETS)):
            print(f"{title} presets: {', '.join(reg.names())}")
        print(f"config keys: {', '.join(fc.valid_keys())}")
        return 0
    overrides = command_overrides(args.overrides, options={"data_options": args.option})
    if args.resume:
        cfg = resume_config(args, overrides)
    else:
        missing = [flag for flag, value in (("-d", args.data), ("-b", args.backbone), ("-m", args.method)) if not value]
        if missing:
            raise ConfigError(f"missing {', '.join(missing)} (see longtail fit --list)")
        cfg = presets.build_config(args.data, args.backbone, args.method, overrides)
    if args.out and not args.resume:
        from longtail.io import check_writable

        check_writable(args.out)  # before the data, the backbone and the text embeddings load
    result = fit(cfg, out=args.out, resume=args.resume, report=not args.no_report)
    if result.run_dir is None or "all" not in result.metrics:  # a non-main DDP process
        return 0
    extra = {k: result.metrics.get(k) for k in TRAINING_KEYS}
    if args.json:  # every command's --json contract (eval.metrics.summary), + how training went
        print(json.dumps(to_jsonable(summary(result.metrics) | extra)))
    else:
        print(f"run folder: {result.run_dir}")
        line = {k: result.metrics.get(k) for k in percent_keys()} | extra
        print("  ".join(_shown(k, v) for k, v in line.items()))
    return 0


TRAINING_KEYS = ("train_images_per_s", "max_gpu_memory_gb", "num_trainable")


def percent_keys() -> tuple[str, ...]:
    """The summary line's accuracies (`eval.metrics.SHOT_GROUPS`) and ECE, shown in %."""
    from longtail.eval.metrics import SHOT_GROUPS

    return (*SHOT_GROUPS, "ece")


def _shown(key: str, value) -> str:
    """key=value for the summary line: accuracies and ECE in % as `probe` prints them (issue 22
    item 18; --json keeps fractions), n/a for an empty group, other numbers to 4 digits."""
    if key in percent_keys():
        return f"{key}={'n/a' if value is None else f'{100 * value:.1f}%'}"
    return f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
