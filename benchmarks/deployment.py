"""Use what you trained: label-shift correction and the reject option at deployment, on real data.

The probe is trained once on a long tail; deployment sees another class prior. This benchmark
measures, on frozen EfficientNet-Lite0 features of the real Tiny-ImageNet-100-LT and
CIFAR-10-LT (IR 100 both, the training sets the probe benchmarks `real_tiny100_lt.py` /
`real_cifar10_lt.py` build, features from the longtail feature cache), what each way of
choosing the deployment prior (`longtail/eval/prior.py`, docs/methods.md §13) buys, and what
the reject option (`longtail/eval/selective.py`) costs each shot group.

Protocol (everything seeded):
- probes: the default probe (cosine head, logit-adjusted loss: trained for the *balanced*
  prior, source prior = uniform) and a plain CE linear probe with post-hoc LA (tau 1: its logits
  minus log p_train, so it too estimates the balanced posterior and its temperature is fitted on
  the balanced validation split under the right prior; at T = 1 the corrections equal z + log q -
  log p_train of the plain CE logits);
  neither sees the held-out images below during training.
- validation: the first --val-per-class test images of each class in file order (Tiny: 10 of
  the 50 val images; CIFAR-10: 100 of the 1,000 test images). It fits the temperature
  (`calibrate_temperature`, the probe's own NLL fit), the BBSE confusion matrix and the reject
  thresholds, and is NOT part of any deployment set.
- deployment sets: from the remaining test images (Tiny 40/class, CIFAR 900/class), N = that
  pool's size images per set: class counts ~ Multinomial(N, q) for q = (a) balanced, (b) the
  training prior, (c) the reversed training prior (the class with the most training images gets
  the fewest); within a class, images in a seeded random order, cycling (every image once before
  any repeats). --seeds sets (default 3) per prior; mean ± SD over them.
- rows (all on temperature-calibrated logits z/T; argmax unchanged by T): balanced (q =
  uniform: today's prediction for the LA probe, post-hoc LA for CE), `--prior train` (q = the
  training prior), `estimate` (q by EM on the calibrated softmax, Saerens et al. 2002),
  `estimate=bbse` (Lipton et al. 2018, confusion matrix from the validation split) and the
  oracle (q = the set's true class frequencies). Correction: z/T + log q - log p_source.
- metrics: top-1 accuracy on the deployment set (what a deployment with that prior gets) and
  balanced accuracy (mean recall of the classes present).
- reject option (default probe, balanced deployment sets): MSP of z/T; thresholds fitted on the
  validation split for --coverage (0.9) per shot group by *predicted* class (`fit_thresholds`),
  against one global threshold with the same coverage target.

Goals and the verdict rule (`verdict`, one rule for all): each goal is written as the mean of
a per-image paired difference d >= 0 over the images of all seeds' sets; its standard error is
cluster-robust with one cluster per test image (a resampled image repeats within and across
sets). "met" when mean(d) - 2 SE > 0, "missed" when mean(d) + 2 SE < 0, "equal within noise"
otherwise.
- (b), (c): estimate recovers >= 80 % of the oracle's gain over balanced:
  d = c_est - 0.2 c_bal - 0.8 c_oracle (c: 1 if correct);
- (a): estimate loses <= 0.3 point vs balanced: d = c_est - c_bal + 0.003;
- reject: error of the accepted falls by >= 30 % relative: d = 0.7 w - w a / coverage (w: wrong,
  a: accepted); each shot group's rejection rate (by true class) within 2x of the overall one,
  both ways: d = 2 r - r [g] / share_g and d = 2 r [g] / share_g - r.

Caveats: Tiny-ImageNet photos are ImageNet photos (the encoder's training data), so absolute
accuracies are optimistic; the CIFAR-10 copy is JPEG (quality ~75). Deployment sets resample a
finite pool (Tiny: 40 images per class), so a head class of a shifted set repeats images.

    python benchmarks/deployment.py [--datasets tiny cifar10] [--seeds 3] [--smoke]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.special import softmax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_bench import save_results  # noqa: E402  (what the probe benchmarks share)

from longtail.data.features import FeatureSet
from longtail.data.profiles import exponential_profile, subsample_per_class
from longtail.data.splits import first_per_class
from longtail.eval.paired import goal_verdict
from longtail.eval.prior import bbse_prior, correct_logits, em_prior, prior_from_counts
from longtail.eval.selective import confidence, fit_thresholds, selective_metrics
from longtail.eval.tables import markdown_table
from longtail.methods.probe import ProbeConfig, calibrate_temperature, fit_probe

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results" / "deployment.json"
PRIORS = ("balanced", "train", "reversed")  # deployment priors (a), (b), (c)
ROWS = ("balanced (no correction)", "--prior train", "estimate (EM)", "estimate=bbse", "oracle prior")
GROUPS = ("many", "medium", "few")
Z = 2.0  # "beyond noise": the goal's margin exceeds Z cluster-robust standard errors
RECOVERY_GOAL = 0.8  # (b), (c): estimate recovers this share of the oracle's gain
BALANCED_LOSS_GOAL = 0.003  # (a): estimate loses at most this much accuracy vs balanced
ERROR_FALL_GOAL = 0.3  # reject: relative fall of the accepted images' error
RATE_RATIO_GOAL = 2.0  # reject: each group's rejection rate within this factor of the overall


@dataclass
class Data:
    name: str
    train: FeatureSet  # the long-tailed training set
    val: FeatureSet  # held out from the test images: temperature, BBSE, thresholds
    pool: FeatureSet  # the rest of the test images: deployment sets are drawn from it
    counts: np.ndarray  # training images per class
    notes: str


# ---------------------------------------------------------------- data

def take(fs: FeatureSet, idx: np.ndarray, name: str) -> FeatureSet:
    return replace(fs, features=fs.features[idx], labels=fs.labels[idx], source=name)


def split_test(test: FeatureSet, per_class: int, name: str) -> tuple[FeatureSet, FeatureSet]:
    """(validation, pool): the first `per_class` test images of each class (file order), the rest."""
    val_idx, pool_idx = first_per_class(test.labels, per_class)
    return take(test, val_idx, f"{name}_val"), take(test, pool_idx, f"{name}_pool")


def extractor(args: argparse.Namespace):
    from longtail.models.backbone import load_backbone
    from longtail.models.features import extract_features

    backbone = load_backbone(args.backbone, image_size=args.image_size, crop_padding=0)
    return lambda images: extract_features(backbone, images, batch_size=args.batch_size, device=args.device,
                                           cache_dir=args.cache_dir, num_workers=args.workers)


def load_tiny(args: argparse.Namespace, extract) -> Data:
    """Tiny-ImageNet-100-LT as `real_tiny100_lt.py` builds it (same class order, LT draw and seed);
    only the LT training images and the 5,000 val images are extracted."""
    from real_tiny100_lt import class_order, lt_split

    from longtail.data.open_images import open_images

    root = args.tiny_root
    wnids = class_order(root)
    base_train = open_images(root, split="train", class_names=wnids)
    base_test = open_images(root, split="val", class_names=wnids)
    lt_idx, _, counts = lt_split(base_train.labels, args.ir, 0, 10)
    train = extract(base_train.subset(lt_idx, name=f"tiny100_lt_ir{args.ir:g}"))
    val, pool = split_test(extract(base_test), args.tiny_val_per_class, "tiny100")
    return Data("Tiny-ImageNet-100-LT", train, val, pool, counts,
                f"IR {args.ir:g}, {train.num_samples} training images; validation = first "
                f"{args.tiny_val_per_class} of the 50 val images per class, pool = the other "
                f"{50 - args.tiny_val_per_class}")


def load_cifar(args: argparse.Namespace, extract) -> Data:
    """CIFAR-10-LT as `real_cifar10_lt.py` builds it (n_c = floor(5000 IR^(-c/9)), LDAM draw, seed 0)."""
    from longtail.data.open_images import open_images
    from longtail.data.presets import CIFAR10_CLASSES

    root = args.cifar_root
    base_train = open_images(root, split="train", class_names=list(CIFAR10_CLASSES))
    base_test = open_images(root, split="test", class_names=list(CIFAR10_CLASSES))
    counts = exponential_profile(5000, 10, args.ir)
    lt_idx = subsample_per_class(base_train.labels, counts, 0)
    train = extract(base_train.subset(lt_idx, name=f"cifar10_lt_ir{args.ir:g}"))
    val, pool = split_test(extract(base_test), args.cifar_val_per_class, "cifar10")
    return Data("CIFAR-10-LT", train, val, pool, counts,
                f"IR {args.ir:g}, {train.num_samples} training images; validation = first "
                f"{args.cifar_val_per_class} of the 1,000 test images per class, pool = the other "
                f"{1000 - args.cifar_val_per_class}")


def load_smoke(seed: int = 0) -> Data:
    """Synthetic features (longtail.data.synthetic_features), small enough for a test."""
    from longtail.data.synthetic_features import make_synthetic_benchmark

    bench = make_synthetic_benchmark(seed=seed, num_classes=20, dim=32, n_max=200, imbalance_ratio=50,
                                     n_val=2, n_test=40, bayes_per_class=10)
    val, pool = split_test(bench.test, 10, "synthetic")
    return Data("synthetic (smoke)", bench.train, val, pool, bench.train.class_counts(),
                "synthetic_features, 20 classes, IR 50; validation = 10 test images per class, pool = 30")


def shot_groups(counts: np.ndarray) -> np.ndarray:
    """many (> 100 training images) / medium (20-100) / few (< 20), per class."""
    return np.where(counts > 100, "many", np.where(counts >= 20, "medium", "few"))


# ---------------------------------------------------------------- deployment sets

def deployment_priors(counts: np.ndarray) -> dict[str, np.ndarray]:
    """(a) uniform, (b) the training prior, (c) the training counts handed out in reverse rank."""
    order = np.argsort(-counts, kind="stable")  # head first
    reversed_counts = np.empty_like(counts)
    reversed_counts[order] = counts[order][::-1]
    return {"balanced": np.full(counts.size, 1.0 / counts.size), "train": prior_from_counts(counts),
            "reversed": prior_from_counts(reversed_counts)}


def draw_set(labels: np.ndarray, prior: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pool indices of one deployment set: N = pool size, class counts ~ Multinomial(N, prior);
    within a class a random order of its images, cycled (each once before any repeats)."""
    m = rng.multinomial(labels.size, prior)
    parts = [np.resize(rng.permutation(np.flatnonzero(labels == c)), k) for c, k in enumerate(m) if k]
    return np.concatenate(parts)


