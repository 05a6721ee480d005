"""`longtail soup`: merge fine-tuned checkpoints (model soups); LT-Soups is `longtail lt-soups`."""

from __future__ import annotations

import argparse

HELP = "merge fine-tuned checkpoints (uniform/weighted/recursive/WiSE-FT/greedy soups)"
DESCRIPTION = """\
Merge checkpoints of one architecture in weight space, streaming one ingredient at a time
(peak memory about two models, float32 accumulation, output in the input dtype), into a new
run folder with the merged safetensors weights and soup_log.json. Ingredients are
.safetensors files or fit run folders (`longtail fit` runs, LT-Soups ingredients, soups of
them). A soup of fit runs is itself in the fit layout (loadable, evaluable and soupable like
one) and is always evaluated (metrics.json, per_class.csv, report.html); with --eval each
ingredient is evaluated too and compared side by side (all / balanced / many / medium /
few, and the head-tail ratio). Method parameters are KEY=VALUE pairs (lam=0.5, alpha=0.3);
--lam / --alpha are the same.

methods: uniform, weighted (--weights), recursive (LT-Soups: soup <- (1-lam) soup + lam
theta_i from --base, --lam 0.7), wise (WiSE-FT: (1-alpha) base + alpha fine-tuned; several
--alpha values give a sweep), greedy (add an ingredient only if balanced validation
accuracy strictly improves; validation = the first --val-per-class test images per class,
metrics then use the rest; decisions in greedy.jsonl). --base zero-shot rebuilds theta_0
(pretrained encoder + text-initialised head) from the ingredients' run. The LT-Soups
pipeline is its own command: `longtail lt-soups`.

examples:
  longtail soup runs/ft1 runs/ft2 runs/ft3 --eval --out runs/soup
  longtail soup -m wise runs/ft1 --base zero-shot --alpha 0 0.25 0.5 0.75 1 --eval
  longtail soup -m greedy runs/ft* --val-per-class 10 --eval
  longtail soup -m recursive runs/lts/ingredients/e0_b0 runs/lts/ingredients/e1_b0 lam=0.5 --base zero-shot
  longtail soup --recipe soup.yaml --out runs/soup2
"""
PAIRS_DEST = "ingredients"  # method parameters (lam=0.5) share the positional list with the ingredients


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ingredients", nargs="*", metavar="INGREDIENT|KEY=VALUE",
                   help="checkpoints (.safetensors files or run folders) in merge order, and method parameters")
    p.add_argument("-m", "--method", default="uniform", help="uniform (default), weighted, recursive, wise, greedy")
    p.add_argument("--recipe", help="YAML soup recipe (method, base, ingredients, parameters)")
    p.add_argument("--base", help="theta_0 checkpoint for recursive/wise, or 'zero-shot'")
    p.add_argument("--weights", type=float, nargs="+", help="weighted: one weight per ingredient")
    p.add_argument("--lam", type=float, help="recursive: merge coefficient lambda (= lam=VALUE)")
    p.add_argument("--alpha", type=float, nargs="+", help="wise: alpha value(s); several = sweep (= alpha=VALUE)")
    p.add_argument("--eval", action="store_true", help="evaluate ingredients and soups side by side")
    p.add_argument("--val-per-class", type=int, help="greedy: test images per class held out for selection")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--out", help="run folder to create (default runs/soup-TIMESTAMP); never overwritten")
    p.add_argument("--no-report", action="store_true", help="skip report.html")


def run(args: argparse.Namespace) -> int:
    from longtail.config import parse_overrides
    from longtail.errors import ConfigError
    from longtail.io import check_writable
    from longtail.soups.recipe import SoupRecipe, load_recipe
    from longtail.soups.soup_run import format_table, make_soup

    if args.method in ("lt_soups", "lt-soups"):
        raise ConfigError("LT-Soups is its own command: longtail lt-soups -d DATASET -b BACKBONE --out DIR")
    if args.out:
        check_writable(args.out)
    sources = [s for s in args.ingredients if "=" not in s]
    params: dict = parse_overrides([s for s in args.ingredients if "=" in s])
    if args.lam is not None:
        params["lam"] = args.lam
    if args.alpha:
        params["alpha"] = args.alpha if len(args.alpha) > 1 else args.alpha[0]
    if args.recipe:
        if sources:
            raise ConfigError("give ingredients either on the command line or in --recipe, not both")
        recipe = load_recipe(args.recipe)
        recipe.parameters.update(params)
    else:
        if not sources:
            raise ConfigError("no ingredients: give checkpoint files/run folders or --recipe")
        recipe = SoupRecipe(method=args.method, ingredients=sources, weights=args.weights,
                            base=args.base, parameters=params)
    folder = make_soup(recipe, args.out, evaluate=args.eval, val_per_class=args.val_per_class, device=args.device,
                       report=not args.no_report)
    table = folder / "comparison.json"
    if table.exists():
        import json

        print(format_table(json.loads(table.read_text())))
    print(f"soup written to {folder}")
    return 0
