"""Real pretrained weights, real long tails: fine-tuning EfficientNet-Lite0 (128 px) against its frozen probe.

Two datasets, the protocols of the probe benchmarks (same images, same validation, same test):
- CIFAR-10-LT IR 100 (`real_cifar10_lt.py`): n_c = floor(5000 * 100^(-c/9)), LDAM selection
  seed 0 (12,406 images); validation = the first 10 test images of each class (file order),
  test = the other 9,900;
- Tiny-ImageNet-100-LT IR 100 (`real_tiny100_lt.py`, its `class_order` / `lt_split`): a seeded
  class order gets n_i = floor(500 * 100^(-i/99)) (10,847 images, 35/35/30 many/medium/few);
  validation = the same draw's next 10 spare training images per class (990); test = the 50
  val images of every class (5,000).
The fine-tuning runs read the same LT set through the data layer (`ir=100` on the CIFAR zip; a
`sampling_strategy` of the LT counts on the Tiny zip; the script checks that both select exactly
the probe benchmarks' images). Test images are resized to 128 px without a crop
(test_resize_ratio=1), as the probe's features (crop_padding=0) and the cached view 0.

Rows (all / many / medium / few / ECE, wall seconds), every one through the library's API:
- best frozen probe: cosine + LA (`fit_probe`, on the feature cache of the same backbone);
- zero-shot: the ImageNet classifier rows (Tiny: WordNet ids; CIFAR-10: the bundled class map);
- partial FT (the `partial_ft` preset: last MBConv block + head conv, SGD, cosine, frozen-prefix
  cache with 2 flip views, prototype head init) with CE, LA (tau 1), CE with class-balanced
  sampling (`sampler=balanced`: the re-balancing in the data instead of the loss) and CCAR-LA:
  `fit` runs;
- LT-Soups: F = 0..6 for rho = 100, one branch, partial-FT ingredients trained from the same
  prefix-cache entry (AdamW lr 1e-3, no EMA: runs of 60-200 steps), recursive soup (lambda
  0.7) with theta_0, stage 2 (classifier re-tuned with LA from the soup's cached block-16 states)
  (`run_lt_soups`), and its best single ingredient (by test balanced accuracy: an oracle
  choice that favours the ingredient);
- MonoSoup of the partial FT + LA checkpoint (W0 = theta_0: pretrained weights + prototype head);
- WiSE-FT: (1 - alpha) theta_0 + alpha theta_LA (`merge("wise")`), alpha in {0, .25, .5, .75, 1}
  chosen by balanced validation accuracy, then tested once;
- ceiling: partial FT on a balanced subset of the same size (CIFAR 1,240/class, Tiny 108/class).

Time, measured on the 2-core build machine (2026-12-02), warm feature caches (the probe
benchmarks'): with warm prefix caches and the defaults, 34.3 min for both datasets (CIFAR-10-LT
17.8 min, Tiny 16.5 min); one partial-FT fit of 10 epochs takes ~170 s with its evaluation
(training the last block + head from the cache at 600-860 images/s). Cold prefix caches
(measured with --epochs 5: 55.7 min in all, CIFAR 30.1, Tiny 25.5) add ~35 min of entry
builds (a full prefix forward at ~45 image views/s: the LT sets with 2 flip views, the balanced
subsets, the test and validation images). Evaluation reads a cached prefix of the test images
(one pass per dataset, shared by every row with the same frozen prefix), and LT-Soups' stage 2
derives its block-16 states from the ingredients' block-15 entry. `--smoke` (3 classes, 16
training images per class, IR 2, 32 px, 1 epoch, private caches in the runs folder) runs every
row of both datasets end to end in ~2 min. Wall seconds include building a cold prefix-cache
entry (the first partial-FT row and the ceiling).

    python benchmarks/real_finetune.py [--dataset cifar10|tiny|both] [--epochs 10] [--runs-dir runs/real_finetune]
    python benchmarks/real_finetune.py --smoke
    python benchmarks/real_finetune.py --rows sampling   # only partial FT + LA vs + CE with balanced sampling

The balanced-sampling row was added after the timings above: it adds one partial-FT fit per
dataset (~170 s each, estimated from the other fit rows, not measured); `--rows sampling` runs
that row and the LA row it is compared with, nothing else (cold prefix caches: plus the builds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_protocols import (  # noqa: E402  (the datasets' protocols)
    Protocol,
    check_selection,
    cifar10_protocol,
    smoke_zip,
    tiny_protocol,
)
from probe_bench import PAIRED_COLUMNS, PRED, add_paired, format_columns  # noqa: E402

from longtail.eval.tables import markdown_table  # noqa: E402
from longtail.io import read_json  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
KEEP = ("all", "class_mean", "many", "medium", "few", "ece")


# the partial-FT rows on the LT set: (key = run folder partial_KEY, label, FitConfig overrides)
FIT_ROWS = (
    ("ce", "partial FT + CE", {"loss": "ce", "loss_options": {}}),
    ("la", "partial FT + LA", {"loss": "la", "loss_options": {"tau": 1.0}}),
    ("ce_balanced", "partial FT + CE with balanced sampling", {"loss": "ce", "loss_options": {}, "sampler": "balanced"}),
    ("ccar-la", "partial FT + CCAR-LA", {"loss": "ccar-la", "loss_options": {}}),
)
ROW_SETS = {"all": None, "sampling": ("la", "ce_balanced")}  # --rows: None = every row of the benchmark

TABLE_COLUMNS = (("method", "method", "s"), ("all", "all", "pct"), ("balanced", "class_mean", "pct"),
                 ("many", "many", "pct"), ("medium", "medium", "pct"), ("few", "few", "pct"),
                 ("ECE", "ece", "pct"), ("wall s", "seconds", ".0f"), *PAIRED_COLUMNS[1:])

# Every row is paired with REFERENCE on the same test images (balanced accuracy, paired SE over
# images within classes, verdict at 2 SE: `longtail.eval.paired`); CLAIMS are the further
# (A, B[, metric[, goal]]) pairs the README's text compares (metric: balanced accuracy or a shot
# group). A goal is issue 11's target for B - A, judged by `longtail.eval.paired.goal_verdict`
# (met only when B - A - 2 SE clears it): partial FT + LA >= the frozen probe + 3 points, its
# few-shot accuracy >= the probe's, LT-Soups >= its best ingredient, MonoSoup and WiSE-FT >= the
# checkpoint they start from.
REFERENCE = "partial FT + LA"
CLAIMS = (("frozen probe", "partial FT + LA", "class_mean", 0.03), ("frozen probe", "partial FT + LA", "few", 0.0),
          ("zero-shot", "partial FT + LA", "few"), ("partial FT + CE", "partial FT + LA"),
          ("partial FT + CE", "partial FT + LA", "few"),
          ("LT-Soups best single ingredient", "LT-Soups (F", "class_mean", 0.0),
          ("LT-Soups best single ingredient", "LT-Soups soup before stage 2"),
          ("LT-Soups soup before stage 2", "LT-Soups (F"), ("LT-Soups soup before stage 2", "LT-Soups (F", "few"),
          ("partial FT + LA", "MonoSoup", "class_mean", 0.0), ("partial FT + LA", "WiSE-FT", "class_mean", 0.0),
          ("partial FT + LA", "ceiling"))


# ----------------------------------------------------------------------------- rows


def row(label: str, metrics: dict[str, Any], seconds: float, **extra: Any) -> dict[str, Any]:
    return {"method": label, **{k: metrics.get(k) for k in KEEP}, "seconds": seconds, **extra}


def probe_rows(proto: Protocol, args) -> list[dict[str, Any]]:
    """Cosine + LA probe and zero-shot rows on the feature cache (the probe benchmarks' calls)."""
    from longtail.eval.metrics import evaluate
    from longtail.methods.probe import ProbeConfig, fit_probe
    from longtail.models.backbone import load_backbone
    from longtail.models.features import extract_features

    t0 = time.perf_counter()
    backbone = load_backbone(args.backbone, image_size=args.image_size, crop_padding=0)
    common = dict(batch_size=args.batch_size, device=args.device, cache_dir=args.feature_cache,
                  num_workers=args.workers, prototypes="imagenet", progress=not args.smoke)
    if proto.name == "cifar10":  # real_cifar10_lt.py extracts the LT + balanced union (its cache entry)
        wanted = np.union1d(proto.lt_idx, proto.bal_idx)
        train = extract_features(backbone, proto.base_train.subset(wanted, name="cifar10_train_sel"),
                                 prototype_options=proto.prototype_options, **common)
        lt_rows = np.searchsorted(wanted, proto.lt_idx)
        val = None
    else:
        wanted = np.arange(len(proto.base_train))
        train = extract_features(backbone, proto.base_train, **common)
        lt_rows = proto.lt_idx
        val = _take(train, proto.val_train_idx)
    test = extract_features(backbone, proto.base_test, **{k: v for k, v in common.items() if k != "prototypes"})
    val_idx, test_idx = proto.val_test_idx
    if val is None:
        val = _take(test, val_idx)
    test = _take(test, test_idx)
    lt = _take(train, lt_rows)
    extract = time.perf_counter() - t0
    out = []
    for label, cfg in (("frozen probe: cosine + LA", ProbeConfig(method="cosine", loss="la", device=args.device)),
                       ("zero-shot (ImageNet classifier rows)", ProbeConfig(method="zero-shot", device=args.device))):
        start = time.perf_counter()
        probe = fit_probe(lt, cfg, val)
        logits = probe.logits(test.features)
        m = evaluate(logits, test.labels, proto.counts)
        out.append(row(label, m, time.perf_counter() - start, features_seconds=extract))
        out[-1].update({PRED: np.asarray(logits).argmax(axis=1), "_labels": np.asarray(test.labels)})
        _say(out[-1])
    return out


def with_predictions(r: dict[str, Any], args) -> dict[str, Any]:
    """The row with its run's per-image test predictions (`Predictor.test`: scored as its metrics
    were, from the frozen-prefix cache) and labels, for the paired columns."""
    from longtail.eval.metrics import balanced_accuracy
    from longtail.methods.predictor import Predictor

    logits, labels = Predictor.from_run(r["run"], args.device, args.batch_size, args.workers).test()
    pred, labels = np.asarray(logits).argmax(axis=1), np.asarray(labels)
    recomputed = balanced_accuracy(logits, labels)
    if abs(recomputed - r["class_mean"]) > 1e-6:  # the pairing must score what the table shows
        raise RuntimeError(f"{r['run']}: its predictions give balanced accuracy {recomputed:.6f}, "
                           f"its metrics {r['class_mean']:.6f}")
    return {**r, PRED: pred, "_labels": labels}


def _take(fs, idx):
    return replace(fs, features=fs.features[idx], labels=fs.labels[idx])


def fit_overrides(proto: Protocol, args, data_options: dict[str, Any]) -> dict[str, Any]:
    """The FitConfig overrides every partial-FT row shares (one prefix-cache entry for the LT set)."""
    out = {"data_options": data_options, "backbone_options": {"image_size": args.image_size},
           "test_split": proto.test_split, "test_resize_ratio": 1.0, "val_per_class": proto.val_per_class,
           "val_rule": "first",
           "prototype_options": proto.prototype_options,
           "epochs": args.epochs, "batch_size": args.fit_batch, "num_workers": args.workers,
           "eval_batch_size": args.batch_size, "device": args.device, "progress": False,
           "keep_checkpoints": False, "prefix_cache_dir": args.prefix_cache}
    return {k: v for k, v in out.items() if v is not None}


def fit_config(proto: Protocol, args, data_options=None, **overrides):
    """The FitConfig of one partial-FT row (the `partial_ft` preset + the shared overrides)."""
    from longtail.methods.finetune import build_config

    return build_config(proto.root, args.backbone, "partial_ft",
                        {**fit_overrides(proto, args, data_options or proto.lt_options), **overrides})


def fit_row(label: str, proto: Protocol, args, out: Path, data_options=None, **overrides) -> dict[str, Any]:
    from longtail.methods.finetune import fit

    cfg = fit_config(proto, args, data_options, **overrides)
    start = time.perf_counter()
    result = fit(cfg, out=out, report=False)
    r = with_predictions(row(label, result.metrics, time.perf_counter() - start, run=str(out)), args)
    _say(r)
    return r


def lt_soups_rows(proto: Protocol, args, out: Path) -> list[dict[str, Any]]:
    """LT-Soups (stage 2) and its best ingredient, partial-FT ingredients from the prefix cache."""
    from longtail.soups.lt_soups import LTSoups, LTSoupsConfig, run_lt_soups

    cfg = LTSoupsConfig(
        dataset=proto.root, data_options=dict(proto.lt_options), val_per_class=proto.val_per_class, val_rule="first",
        test_split=proto.test_split, backbone=args.backbone, backbone_options={"image_size": args.image_size},
        adapter="partial", adapter_options={"num_blocks": 1}, head_init="auto",
        prototype_options=dict(proto.prototype_options), scale=25.0, lr=1e-3,
        batch_size=args.fit_batch, epochs=args.soup_epochs, min_steps=args.soup_min_steps, ema_decay=None,
        n_evals=0, augment="none", test_resize_ratio=1.0, stage2_epochs=args.soup_epochs, branches=1,
        prefix_cache="auto", prefix_views=2, prefix_view_kind="flip", prefix_cache_dir=args.prefix_cache,
        num_workers=args.workers, eval_batch_size=args.batch_size, device=args.device, progress=False,
        max_steps=args.soup_max_steps, keep_checkpoints=False)
    start = time.perf_counter()
    run_lt_soups(cfg, out)
    seconds = time.perf_counter() - start
    pipe = LTSoups(cfg, out)
    ingredients = [(pipe.job_dir(i, k), read_json(pipe.job_dir(i, k) / "metrics.json")) for i, k in pipe.jobs()]
    best_dir, best = max(ingredients, key=lambda im: im[1]["class_mean"])
    final = read_json(out / "final" / "metrics.json")
    soup = read_json(out / "soup" / "metrics.json")
    rows = [row(f"LT-Soups (F = {pipe.exponents[0]}..{pipe.exponents[-1]}, recursive soup + stage 2)", final,
                seconds, run=str(out / "final")),
            row("LT-Soups soup before stage 2", soup, float("nan"), run=str(out / "soup")),
            row(f"LT-Soups best single ingredient ({best_dir.name}, by test)", best,
                best.get("wall_seconds", float("nan")), run=str(best_dir))]
    rows = [with_predictions(r, args) for r in rows]
    for r in rows:
        _say(r)
    return rows


def soup_rows(proto: Protocol, args, ft_dir: Path, out: Path, ft_row: dict[str, Any]) -> list[dict[str, Any]]:
    """MonoSoup and WiSE-FT (alpha on validation) of one partial-FT checkpoint."""
    from longtail.methods.finetune import RunModel
    from longtail.soups.merge import load_state_dict, merge, weights_file
    from longtail.soups.monosoup import MonoSoupConfig, check_bases, config_dict, monosoup
    from longtail.soups.soup_run import write_soup_run

    start = time.perf_counter()
    model = RunModel(ft_dir, args.device)
    w0, w1 = model.zero_shot(), load_state_dict(weights_file(ft_dir))
    check_bases(w0, w1, f"{ft_dir}: ")
    setup = time.perf_counter() - start
    mono_cfg = MonoSoupConfig(device=args.device)
    edited, log = monosoup(w0, w1, mono_cfg)
    folder = write_soup_run(out / "monosoup", edited, ft_dir, {"label": "MonoSoup", "method": "monosoup",
                            "w0": "zero-shot", "w1": str(ft_dir), **config_dict(mono_cfg)}, args.device,
                            kind="monosoup", files={"monosoup_log.json": log})
    rows = [with_predictions(row("MonoSoup of partial FT + LA", read_json(folder / "metrics.json"),
                                 time.perf_counter() - start, run=str(folder),
                                 edited=sum(bool(e["edited"]) for e in log)), args)]
    _say(rows[-1])
    start = time.perf_counter()
    val = proto.val_images()
    scores = {}
    for alpha in ALPHAS:
        state, _ = merge("wise", [ft_dir], base=w0, alpha=alpha)
        scores[alpha] = model.metrics(state, test_set=val)["class_mean"]
    alpha = max(ALPHAS, key=lambda a: (scores[a], a))  # ties: the more fine-tuned model
    label = f"WiSE-FT (alpha = {alpha:g} of {list(ALPHAS)}, on validation)"
    extra = {"val_class_mean": {str(a): s for a, s in scores.items()}, "alpha": alpha}
    if alpha == 1.0:  # the fine-tuned weights themselves: their test metrics are the FT row's
        rows.append({**ft_row, "method": label, "seconds": setup + time.perf_counter() - start, **extra})
    else:
        state, coefs = merge("wise", [ft_dir], base=w0, alpha=alpha)
        folder = write_soup_run(out / "wise", state, ft_dir, {"label": label, "method": "wise", "alpha": alpha,
                                "base": "zero-shot", "ingredients": [str(ft_dir)]}, args.device)
        rows.append(with_predictions(row(label, read_json(folder / "metrics.json"),
                                         setup + time.perf_counter() - start, run=str(folder), **extra), args))
    _say(rows[-1])
    return rows


def run_dataset(proto: Protocol, args, out: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    check_selection(proto)
    only = ROW_SETS[args.rows]
    rows = probe_rows(proto, args) if only is None else []
    ft = {}
    for key, label, overrides in FIT_ROWS:
        if only is None or key in only:
            ft[key] = fit_row(label, proto, args, out / f"partial_{key}", **overrides)
            rows.append(ft[key])
    if only is not None:
        return _result(proto, rows, t0)
    rows += lt_soups_rows(proto, args, out / "lt_soups")
    rows += soup_rows(proto, args, Path(ft["la"]["run"]), out, ft["la"])
    per_class = int(proto.counts.sum()) // len(proto.class_names)
    rows.append(fit_row(f"ceiling: partial FT + CE on a balanced subset ({per_class}/class)", proto, args,
                        out / "balanced_ce", data_options=proto.balanced_options, loss="ce", loss_options={}))
    return _result(proto, rows, t0)


def _result(proto: Protocol, rows: list[dict[str, Any]], t0: float) -> dict[str, Any]:
    """The dataset's rows paired with REFERENCE (and CLAIMS) on the same test images (rows with
    their predictions: `_pred`, `_labels`)."""
    from longtail.data.stats import class_stats
    from longtail.eval.paired import check_same_images

    labels = rows[0]["_labels"]
    for r in rows:
        check_same_images(labels, r.pop("_labels"), f"the row '{r['method']}' with '{rows[0]['method']}'")
    names = [r["method"] for r in rows]
    claims = add_paired(rows, labels, REFERENCE, len(proto.class_names),
                        tuple(c for c in CLAIMS if all(any(n.startswith(x) for n in names) for x in c[:2])),
                        class_stats(proto.counts, proto.class_names).groups)
    format_columns(rows)
    return {"dataset": proto.name, "root": proto.root, "train_counts": proto.counts.tolist(),
            "val_images": len(proto.val_images()), "test_images": int(proto.val_test_idx[1].size),
            "total_seconds": time.perf_counter() - t0, "reference": REFERENCE, "claims": claims, "rows": rows}


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("cifar10", "tiny", "both"), default="both")
    p.add_argument("--cifar-root", default=str(DATA / "cifar10-jpeg.zip"))
    p.add_argument("--tiny-root", default=str(DATA / "tiny-imagenet-100a.zip"))
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--ir", type=float, default=100.0)
    p.add_argument("--epochs", type=int, default=10, help="partial-FT epochs (the partial_ft preset's)")
    p.add_argument("--soup-epochs", type=int, default=3, help="LT-Soups ingredient and stage-2 epochs")
    p.add_argument("--soup-min-steps", type=int, default=60)
    p.add_argument("--soup-max-steps", type=int, default=None)
    p.add_argument("--fit-batch", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=128, help="feature extraction / evaluation batch")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--runs-dir", default="runs/real_finetune", help="a new folder per invocation goes under it")
    p.add_argument("--feature-cache", help="feature cache (default $LONGTAIL_CACHE/features)")
    p.add_argument("--prefix-cache", help="prefix cache (default $LONGTAIL_CACHE/prefix)")
    p.add_argument("--rows", choices=sorted(ROW_SETS), default="all",
                   help="sampling: only partial FT + LA and partial FT + CE with balanced sampling")
    p.add_argument("--render", metavar="FOLDER",
                   help="a finished run folder (with real_finetune.json): its tables, claims and goals again, "
                        "without training (the probe rows refitted, the others read from their run folders)")
    p.add_argument("--smoke", action="store_true",
                   help="3 classes, 16 training images per class, IR 2, 32 px, 1 epoch: every row end to end")
    args = p.parse_args(argv)
    if args.smoke:
        args.image_size, args.ir, args.epochs, args.soup_epochs = 32, 2.0, 1, 1
        args.soup_min_steps, args.soup_max_steps, args.fit_batch, args.batch_size, args.workers = 2, 2, 16, 64, 0
    return args


def protocols(args, out: Path) -> list[Protocol]:
    cifar, tiny = args.cifar_root, args.tiny_root
    if args.smoke:  # private caches: the smoke data never touches the real entries
        data = out / "smoke_data"
        args.feature_cache = args.feature_cache or str(out / "cache" / "features")
        args.prefix_cache = args.prefix_cache or str(out / "cache" / "prefix")
        cifar = smoke_zip(cifar, data / "cifar10.zip", "test") if args.dataset != "tiny" else cifar
        tiny = smoke_zip(tiny, data / "tiny100.zip", "val") if args.dataset != "cifar10" else tiny
    val = 2 if args.smoke else 10
    out_list = []
    if args.dataset in ("cifar10", "both"):
        out_list.append(cifar10_protocol(cifar, args.ir, val))
    if args.dataset in ("tiny", "both"):
        out_list.append(tiny_protocol(tiny, args.ir, 0, val))
    return out_list


def render(args, folder: Path) -> dict[str, Any]:
    """The tables, claims and goals of a finished run folder again, without training: the probe
    rows are fitted again (seconds, deterministic: checked against the saved accuracy), every
    other row's predictions come from its run folder (`with_predictions`); written beside the
    saved results as real_finetune_paired.json / .md (the saved ones are left as they are)."""
    saved = read_json(folder / "real_finetune.json")
    protos = {p.name: p for p in protocols(args, folder)}
    results = []
    for data in saved["datasets"]:
        proto = protos[data["dataset"]]
        fresh = {r["method"]: r for r in probe_rows(proto, args)}
        rows = []
        for r in data["rows"]:
            r = {k: v for k, v in r.items() if k not in ("vs_ref", "vs_ref_se", "vs_ref_ci", "verdict",
                                                           "all_seeds", "diff_se")}
            if r["method"] in fresh:
                if abs(fresh[r["method"]]["class_mean"] - r["class_mean"]) > 1e-9:
                    raise RuntimeError(f"{r['method']}: refitted {fresh[r['method']]['class_mean']:.6f}, "
                                       f"saved {r['class_mean']:.6f}")
                r = {**r, PRED: fresh[r["method"]][PRED], "_labels": fresh[r["method"]]["_labels"]}
            else:
                r = with_predictions(r, args)
            rows.append(r)
        results.append({**_result(proto, rows, time.perf_counter()), "total_seconds": data["total_seconds"]})
    info = {**saved, "datasets": results, "rendered": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_tables(info, folder, "real_finetune_paired")
    return info


def write_tables(info: dict[str, Any], out: Path, name: str) -> None:
    """Print and save the tables and goals (NAME.json, NAME.md in `out`)."""
    tables = "\n\n".join(f"### {r['dataset']} ({r['test_images']} test images, {r['total_seconds']:.0f} s)\n\n"
                         + markdown_table(r["rows"], TABLE_COLUMNS) + "\n\n" + claims_lines(r["claims"])
                         for r in info["datasets"])
    print("\n" + tables)
    (out / f"{name}.json").write_text(json.dumps(info, indent=2, default=float))
    (out / f"{name}.md").write_text(tables + "\n")


def claims_lines(claims: list[dict[str, Any]]) -> str:
    """The claims as markdown list items: B vs A (metric), difference ± paired SE, verdict, goal."""
    lines = []
    for c in claims:
        goal = (f"; goal B − A ≥ {100 * c['goal']:+.0f}: **{c['goal_verdict']}**" if c.get("goal") is not None
                else "")
        lines.append(f"- {c['b']} vs {c['a']} ({c['metric']}): {100 * c['diff']:+.2f} ± {100 * c['se']:.2f} "
                     f"points, {c['verdict']}{goal}")
    return "\n".join(lines)


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.render:
        return render(args, Path(args.render))
    out = Path(args.runs_dir) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=False)
    t0 = time.perf_counter()
    results = []
    for proto in protocols(args, out):
        print(f"== {proto.name}: {int(proto.counts.sum())} LT training images ({proto.counts.max()}..{proto.counts.min()})",
              flush=True)
        results.append(run_dataset(proto, args, out / proto.name))
    info = {"backbone": args.backbone, "image_size": args.image_size, "ir": args.ir, "epochs": args.epochs,
            "rows": args.rows,
            "soup_epochs": args.soup_epochs, "smoke": args.smoke,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "total_seconds": time.perf_counter() - t0, "datasets": results}
    write_tables(info, out, "real_finetune")
    print(f"\ntotal {info['total_seconds']:.0f}s; results: {out / 'real_finetune.json'}")
    return info


def _say(r: dict[str, Any]) -> None:
    secs = "" if r["seconds"] != r["seconds"] else f" ({r['seconds']:.0f}s)"
    print(f"  {r['method']}: all {100 * r['all']:.2f}, few {_pct(r['few'])}{secs}", flush=True)


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.2f}"


if __name__ == "__main__":
    main()