# ---------------------------------------------------------------- statistics

def cluster_se(d: np.ndarray, clusters: np.ndarray) -> float:
    """Standard error of mean(d), clusters = the test image each value came from (CR1)."""
    n = d.size
    ids, inv = np.unique(clusters, return_inverse=True)
    g = ids.size
    resid = np.bincount(inv, weights=d - d.mean(), minlength=g)
    return float(np.sqrt(np.sum(resid ** 2) * g / max(g - 1, 1)) / n)


def verdict(d: np.ndarray, clusters: np.ndarray) -> dict:
    """The one met / missed rule: the goal is mean(d) >= 0 (d paired per image)."""
    mean, se = float(d.mean()), cluster_se(d, clusters)
    return {"status": goal_verdict(mean, se, 0.0, Z), "margin": mean, "se": se}


def combine(verdicts: list[dict]) -> str:
    """All parts must hold: missed if one is missed, met if all are met."""
    s = [v["status"] for v in verdicts]
    return "missed" if "missed" in s else "met" if all(x == "met" for x in s) else "equal within noise"


def mean_sd(values: list[float | None]) -> dict | None:
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if a.size == 0:
        return None
    if not np.isfinite(a).all():  # e.g. the condition number of a singular BBSE confusion matrix
        return {"mean": None, "sd": None, "values": [float(v) if np.isfinite(v) else None for v in a]}
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if a.size > 1 else 0.0, "values": a.tolist()}


def balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    present = np.unique(y)
    return float(np.mean([(pred[y == c] == c).mean() for c in present]))


# ---------------------------------------------------------------- one probe

def corrections(z: np.ndarray, y: np.ndarray, source: np.ndarray, q_train: np.ndarray,
                val_pred: np.ndarray, val_y: np.ndarray, groups: np.ndarray) -> tuple[dict, dict]:
    """Predictions of every row on one deployment set (calibrated logits z) and what each
    estimate found: L1 distance of the estimated prior to the set's true class frequencies, and
    the prior mass EM and the truth give each shot group."""
    c = z.shape[1]
    truth = np.bincount(y, minlength=c) / y.size
    q_em, em_info = em_prior(softmax(z, axis=1), source)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q_bbse, bbse_info = bbse_prior(z.argmax(1), val_pred, val_y, c, source)
    targets = {ROWS[0]: np.full(c, 1.0 / c), ROWS[1]: q_train, ROWS[2]: q_em, ROWS[3]: q_bbse, ROWS[4]: truth}
    preds = {row: correct_logits(z, q, source).argmax(1) for row, q in targets.items()}
    info = {"em_l1": float(np.abs(q_em - truth).sum()), "em_iterations": em_info["iterations"],
            "bbse_l1": float(np.abs(q_bbse - truth).sum()), "bbse_condition": bbse_info["condition_number"],
            "bbse_warnings": len(caught), "train_prior_l1": float(np.abs(q_train - truth).sum())}
    for g in GROUPS:
        if (groups == g).any():
            info[f"em_mass_{g}"] = float(q_em[groups == g].sum())
            info[f"true_mass_{g}"] = float(truth[groups == g].sum())
    return preds, info


