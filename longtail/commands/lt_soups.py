"""`longtail lt-soups`: the LT-Soups pipeline (subsampled full fine-tunes, soup, re-tuned head)."""

from __future__ import annotations

import argparse

HELP = "LT-Soups: fine-tune on balanced subsets, merge them into a soup, re-tune the classifier"
DESCRIPTION = """\
LT-Soups (docs/methods.md §2.4-2.5) in one pipeline folder (--out): for each balance
exponent i in F (default 0..floor(log2 rho): 0..6 on CIFAR-100-LT rho=100) and each of K
branches (branches=2), a full fine-tune of CLIP on the subset n'_c = min(n_c, n_min 2^i)
(`ingredients/e{i}_b{k}`, a fit run; adapter=partial adapter_options.num_blocks=1
prefix_cache=auto prefix_views=2 for last-block fine-tunes from one frozen-prefix cache
entry, the CPU / CNN recipe); then the recursive soup of the ingredients with the
zero-shot model (`soup/`, a soup run) and stage 2, the classifier re-tuned on all the data
(`final/`, a fit run); comparison.json / comparison.html put them side by side.
On CIFAR-100-LT the long-tailed set is drawn as the authors' script draws it
(data_options.selection=lt_soups; `fit` uses LIFT's draw, selection=ldam).

Every ingredient is an independent job (--job N, N in 0..|F|*K-1): run them as an array on
several GPUs or machines, then --stage finish. A finished job is skipped; an interrupted one
continues from its checkpoint. Settings are KEY=VALUE pairs (see --list); the pipeline's
plan.yaml refuses a different setting in the same folder.

examples:
  longtail lt-soups -d synthetic_images -b tiny_clip --out runs/lts exponents=[0,1] branches=1 max_steps=3
  # SLURM, CIFAR-100-LT rho=100: |F| * K = 7 * 2 = 14 jobs
  #SBATCH --array=0-13
  longtail lt-soups -d cifar100_ir100 -b clip_vit_b16 --out runs/lts --job $SLURM_ARRAY_TASK_ID
  longtail lt-soups -d cifar100_ir100 -b clip_vit_b16 --out runs/lts --stage finish
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from longtail.config import add_override_arguments

    p.add_argument("-d", "--data", help="dataset name of the data layer (e.g. cifar100_ir100, synthetic_images)")
    p.add_argument("-b", "--backbone", help="backbone name (e.g. clip_vit_b16, tiny_clip, efficientnet_lite0)")
    add_override_arguments(p, "branches=1 max_steps=3 data_options.selection=ldam")
    p.add_argument("--out", help="the pipeline folder shared by every job")
    p.add_argument("--job", type=int, help="run only ingredient job N (0-based; e.g. $SLURM_ARRAY_TASK_ID)")
    p.add_argument("--stage", default="all", help="all (default), prepare, ingredients, finish")
    p.add_argument("--list", action="store_true", help="list the settings (KEY=VALUE keys) and exit")
    p.add_argument("--no-report", action="store_true", help="skip every run's report.html and comparison.html")


# CIFAR-100-LT as the authors' script draws it: `default_rng(0)` per class (data layer option
# selection=lt_soups), not LIFT's RandomState(0) that `fit` uses (5,585 of 10,847 images coincide)
AUTHORS_DATA = {name: {"data_options.selection": "lt_soups"}
                for name in ("cifar100_lt", "cifar100_ir100", "cifar100_ir50", "cifar100_ir10")}


# what a backbone preset of `longtail fit` contributes (EfficientNet: 128 px, head_init=auto);
# the LT-Soups recipe keeps its own batch size and cosine scale
BACKBONE_KEYS = ("backbone_options", "head_init", "num_workers", "eval_batch_size")


def build_config(data: str, backbone: str, overrides: dict):
    """LTSoupsConfig from -d/-b, the dataset's fine-tuning settings (e.g. CIFAR's decode size),
    the backbone preset's input settings, the authors' CIFAR-100-LT draw, then the KEY=VALUE
    overrides; checked before any data is read."""
    from longtail.config import apply_overrides
    from longtail.methods.finetune.presets import BACKBONE_PRESETS, DATASET_SETTINGS
    from longtail.soups.lt_soups import LTSoupsConfig

    settings = {k: v for k, v in DATASET_SETTINGS.get(data, {}).items() if k in ("decode_size", "num_workers")}
    if backbone in BACKBONE_PRESETS:
        settings.update({k: v for k, v in BACKBONE_PRESETS.get(backbone).items() if k in BACKBONE_KEYS})
    cfg = LTSoupsConfig(dataset=data, backbone=backbone)
    return apply_overrides(cfg, {**settings, **AUTHORS_DATA.get(data, {}), **overrides})


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from longtail.config import parse_overrides
    from longtail.errors import ConfigError
    from longtail.io import check_writable
    from longtail.soups.lt_soups import LTSoupsConfig, run_lt_soups

    if args.list:
        print(f"settings: {', '.join(f.name for f in dataclasses.fields(LTSoupsConfig))}")
        return 0
    missing = [flag for flag, value in (("-d", args.data), ("-b", args.backbone), ("--out", args.out)) if not value]
    if missing:
        raise ConfigError(f"lt-soups needs {', '.join(missing)} (--out: the pipeline folder shared by every job)")
    cfg = build_config(args.data, args.backbone, parse_overrides(args.overrides))
    check_writable(args.out)
    folder = run_lt_soups(cfg, args.out, job=args.job, stage=args.stage, report=not args.no_report)
    table = folder / "comparison.json"
    if args.job is None and table.exists():
        import json

        from longtail.soups.soup_run import format_table

        print(format_table(json.loads(table.read_text())))
    print(f"LT-Soups: {folder}")
    return 0
