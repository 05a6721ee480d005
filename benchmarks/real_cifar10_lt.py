"""Real data, real pretrained weights, offline: EfficientNet-Lite0 features of CIFAR-10-LT.

Extracts (and caches) frozen EfficientNet-Lite features for CIFAR-10-LT (IR 100 by default,
n_c = floor(5000 * IR^(-c/9)), LDAM selection with seed 0) and the CIFAR-10 test set, runs
every probe method and loss of the library, and prints one table (all / many / medium / few /
smallest-3-classes accuracy, ECE, fit time) next to two references measured in the same run:
scikit-learn's LogisticRegression on the same long-tailed features, and our probe trained on a
*balanced* subset of the same size (the ceiling at equal data budget; --full-balanced adds all
50,000 training images).

Protocol: validation = the first 10 test images of each class (file order), test = the other
9,900 (the LT-Soups CIFAR protocol), so methods that choose tau / alpha on validation never see
the test images. The CIFAR-10 copy is JPEG-compressed (quality ~75): numbers can differ by up to
about a point from the original pickles.

    python benchmarks/real_cifar10_lt.py --root ../shared/data/cifar10-jpeg.zip
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
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
from longtail.data.presets import CIFAR10_CLASSES
from longtail.data.profiles import exponential_profile, subsample_per_class
from longtail.data.splits import first_per_class
from longtail.data.stats import class_stats
from longtail.eval.metrics import evaluate
from longtail.eval.tables import markdown_table
from longtail.methods.probe import ProbeConfig, fit_probe
from longtail.models.backbone import load_backbone
from longtail.models.features import extract_features

MAPPING = Path(__file__).resolve().parents[1] / "longtail" / "data" / "mappings" / "cifar10_imagenet.json"

# (label, ProbeConfig overrides); every row is fitted on the same long-tailed features.
ROWS: tuple[tuple[str, dict], ...] = (
    ("LR, CE", {"loss": "ce"}),
    ("LR, class-weighted CE (inverse frequency)", {"loss": "weighted-ce"}),
    ("LR, CE + post-hoc LA (tau on val)", {"loss": "ce", "posthoc_tau": "auto"}),
    ("LR, LA (tau=1)", {"loss": "la"}),
    ("LR, LA + temperature scaling (on val)", {"loss": "la", "calibrate": "temperature"}),
    ("LR, balanced softmax", {"loss": "balanced-softmax"}),
    ("LR, CCAR", {"loss": "ccar"}),
    ("LR, CCAR + LA", {"loss": "ccar-la"}),
    ("cosine, LA", {"method": "cosine", "loss": "la"}),
    ("cosine, LA + temperature scaling (on val)", {"method": "cosine", "loss": "la", "calibrate": "temperature"}),
    *DECOUPLING_ROWS,
    ("SMOTE + LR", {"method": "smote"}),
    ("Gaussian-KDE + LR", {"method": "gaussian-kde"}),
    ("vMF-KDE + LR", {"method": "vmf-kde"}),
    ("vMF-KDE + LR, LA", {"method": "vmf-kde", "loss": "la"}),
    ("zero-shot (ImageNet classifier rows)", {"method": "zero-shot"}),
    ("prototype init, LA", {"loss": "la", "init": "prototypes"}),
    ("prototype init, LA + interpolation (alpha on val)", {"loss": "la", "init": "prototypes", "interpolate": "auto"}),
    ("prototype init, LA + L2-SP anchor", {"loss": "la", "init": "prototypes", "l2_target": "init"}),
    ("prototype init, vMF-KDE + LR", {"method": "vmf-kde", "init": "prototypes"}),
    ("auto (chosen on val)", {"method": "auto", "loss": "la"}),  # la: the default loss, the base auto starts from
    ("auto (chosen by 3-fold CV on train, no val)", {"method": "auto", "loss": "la"}),
)
NO_VAL_ROWS = {"auto (chosen by 3-fold CV on train, no val)",  # fitted without the validation split
               "tau-norm, CE head (tau 0.9 fixed, the fallback without val)"}
TABLE_COLUMNS = (("method", "method", "s"), ("all", "all", "pct"), ("many", "many", "pct"),
                 ("medium", "medium", "pct"), ("few", "few", "pct"), ("smallest 3", "smallest3", "pct"),
                 ("ECE", "ece", "pct"), ("fit s", "fit_seconds", ".1f"), *PAIRED_COLUMNS)
# Every row is paired with REFERENCE on the 9,900 test images (balanced accuracy, paired SE,
# verdict at 2 SE); CLAIMS are the further (A, B[, metric]) pairs the README's text compares
# (metric: balanced accuracy, or a shot group: CIFAR-10-LT's medium group is its four small classes).
REFERENCE = "cosine, LA"
CLAIMS = (("LR, class-weighted CE", "LR, LA (tau=1)"), ("LR, class-weighted CE", "LR, LA (tau=1)", "medium"), ("LR, CE", "SMOTE + LR"), ("LR, CE", "Gaussian-KDE + LR"),
          ("LR, CE", "vMF-KDE + LR"), ("LR, LA (tau=1)", "vMF-KDE + LR"), ("SMOTE + LR", "vMF-KDE + LR"),
          ("Gaussian-KDE + LR", "vMF-KDE + LR"))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"),
                   help="CIFAR-10 zip or folder (train/<class>/*.jpg, test/<class>/*.jpg)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=128, help="input resolution (default 128: CPU budget)")
    p.add_argument("--crop-padding", type=int, default=0,
                   help="resize to size+padding then centre-crop (default 0: 32 px CIFAR images have no border to spare)")
    p.add_argument("--ir", type=float, default=100.0)
    p.add_argument("--full-balanced", action="store_true", help="also fit on all 50,000 training images")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", help="feature cache (default $LONGTAIL_CACHE/features)")
    p.add_argument("--out", default="runs/real_cifar10_lt.json", help="results JSON (a .md table is written beside it)")
    p.add_argument("--check-configs", action="store_true", help="build and validate every row's config, then exit")
    p.add_argument("--only", nargs="+", help="run only the probe rows whose label contains one of these strings")
    return p.parse_args()


def row_configs(device: str) -> list[ProbeConfig]:
    """The validated ProbeConfig of every row (a bad row fails here, before any image is read)."""
    base = ProbeConfig(method="linear", loss="ce", device=device)  # each row changes what it names
    return [apply_overrides(base, overrides) for _, overrides in ROWS]


def split_val_test(test: FeatureSet, per_class: int = 10) -> tuple[FeatureSet, FeatureSet]:
    """First `per_class` samples of each class (file order) -> val; the rest -> test."""
    val_idx, test_idx = first_per_class(test.labels, per_class)

    def take(idx):
        return replace(test, features=test.features[idx], labels=test.labels[idx])

    return take(val_idx), take(test_idx)


def smallest_classes_accuracy(metrics: dict, counts: np.ndarray, k: int = 3) -> float:
    """Mean test accuracy of the k classes with the fewest training images."""
    smallest = set(np.argsort(counts, kind="stable")[:k].tolist())
    return float(np.mean([r["accuracy"] for i, r in enumerate(metrics["per_class"]) if i in smallest]))


def row(label: str, logits: np.ndarray, test: FeatureSet, counts: np.ndarray, seconds: float) -> dict:
    m = evaluate(logits, test.labels, counts, class_names=list(CIFAR10_CLASSES))
    keep = ("all", "class_mean", "many", "medium", "few", "ece")
    return {"method": label, **{k: m[k] for k in keep}, "smallest3": smallest_classes_accuracy(m, counts),
            "fit_seconds": seconds, PRED: np.asarray(logits).argmax(axis=1)}


def sklearn_reference(train: FeatureSet, test: FeatureSet, counts: np.ndarray) -> dict:
    from sklearn.linear_model import LogisticRegression

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    start = time.perf_counter()
    clf = LogisticRegression(C=1.0, max_iter=1000, tol=1e-4).fit(unit(train.features), train.labels)
    seconds = time.perf_counter() - start
    return row("scikit-learn LogisticRegression (C=1), CE", clf.decision_function(unit(test.features)), test, counts, seconds)


def main() -> None:
    args = parse_args()
    configs = row_configs(args.device)
    if args.check_configs:
        print(f"{len(configs)} probe configs OK")
        return
    t0 = time.perf_counter()
    base_train = open_images(args.root, split="train", class_names=list(CIFAR10_CLASSES))
    base_test = open_images(args.root, split="test", class_names=list(CIFAR10_CLASSES))
    lt_counts = exponential_profile(5000, 10, args.ir)
    lt_idx = subsample_per_class(base_train.labels, lt_counts, 0)
    per_class = int(lt_counts.sum()) // 10
    # Same seeded subsampler: the balanced subset shares the LT selection where they overlap.
    bal_idx = subsample_per_class(base_train.labels, np.full(10, per_class), 0)

    backbone = load_backbone(args.backbone, image_size=args.image_size, crop_padding=args.crop_padding)
    common = dict(batch_size=args.batch_size, device=args.device, cache_dir=args.cache_dir, num_workers=args.workers)

    # One extraction of the training images the rows need: all of them (--full-balanced), the LT set
    # alone (--only: no reference rows), or the LT set and the balanced subset together.
    pool = (np.arange(len(base_train)) if args.full_balanced else lt_idx if args.only
            else np.union1d(lt_idx, bal_idx))
    train_all = extract_features(backbone, base_train.subset(pool, name="cifar10_train_sel"), prototypes="imagenet",
                                 prototype_options={"imagenet_map": str(MAPPING)}, **common)
    order = np.argsort(pool, kind="stable")

    def features(idx: np.ndarray, name: str) -> FeatureSet:
        """The training images at idx, as rows of the one extraction."""
        rows = order[np.searchsorted(pool[order], idx)]
        return replace(train_all, features=train_all.features[rows], labels=train_all.labels[rows], source=name)

    lt = features(lt_idx, f"cifar10_lt_ir{args.ir:g}")
    test_all = extract_features(backbone, base_test, **common)
    extract_seconds = time.perf_counter() - t0
    test_all = replace(test_all, class_names=list(CIFAR10_CLASSES))
    val, test = split_val_test(test_all)
    counts = lt.class_counts()
    print(f"features: {args.backbone} @ {args.image_size}px, {lt.num_samples} train + "
          f"{test_all.num_samples} test images in {extract_seconds:.0f}s; LT counts {counts.tolist()}")

    wanted_rows = [(label, cfg) for (label, _), cfg in zip(ROWS, configs)
                   if not args.only or any(s in label for s in args.only)]
    results = fit_in_order(wanted_rows, lt, val, test.features, SPLIT_ROWS, NO_VAL_ROWS, lambda label, z, s: row(label, z, test, counts, s))
    if not args.only or any(s in "scikit-learn LogisticRegression (C=1), CE" for s in args.only):
        results.append(sklearn_reference(lt, test, counts))
    refs = [(f"balanced subset ({per_class}/class, same size), LR CE", bal_idx, f"cifar10_balanced_{per_class}")]
    if args.full_balanced:
        refs.append(("full balanced train (5,000/class), LR CE", np.arange(len(base_train)), "cifar10_full"))
    for label, idx, name in refs if not args.only else ():
        data = features(idx, name)
        start = time.perf_counter()
        probe = fit_probe(data, ProbeConfig(method="linear", loss="ce", device=args.device), val)
        results.append(row(label, probe.logits(test.features), test, counts, time.perf_counter() - start))

    claims = []
    if any(r["method"] == REFERENCE for r in results):
        labels = [r["method"] for r in results]
        claims = add_paired(results, test.labels, REFERENCE, 10,
                            tuple(c for c in CLAIMS if all(any(x.startswith(p) for x in labels) for p in c[:2])),
                            groups=class_stats(lt_counts).groups)
    for r in results:
        r.pop(PRED, None)
    format_columns(results)
    table = markdown_table(results, TABLE_COLUMNS)
    print("\n" + table)
    info = {"backbone": args.backbone, "image_size": args.image_size, "ir": args.ir, "train_counts": counts.tolist(),
            "test_images": int(test.num_samples), "val_images": int(val.num_samples),
            "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
            "extract_seconds": extract_seconds, "total_seconds": time.perf_counter() - t0,
            "reference": REFERENCE, "claims": claims, "rows": results}
    out = save_results(args.out, info, table)
    print(f"\ntotal {info['total_seconds']:.0f}s; results: {out}")


if __name__ == "__main__":
    main()