def run_probe(data: Data, label: str, cfg: ProbeConfig, source: np.ndarray, seeds: int) -> dict:
    """Fit one probe, calibrate it on the validation split, and score every row on every set."""
    start = time.perf_counter()
    probe = fit_probe(data.train, cfg)
    calibrate_temperature(probe, data.val)  # T by validation NLL; probe.logits now divides by T
    fit_seconds = time.perf_counter() - start
    z_pool, z_val = probe.logits(data.pool.features), probe.logits(data.val.features)
    z_pool_raw = z_pool * probe.temperature  # T = 1, for the uncalibrated --prior train row
    val_pred, val_y = z_val.argmax(1), data.val.labels
    q_train = prior_from_counts(data.counts)
    groups = shot_groups(data.counts)
    # The prior the calibrated probe implies on the balanced pool: its mean posterior mass per group
    # (a probe that estimated the balanced posterior exactly would give each group its class share).
    mass = softmax(z_pool, axis=1).mean(axis=0)
    implied = {g: {"mean_posterior_mass": float(mass[groups == g].sum()), "class_share": float((groups == g).mean())}
               for g in GROUPS if (groups == g).any()}
    out = {"probe": label, "temperature": probe.temperature, "fit_seconds": fit_seconds,
           "implied_group_mass_on_balanced_pool": implied, "priors": {}}
    raw_row = "--prior train, T = 1 (uncalibrated)"
    for p_idx, (prior_name, prior) in enumerate(deployment_priors(data.counts).items()):
        acc = {r: [] for r in (*ROWS, raw_row)}
        bal = {r: [] for r in (*ROWS, raw_row)}
        correct = {r: [] for r in (*ROWS, raw_row)}
        clusters, infos = [], []
        for seed in range(seeds):
            idx = draw_set(data.pool.labels, prior, np.random.default_rng([seed, p_idx]))
            y = data.pool.labels[idx]
            preds, info = corrections(z_pool[idx], y, source, q_train, val_pred, val_y, groups)
            preds[raw_row] = correct_logits(z_pool_raw[idx], q_train, source).argmax(1)
            for r, pred in preds.items():
                acc[r].append(float((pred == y).mean()))
                bal[r].append(balanced_accuracy(pred, y))
                correct[r].append(pred == y)
            clusters.append(idx)
            infos.append(info)
        cl = np.concatenate(clusters)
        cor = {r: np.concatenate(v).astype(np.float64) for r, v in correct.items()}
        est, base, orc = cor[ROWS[2]], cor[ROWS[0]], cor[ROWS[4]]
        if prior_name == "balanced":
            goal = {"goal": f"estimate loses <= {100 * BALANCED_LOSS_GOAL:.1f} point vs balanced",
                    **verdict(est - base + BALANCED_LOSS_GOAL, cl), "loss_points": 100 * float(base.mean() - est.mean())}
        else:
            gain = float(orc.mean() - base.mean())
            goal = {"goal": f"estimate recovers >= {100 * RECOVERY_GOAL:.0f} % of the oracle's gain over balanced",
                    **verdict(est - (1 - RECOVERY_GOAL) * base - RECOVERY_GOAL * orc, cl),
                    "recovered": float(est.mean() - base.mean()) / gain if gain else None,
                    "bbse_recovered": float(cor[ROWS[3]].mean() - base.mean()) / gain if gain else None,
                    "oracle_gain_points": 100 * gain, "oracle_gain": verdict(orc - base, cl)}
        out["priors"][prior_name] = {
            "set_size": int(data.pool.num_samples), "accuracy": {r: mean_sd(v) for r, v in acc.items()},
            "balanced_accuracy": {r: mean_sd(v) for r, v in bal.items()}, "goal": goal,
            "estimates": {k: mean_sd([i[k] for i in infos]) for k in infos[0]}}
    out["reject"] = reject_option(data, z_pool, z_val, seeds)
    return out


