"""`longtail soup`: merge fine-tuned checkpoints (model soups) or run the LT-Soups pipeline."""

from __future__ import annotations

import argparse

HELP = "merge fine-tuned checkpoints (uniform/weighted/recursive/WiSE-FT/greedy soups) or run LT-Soups"
DESCRIPTION = """\
Merge checkpoints of one architecture in weight space, streaming one ingredient at a time
(peak memory about two models, float32 accumulation, output in the input dtype), into a new
run folder with the merged safetensors weights and soup_log.json. Ingredients are
.safetensors files or run folders (`longtail fit` runs, LT-Soups ingredients). With --eval
(run folders only), each ingredient and each soup is evaluated on the runs' test split and
compared side by side (all / balanced / many / medium / few, and the head-tail ratio).

methods: uniform, weighted (--weights), recursive (LT-Soups: soup <- (1-lam) soup + lam
theta_i from --base, --lam 0.7), wise (WiSE-FT: (1-alpha) base + alpha fine-tuned; several
--alpha values give a sweep), greedy (add an ingredient only if balanced validation
accuracy strictly improves; validation = the first --val-per-class test images per class,
metrics then use the rest; decisions in greedy.jsonl), lt_soups (the whole LT-Soups
pipeline: subsampled full fine-tunes, soup, classifier re-tuning). --base zero-shot
rebuilds theta_0 (pretrained encoder + text-initialised head) from the ingredients' run.

examples:
  longtail soup runs/ft1 runs/ft2 runs/ft3 --eval --out runs/soup
  longtail soup -m wise runs/ft1 --base zero-shot --alpha 0 0.25 0.5 0.75 1 --eval
  longtail soup -m greedy runs/ft* --val-per-class 10 --eval
  longtail soup --recipe soup.yaml --out runs/soup2
  longtail soup -m lt_soups -d synthetic_images -b tiny_clip --out runs/lts --set max_steps=20
  longtail soup -m lt_soups -d cifar100_ir100 -b clip_vit_b16 --out runs/lts --job 3   # one job
  longtail soup -m lt_soups ... --out runs/lts --stage finish                          # merge + stage 2
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ingredients", nargs="*", help="checkpoints: .safetensors files or run folders, in merge order")
    p.add_argument("-m", "--method", default="uniform",
                   help="uniform (default), weighted, recursive, wise, greedy, lt_soups")
    p.add_argument("--recipe", help="YAML soup recipe (method, base, ingredients, parameters)")
    p.add_argument("--base", help="theta_0 checkpoint for recursive/wise, or 'zero-shot'")
    p.add_argument("--weights", type=float, nargs="+", help="weighted: one weight per ingredient")
    p.add_argument("--lam", type=float, help="recursive: merge coefficient lambda (default 0.7)")
    p.add_argument("--alpha", type=float, nargs="+", help="wise: alpha value(s); several = sweep")
    p.add_argument("--eval", action="store_true", help="evaluate ingredients and soups side by side")
    p.add_argument("--val-per-class", type=int, help="greedy: test images per class held out for selection")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--out", help="run folder to create (default runs/soup-TIMESTAMP); never overwritten")
    g = p.add_argument_group("lt_soups pipeline")
    g.add_argument("-d", "--data", default="synthetic_images", help="dataset spec (open_images)")
    g.add_argument("-b", "--backbone", default="tiny_clip", help="backbone name (load_backbone)")
    g.add_argument("--data-option", nargs="*", default=[], metavar="KEY=VALUE", help="open_images options")
    g.add_argument("--job", type=int, help="run only ingredient job N (0-based; e.g. $SLURM_ARRAY_TASK_ID)")
    g.add_argument("--stage", default="all", help="all (default), prepare, ingredients, finish")
    g.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other LTSoupsConfig fields")


def _run_lt_soups(args: argparse.Namespace) -> int:
    from longtail.config import parse_overrides, update_dataclass
    from longtail.errors import ConfigError
    from longtail.soups.lt_soups import LTSoupsConfig, run_lt_soups

    if args.out is None:
        raise ConfigError("lt_soups needs --out: the pipeline folder shared by every job")
    cfg = LTSoupsConfig(data_spec=args.data, backbone=args.backbone, device=args.device,
                        data_options=parse_overrides(args.data_option))
    cfg = update_dataclass(cfg, parse_overrides(args.set))
    cfg.__post_init__()
    folder = run_lt_soups(cfg, args.out, job=args.job, stage=args.stage)
    table = folder / "comparison.json"
    if args.job is None and table.exists():
        import json

        from longtail.soups.soup_run import format_table

        print(format_table(json.loads(table.read_text())))
    print(f"LT-Soups: {folder}")
    return 0


def run(args: argparse.Namespace) -> int:
    from longtail.errors import ConfigError
    from longtail.soups.recipe import SoupRecipe, load_recipe
    from longtail.soups.soup_run import format_table, make_soup

    if args.method == "lt_soups":
        return _run_lt_soups(args)
    if args.recipe:
        if args.ingredients:
            raise ConfigError("give ingredients either on the command line or in --recipe, not both")
        recipe = load_recipe(args.recipe)
    else:
        if not args.ingredients:
            raise ConfigError("no ingredients: give checkpoint files/run folders or --recipe")
        params: dict = {}
        if args.lam is not None:
            params["lam"] = args.lam
        if args.alpha:
            params["alpha"] = args.alpha if len(args.alpha) > 1 else args.alpha[0]
        recipe = SoupRecipe(method=args.method, ingredients=list(args.ingredients), weights=args.weights,
                            base=args.base, parameters=params)
    folder = make_soup(recipe, args.out, evaluate=args.eval, val_per_class=args.val_per_class, device=args.device)
    table = folder / "comparison.json"
    if table.exists():
        import json

        print(format_table(json.loads(table.read_text())))
    print(f"soup written to {folder}")
    return 0
