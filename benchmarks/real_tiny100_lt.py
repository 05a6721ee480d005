"""Real data, real pretrained weights, offline: frozen EfficientNet-Lite0 features of Tiny-ImageNet-100-LT.

A real many-class long tail with a few-shot group: the 100 Tiny-ImageNet classes of
`../shared/data/tiny-imagenet-100a.zip` made long-tailed the CIFAR-100-LT way, and every probe
method and loss of the library next to the peers a user would reach for, measured in the same
run on the same features, with wall time per row.

Protocol (seeded, `--seed`, default 0):
- class order: a seeded permutation of the zip's classes.tsv order; class perm[i] gets
  n_i = floor(500 * IR^(-i/99)) training images (IR 100: 10,847 images, 500 ... 5 per class,
  35 many / 35 medium / 30 few classes by the usual >100 / 20-100 / <20 rule);
- picks: `subsample_per_class` (the LDAM/LIFT CIFAR-LT draw) on the 500 training images of each
  class; the same draw's next --val-per-class images of each class (training images the LT set
  does not use) are the validation split: every class that can spare them (all but the head
  class with n = 500) has --val-per-class validation images; the methods that choose tau /
  alpha / a temperature / a candidate use it, nothing else does;
- test: the 50 official validation images of every class (5,000, balanced), never used to
  choose anything;
- ceilings: the probe on a *balanced* subset of the same size (floor(10,847 / 100) = 108 per
  class, the same seeded draw) and on the full balanced 500/class training set.
Peers in the same run: scikit-learn `LogisticRegression` with C chosen by its own 3-fold
cross-validation on the LT training set (`LogisticRegressionCV`, balanced-accuracy scoring), plain
and with class_weight="balanced", the CE model with post-hoc logit adjustment (tau = 1), and
imbalanced-learn SMOTE + the same LR. Features are L2-normalised for every LR peer, as for ours.

Only the images the requested rows need are extracted: the full training set when its ceiling row
runs (every subset is then rows of it), else the LT set, the validation images and the balanced
subset on their own (each cached by content), and the test set.

Caveat: Tiny-ImageNet photos come from ImageNet, which trained the encoder, so absolute numbers
are optimistic; comparisons between rows on the same features are fair.

    python benchmarks/real_tiny100_lt.py [--root ../shared/data/tiny-imagenet-100a.zip] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_bench import (  # noqa: E402  (what the probe benchmarks share)
    DECOUPLING_ROWS,
    PAIRED_COLUMNS,
    PRED,
    SPLIT_ROWS,
    add_paired,
    fit_in_order,
    format_columns,
    save_results,
)

from longtail.config import apply_overrides
from longtail.data.features import FeatureSet
from longtail.data.open_images import open_images
from longtail.data.profiles import exponential_profile, subsample_per_class
from longtail.data.stats import class_stats
from longtail.eval.metrics import evaluate
from longtail.eval.tables import markdown_table
from longtail.methods.probe import ProbeConfig, fit_probe
from longtail.methods.probe.registry import load_methods
from longtail.models.backbone import load_backbone
from longtail.models.features import extract_features

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny-imagenet-100a.zip"

# (label, ProbeConfig overrides on top of linear + CE); every row fits the same LT features.
ROWS: tuple[tuple[str, dict], ...] = (
    ("LR, CE", {"loss": "ce"}),
    ("LR, class-weighted CE (inverse frequency)", {"loss": "weighted-ce"}),
    ("LR, CE + post-hoc LA (tau on val)", {"loss": "ce", "posthoc_tau": "auto"}),
    ("LR, LA (tau=1)", {"loss": "la"}),
    ("LR, balanced softmax", {"loss": "balanced-softmax"}),
    ("LR, CCAR", {"loss": "ccar"}),
    ("LR, CCAR + LA", {"loss": "ccar-la"}),
    ("LR, CCAR + balanced softmax", {"loss": "ccar-bs"}),
    ("LR, Sage CF loss", {"loss": "cf"}),
    ("cosine, LA (the default probe)", {"method": "cosine", "loss": "la"}),
    ("cosine, LA + temperature scaling (on val)", {"method": "cosine", "loss": "la", "calibrate": "temperature"}),
    *DECOUPLING_ROWS,
    ("SMOTE + LR", {"method": "smote"}),
    ("Gaussian-KDE + LR", {"method": "gaussian-kde"}),
    ("vMF-KDE + LR", {"method": "vmf-kde"}),
    ("vMF-KDE + LR, LA", {"method": "vmf-kde", "loss": "la"}),
    ("distribution calibration + LR", {"method": "distribution-calibration"}),
    ("zero-shot (ImageNet classifier rows + bias)", {"method": "zero-shot"}),
    ("prototype init, LA", {"loss": "la", "init": "prototypes"}),
    ("prototype init, LA + interpolation (alpha on val)", {"loss": "la", "init": "prototypes", "interpolate": "auto"}),
    ("prototype init, LA + L2-SP anchor", {"loss": "la", "init": "prototypes", "l2_target": "init"}),
    ("prototype init, cRT", {"method": "crt", "init": "prototypes"}),
    ("auto (chosen on val)", {"method": "auto", "loss": "la"}),  # la: the default loss, the base auto starts from
    ("auto (chosen by CV on train, no val)", {"method": "auto", "loss": "la"}),
)
NO_VAL_ROWS = {"auto (chosen by CV on train, no val)",  # fitted without the validation split
               "tau-norm, CE head (tau 0.9 fixed, the fallback without val)"}
TABLE_COLUMNS = (("method", "method", "s"), ("all", "all", "pct"), ("many", "many", "pct"),
                 ("medium", "medium", "pct"), ("few", "few", "pct"), ("ECE", "ece", "pct"),
                 ("fit s", "fit_seconds", ".1f"), *PAIRED_COLUMNS)
# Every row is paired with REFERENCE on the 5,000 test images (balanced accuracy, paired SE,
# verdict at 2 SE); CLAIMS are the further (A, B[, metric]) pairs the README's text compares.
REFERENCE = "cosine, LA (the default probe)"
CLAIMS = (("zero-shot", "auto (chosen on val)"), ("prototype init, LA + L2-SP anchor", "auto (chosen on val)"),
          ("scikit-learn LR, CE + post-hoc LA", "auto (chosen on val)"),
          ("balanced subset", "auto (chosen on val)"), ("auto (chosen on val)", "auto (chosen by CV"),
          ("zero-shot", "cosine, LA (the default probe)"), ("zero-shot", "auto (chosen on val)", "few"))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="the Tiny-ImageNet-100 zip (or a folder of the same layout)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=128, help="input resolution (default 128: CPU budget)")
    p.add_argument("--ir", type=float, default=100.0)
    p.add_argument("--seed", type=int, default=0, help="class order and image picks")
    p.add_argument("--val-per-class", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", help="feature cache (default $LONGTAIL_CACHE/features)")
    p.add_argument("--quick", action="store_true", help="skip the scikit-learn cross-validation and the full 500/class ceiling")
    p.add_argument("--only", nargs="+", help="run only the rows whose label contains one of these strings")
    p.add_argument("--out", default="runs/real_tiny100_lt.json", help="results JSON (a .md table is written beside it)")
    p.add_argument("--check-configs", action="store_true", help="build and validate every row's config, then exit")
    return p.parse_args()


def row_configs(device: str, only: list[str] | None = None) -> list[tuple[str, ProbeConfig]]:
    """(label, validated ProbeConfig) of every row (or those whose label contains one of `only`);
    a bad row fails here, before any image is read."""
    load_methods()
    base = ProbeConfig(method="linear", loss="ce", device=device)
    return [(label, apply_overrides(base, overrides)) for label, overrides in ROWS
            if not only or any(s in label for s in only)]


def class_order(root: str) -> list[str]:
    """The WordNet ids in classes.tsv order (the zip's documented class order)."""
    path = Path(root)
    text = (zipfile.ZipFile(path).read("classes.tsv") if path.suffix == ".zip" else (path / "classes.tsv").read_bytes())
    return [line.split("\t")[0] for line in text.decode().splitlines() if line.strip()]


def lt_split(labels: np.ndarray, ir: float, seed: int, val_per_class: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(LT train indices, validation indices, per-class LT counts) of the protocol above."""
    num_classes = int(labels.max()) + 1
    per_class = np.bincount(labels, minlength=num_classes)
    profile = exponential_profile(int(per_class.min()), num_classes, ir)
    counts = np.empty(num_classes, dtype=np.int64)
    counts[np.random.default_rng(seed).permutation(num_classes)] = profile  # class perm[i] gets n_i
    # One draw of LT + spare images per class: its first counts[c] are the LT set, the rest validation.
    wanted = np.minimum(counts + val_per_class, per_class)
    drawn = subsample_per_class(labels, wanted, seed)
    start = np.concatenate([[0], np.cumsum(wanted)[:-1]])  # the draw is class by class
    rank = np.arange(drawn.size) - np.repeat(start, wanted)
    in_lt = rank < np.repeat(counts, wanted)
    return drawn[in_lt], drawn[~in_lt], counts


def row(label: str, logits: np.ndarray, test: FeatureSet, counts: np.ndarray, seconds: float, **extra) -> dict:
    m = evaluate(logits, test.labels, counts)
    keep = ("all", "many", "medium", "few", "ece")
    return {"method": label, **{k: m[k] for k in keep}, "fit_seconds": seconds, **extra,
            PRED: np.asarray(logits).argmax(axis=1)}


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def sklearn_peers(train: FeatureSet, test: FeatureSet, counts: np.ndarray, seed: int) -> list[dict]:
    """scikit-learn / imbalanced-learn rows; C of each LR chosen by its own CV on the training set."""
    from imblearn.over_sampling import SMOTE
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")  # 1.10 API notices
    x, xt, y = unit(train.features), unit(test.features), train.labels
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    common = dict(Cs=[1.0, 10.0, 100.0], cv=cv, scoring="balanced_accuracy", max_iter=1000, tol=1e-4)
    rows = []
    for label, kw in (("scikit-learn LR, CE (C by 3-fold CV)", {}),
                      ("scikit-learn LR, class_weight=balanced (C by 3-fold CV)", {"class_weight": "balanced"})):
        start = time.perf_counter()
        clf = LogisticRegressionCV(**common, **kw).fit(x, y)
        seconds = time.perf_counter() - start
        c = float(np.atleast_1d(clf.C_)[0])
        rows.append(row(f"{label}, C={c:g}", clf.decision_function(xt), test, counts, seconds, C=c))
        print(f"  {rows[-1]['method']}: {100 * rows[-1]['all']:.2f} ({seconds:.0f}s)", flush=True)
        if not kw:
            ce_model, ce_c, ce_seconds = clf, c, seconds
    log_prior = np.log(counts / counts.sum())
    rows.append(row(f"scikit-learn LR, CE + post-hoc LA (tau=1), C={ce_c:g}",
                    ce_model.decision_function(xt) - log_prior, test, counts, ce_seconds, C=ce_c))
    start = time.perf_counter()
    xs, ys = SMOTE(k_neighbors=4, random_state=seed).fit_resample(x, y)  # k <= n_min - 1 (5 images)
    clf = LogisticRegression(C=ce_c, max_iter=1000, tol=1e-4).fit(xs, ys)
    seconds = time.perf_counter() - start
    rows.append(row(f"imbalanced-learn SMOTE (k=4) + scikit-learn LR, C={ce_c:g}", clf.decision_function(xt),
                    test, counts, seconds, C=ce_c))
    return rows


def main() -> None:
    args = parse_args()
    configs = row_configs(args.device, args.only)
    if args.check_configs:
        print(f"{len(configs)} probe configs OK")
        return
    t0 = time.perf_counter()
    wnids = class_order(args.root)
    base_train = open_images(args.root, split="train", class_names=wnids)
    base_test = open_images(args.root, split="val", class_names=wnids)
    lt_idx, val_idx, counts = lt_split(base_train.labels, args.ir, args.seed, args.val_per_class)
    bal_idx = subsample_per_class(base_train.labels, np.full(len(wnids), int(counts.sum()) // len(wnids)), args.seed)

    backbone = load_backbone(args.backbone, image_size=args.image_size, crop_padding=0)
    common = dict(batch_size=args.batch_size, device=args.device, cache_dir=args.cache_dir, num_workers=args.workers,
                  prototypes="imagenet")  # Tiny-ImageNet classes are ImageNet WordNet ids: no class map

    def wanted(label: str) -> bool:
        return not args.only or any(s in label for s in args.only)

    full_label = "full balanced train (500/class), cosine LA"
    train_all = extract_features(backbone, base_train, **common) if not args.quick and wanted(full_label) else None

    def features(idx: np.ndarray, name: str) -> FeatureSet:
        """The training images at idx: rows of the full extraction when there is one, else those
        images only (cached by content: the same subset is extracted once)."""
        if train_all is not None:
            return replace(train_all, features=train_all.features[idx], labels=train_all.labels[idx], source=name)
        return replace(extract_features(backbone, base_train.subset(idx, name=name), **common), source=name)

    lt = features(lt_idx, f"tiny100_lt_ir{args.ir:g}")
    val = features(val_idx, "tiny100_lt_val")
    test = extract_features(backbone, base_test, **common)
    extract_seconds = time.perf_counter() - t0
    per_class = int(counts.sum()) // len(wnids)
    stats = {"many": int((counts > 100).sum()), "medium": int(((counts >= 20) & (counts <= 100)).sum()),
             "few": int((counts < 20).sum())}
    print(f"features: {args.backbone} @ {args.image_size}px, {lt.num_samples + val.num_samples} train + {test.num_samples} test "
          f"images in {extract_seconds:.0f}s; LT {lt.num_samples} images ({counts.max()}..{counts.min()}/class, "
          f"{stats}), val {val.num_samples}")

    results = fit_in_order(configs, lt, val, test.features, SPLIT_ROWS, NO_VAL_ROWS, lambda label, z, s: row(label, z, test, counts, s))
    if not args.quick and wanted("scikit-learn"):
        results += sklearn_peers(lt, test, counts, args.seed)
    refs = [(f"balanced subset ({per_class}/class, same size), cosine LA", bal_idx, "tiny100_bal")]
    if train_all is not None:
        refs.append((full_label, np.arange(base_train.labels.size), "tiny100_train"))
    for label, idx, name in (r for r in refs if wanted(r[0])):
        data = features(idx, name)
        start = time.perf_counter()
        probe = fit_probe(data, ProbeConfig(method="cosine", loss="la", device=args.device))
        results.append(row(label, probe.logits(test.features), test, counts, time.perf_counter() - start))
        print(f"  {label}: {100 * results[-1]['all']:.2f}", flush=True)

    claims = []
    if any(r["method"] == REFERENCE for r in results):
        labels = [r["method"] for r in results]
        claims = add_paired(results, test.labels, REFERENCE, len(wnids),
                            tuple(c for c in CLAIMS if all(any(x.startswith(p) for x in labels) for p in c[:2])),
                            groups=class_stats(counts).groups)
    for r in results:
        r.pop(PRED, None)
    format_columns(results)
    table = markdown_table(results, TABLE_COLUMNS)
    print("\n" + table)
    info = {"backbone": args.backbone, "image_size": args.image_size, "ir": args.ir, "seed": args.seed,
            "train_counts": counts.tolist(), "groups": stats, "test_images": int(test.num_samples),
            "val_images": int(val.num_samples), "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "extract_seconds": extract_seconds, "total_seconds": time.perf_counter() - t0,
            "reference": REFERENCE, "claims": claims, "rows": results}
    out = save_results(args.out, info, table)
    print(f"\ntotal {info['total_seconds']:.0f}s; results: {out}")


if __name__ == "__main__":
    main()