# ---------------------------------------------------------------- reject option

def reject_option(data: Data, z_pool: np.ndarray, z_val: np.ndarray, seeds: int, coverage: float = 0.9) -> dict:
    """Per-group vs one global threshold (both fitted on validation for `coverage`), scored on the
    balanced deployment sets (the same draws as the prior rows' (a))."""
    groups = shot_groups(data.counts)
    present = [g for g in GROUPS if (groups == g).any()]
    s_val, pred_val = confidence(z_val), z_val.argmax(1)
    correct_val = pred_val == data.val.labels
    rules = {"per shot group (predicted class)": fit_thresholds(s_val, correct_val, pred_val, groups, coverage=coverage),
             "one global threshold": fit_thresholds(s_val, correct_val, pred_val, np.full(groups.size, "all"),
                                                    coverage=coverage)}
    prior = deployment_priors(data.counts)["balanced"]
    sets = [draw_set(data.pool.labels, prior, np.random.default_rng([seed, 0])) for seed in range(seeds)]
    out = {}
    for name, t in rules.items():
        per_seed, acc_all, wrong_all, group_all = [], [], [], []
        for idx in sets:
            z, y = z_pool[idx], data.pool.labels[idx]
            m = selective_metrics(z, y, groups, GROUPS, thresholds=t)
            m.pop("curve")
            per_seed.append(m)
            s = confidence(z)
            acc_all.append(s >= t[z.argmax(1)])
            wrong_all.append(z.argmax(1) != y)
            group_all.append(groups[y])
        cl = np.concatenate(sets)
        a, w, g = np.concatenate(acc_all).astype(float), np.concatenate(wrong_all).astype(float), np.concatenate(group_all)
        r = 1.0 - a
        fall = verdict((1 - ERROR_FALL_GOAL) * w - w * a / a.mean(), cl)
        parts, ratio = [], {}
        for grp in present:
            share = (g == grp).mean()
            ind = (g == grp).astype(float)
            parts += [verdict(RATE_RATIO_GOAL * r - r * ind / share, cl), verdict(RATE_RATIO_GOAL * r * ind / share - r, cl)]
            ratio[grp] = float(r[g == grp].mean() / r.mean()) if r.mean() else None
        row = {k: mean_sd([m[k] for m in per_seed]) for k in ("coverage", "risk", "error_all", "aurc", "eaurc",
                                                              "rejection_rate")}
        row["rejection_rate_per_group"] = {grp: mean_sd([m["rejection_rate_per_group"][grp] for m in per_seed])
                                           for grp in present}
        row["rejection_rate_per_predicted_group"] = {
            grp: mean_sd([m["rejection_rate_per_predicted_group"][grp] for m in per_seed]) for grp in present}
        row["error_fall"] = float(1.0 - (w * a).sum() / a.sum() / w.mean())
        # The most any score could give at this coverage: every rejected image an error.
        row["error_fall_ceiling"] = float(1.0 - max(w.mean() - (1.0 - a.mean()), 0.0) / a.mean() / w.mean())
        row["rate_ratio"] = ratio
        row["goal_error_fall"] = fall
        row["goal_group_rates"] = {"status": combine(parts), "parts": parts}
        out[name] = row
    return out


# ---------------------------------------------------------------- tables

def pm(x: dict) -> str:
    return f"{100 * x['mean']:.2f} ± {100 * x['sd']:.2f}"


def prior_table(results: list[dict]) -> str:
    cols = [("probe", "probe", "s"), ("prior", "row", "s")]
    for p, letter in zip(PRIORS, "abc"):
        cols += [(f"({letter}) {p}: top-1", f"{p}_acc", "s"), (f"({letter}) bal. acc", f"{p}_bal", "s")]
    rows = []
    for res in results:
        for r in res["priors"]["balanced"]["accuracy"]:
            row = {"probe": f"{res['probe']} (T={res['temperature']:.2f})", "row": r}
            for p in PRIORS:
                row[f"{p}_acc"] = pm(res["priors"][p]["accuracy"][r])
                row[f"{p}_bal"] = pm(res["priors"][p]["balanced_accuracy"][r])
            rows.append(row)
    return markdown_table(rows, cols)


def goal_lines(res: dict) -> list[str]:
    lines = []
    for p, letter in zip(PRIORS, "abc"):
        g = res["priors"][p]["goal"]
        est = res["priors"][p]["estimates"]
        extra = (f"loss {g['loss_points']:.2f} points" if p == "balanced" else
                 f"recovered {100 * g['recovered']:.0f} % of the oracle's +{g['oracle_gain_points']:.2f} points "
                 f"(BBSE {100 * g['bbse_recovered']:.0f} %)" if g["recovered"] is not None else "oracle gain 0")
        # the most-tail group there is
        tail = max((grp for grp in ("few", "medium") if f"em_mass_{grp}" in est), key=GROUPS.index, default=None)
        mass = (f"; EM gives the {tail} group {100 * est[f'em_mass_{tail}']['mean']:.1f} % of the prior, truth "
                f"{100 * est[f'true_mass_{tail}']['mean']:.1f} %") if tail else ""
        lines.append(f"- {res['probe']}, ({letter}) {p}: {g['goal']}: **{g['status']}** ({extra}; margin "
                     f"{100 * g['margin']:+.2f} ± {100 * g['se']:.2f} points SE); prior L1 error EM "
                     f"{est['em_l1']['mean']:.3f}, BBSE {est['bbse_l1']['mean']:.3f}{mass}")
    return lines


def reject_table(res: dict) -> str:
    cols = [("thresholds (coverage 90 % on val)", "rule", "s"), ("coverage", "coverage", "s"),
            ("error, all", "error_all", "s"), ("error, accepted", "risk", "s"), ("error fall", "fall", "s"),
            ("fall if every rejection were an error", "ceiling", "s")]
    cols += [(f"rejected {g}", g, "s") for g in GROUPS]
    cols += [("max/min group ratio", "ratio", "s"), ("AURC", "aurc", "s")]
    rows = []
    for rule, r in res["reject"].items():
        row = {"rule": rule, "coverage": pm(r["coverage"]), "error_all": pm(r["error_all"]), "risk": pm(r["risk"]),
               "fall": f"{100 * r['error_fall']:.1f} % ({r['goal_error_fall']['status']})",
               "ceiling": f"{100 * r['error_fall_ceiling']:.1f} %",
               "aurc": pm(r["aurc"])}
        for g in GROUPS:
            row[g] = pm(r["rejection_rate_per_group"][g]) if g in r["rejection_rate_per_group"] else "n/a"
        ratios = [v for v in r["rate_ratio"].values() if v is not None]
        row["ratio"] = f"{max(ratios):.2f} / {min(ratios):.2f} ({r['goal_group_rates']['status']})"
        rows.append(row)
    return markdown_table(rows, cols)


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", choices=("tiny", "cifar10"), default=["tiny", "cifar10"])
    p.add_argument("--tiny-root", default=str(DATA / "tiny-imagenet-100a.zip"))
    p.add_argument("--cifar-root", default=str(DATA / "cifar10-jpeg.zip"))
    p.add_argument("--tiny-val-per-class", type=int, default=10)
    p.add_argument("--cifar-val-per-class", type=int, default=100)
    p.add_argument("--ir", type=float, default=100.0)
    p.add_argument("--seeds", type=int, default=3, help="deployment sets per prior")
    p.add_argument("--no-ce", action="store_true", help="skip the CE probe rows")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", help="feature cache (default $LONGTAIL_CACHE/features)")
    p.add_argument("--smoke", action="store_true", help="synthetic features, seconds (the test's mode)")
    p.add_argument("--out", help=f"results JSON (default {RESULTS.relative_to(RESULTS.parents[2])}; "
                                 "--smoke: runs/deployment_smoke.json); a .md beside it")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    if args.smoke:
        loaders = [lambda: load_smoke()]
    else:
        extract = extractor(args)
        loaders = [{"tiny": lambda: load_tiny(args, extract), "cifar10": lambda: load_cifar(args, extract)}[d]
                   for d in args.datasets]
    sections, datasets = [], []
    for load in loaders:
        start = time.perf_counter()
        data = load()
        load_seconds = time.perf_counter() - start
        groups = shot_groups(data.counts)
        print(f"{data.name}: {data.notes}; groups {dict(zip(*np.unique(groups, return_counts=True)))}; "
              f"features ready in {load_seconds:.0f}s", flush=True)
        uniform = np.full(data.counts.size, 1.0 / data.counts.size)  # both probes estimate the balanced posterior
        probes = [("cosine + LA (default)", ProbeConfig(device=args.device), uniform)]
        if not args.no_ce:  # CE logits minus log p_train, so T is fitted on balanced validation under its own prior
            probes.append(("linear CE + post-hoc LA", ProbeConfig(method="linear", loss="ce", posthoc_tau=1.0,
                                                                  device=args.device), uniform))
        results = []
        for label, cfg, source in probes:
            results.append(run_probe(data, label, cfg, source, args.seeds))
            print(f"  {label}: fitted in {results[-1]['fit_seconds']:.1f}s, T = {results[-1]['temperature']:.3f}",
                  flush=True)
        text = [f"### {data.name}", "", data.notes + f"; {args.seeds} deployment sets per prior of "
                f"{data.pool.num_samples} images each; mean ± SD over them (%).", "", prior_table(results), "",
                *[line for res in results for line in goal_lines(res)], "",
                f"Reject option, {results[0]['probe']}, balanced deployment sets (rejection rate by true class's "
                "shot group; ratio = group rate / overall rate):", "", reject_table(results[0])]
        section = "\n".join(text)
        print("\n" + section + "\n", flush=True)
        sections.append(section)
        datasets.append({"name": data.name, "notes": data.notes, "train_counts": data.counts.tolist(),
                         "groups": {g: int((groups == g).sum()) for g in GROUPS}, "val_images": data.val.num_samples,
                         "pool_images": data.pool.num_samples, "load_seconds": load_seconds, "probes": results})
    total = time.perf_counter() - t0
    info = {"smoke": args.smoke, "date": datetime.date.today().isoformat(),
            "machine": f"{cpu_name()}, {os.cpu_count()} cores (shared), no GPU" if not _cuda() or args.device == "cpu"
                       else f"GPU available, device {args.device}",
            "backbone": None if args.smoke else f"{args.backbone} @ {args.image_size}px", "seeds": args.seeds,
            "verdict_rule": f"met: mean(d) - {Z:g} SE > 0; missed: mean(d) + {Z:g} SE < 0; else equal within noise "
                            "(SE cluster-robust over test images, all seeds pooled)",
            "total_seconds": total, "datasets": datasets}
    out = Path(args.out) if args.out else (Path("runs/deployment_smoke.json") if args.smoke else RESULTS)
    save_results(out, info, "\n\n".join(sections) + f"\n\n{info['machine']}, {info['date']}, total {total:.0f}s")
    print(f"total {total:.0f}s; results: {out}")
    return info


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
