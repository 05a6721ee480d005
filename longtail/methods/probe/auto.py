"""`method=auto`: choose the probe method, loss, head, L2 strength and tau by balanced accuracy,
without test data, then refit the winner on all the training data (docs/methods.md §12).

Candidates (`method_options.candidates`, default DEFAULT_CANDIDATES; any probe method name):
  cosine     the default probe: cosine head, logit-adjusted loss (tau 1)
  tau-norm   a bias-free linear head with plain CE along an L2 path, scikit-learn's C in
             L2_PATH_C (l2 = 1 / (C N)), each fit warm-started from the previous one; every
             row rescaling W_c / ||W_c||^t, t in TAU_NORM_GRID (t = 0: the plain CE head)
  crt        linear head, class-balanced CE (Kang et al. 2020), warm-started from the path's
             first head when tau-norm comes before it
  ncm        the nearest class mean (the authors' rule: centred, L2-normalised, Euclidean;
             docs/methods.md §10.1), nothing trained
  zero-shot  the file's prototypes (left out of the default list when the file has none)
  l2-sp      a linear LA head started at the file's prototypes and pulled back to them
             (init=prototypes, l2_target=init, Li et al. 2018) along L2SP_PATH_C (each cold:
             the anchor is the start); left out when the file has no prototypes
  any other probe method (linear, lws, vmf-kde, ...) is fitted with the default loss (la).
Each fitted head is scored, on its logits only, at every post-hoc LA tau in POSTHOC_GRID and,
when the file has prototypes, every interpolation alpha in ALPHA_GRID (1: none).

Validation. With `val`, each candidate is fitted once on `train` and scored on `val`. Without,
stratified k-fold cross-validation on `train` (k = method_options.folds, default FOLDS;
`data.splits.stratified_folds`): every class is in every training part; a class with fewer
images than folds has one image held out in some folds and none in the others, so each
training part keeps at least one; a class with a single image is in every training part and
in no held-out part (never scored). The score is the mean over folds of the held-out balanced
accuracy (over the classes present there), recorded with its binomial standard error (`se`:
how much a small validation set can be trusted). The top score wins; among equal scores the
earlier row (cosine first, then
smaller tau), so the default probe wins a tie. The test set is never seen.

The winner is refitted from its configuration (cold start) on all of `train`, so the probe
returned is exactly what `method=<chosen> ...` gives. `probe.info["auto"]` holds the table,
the choice, how it was validated and the cost: seconds, and work (L-BFGS evaluations x
training samples, deterministic), each relative to one plain fit (the default cosine probe).
The design bound is 10 plain fits: k folds, each on (k - 1)/k of the data, x (cosine + 3
path fits + cRT, path and cRT warm-started) + the refit; the post-hoc variants cost no fit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from longtail.data.features import FeatureSet
from longtail.data.splits import stratified_folds
from longtail.data.stats import require_nonempty
from longtail.errors import ConfigError
from longtail.eval.metrics import balanced_accuracy_se
from longtail.methods.probe import prototypes
from longtail.methods.probe.config import ProbeConfig
from longtail.methods.probe.decoupling import CRT_LOSS, CRT_LOSS_OPTIONS, row_norms
from longtail.methods.probe.model import Probe, log_prior
from longtail.methods.probe.registry import PROBE_METHODS, get_method, probe_method
from longtail.methods.probe.train import train_head

FOLDS = 3  # k of the cross-validation (the cost grows with k: docs/methods.md §12)
DEFAULT_CANDIDATES = ("cosine", "tau-norm", "crt", "ncm", "zero-shot", "l2-sp")
NEEDS_PROTOTYPES = ("zero-shot", "l2-sp")  # dropped from the defaults when the file has none
# Candidates that are a probe method with fixed settings rather than a method name of their own.
COMPOSITE = {"l2-sp": {"method": "linear", "init": "prototypes", "l2_target": "init"}}
L2SP_PATH_C = (3.0, 10.0, 30.0)  # C of the L2-SP pull (l2 = 1 / (C N)); cold fits, anchor = start
L2_PATH_C = (1.0, 10.0, 100.0)  # scikit-learn's C; strong to weak, warm-started in this order
TAU_NORM_GRID = (0.0, 0.5, 1.0, 1.5)  # coarse: the post-hoc tau grid also shifts to the tail
POSTHOC_GRID = (0.0, 0.5, 1.0, 1.5)
ALPHA_GRID = (1.0, 0.75, 0.5, 0.25)  # weight of the trained head; 1: no interpolation
CE_CANDIDATES = ("tau-norm", "lws")  # heads trained with plain CE; every other with la
_OPTIONS = ("candidates", "folds")
_SET_BY_AUTO = (("loss", "la"), ("head", "linear"), ("l2", None), ("posthoc_tau", None),
                ("interpolate", None), ("init", "random"))


# ----------------------------------------------------------------------------- options
def candidate_names(options: dict[str, Any]) -> tuple[str, ...]:
    """method_options.candidates: probe method names (a list, or one comma-separated string)."""
    value = options.get("candidates", DEFAULT_CANDIDATES)
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"method 'auto': method_options.candidates must be a non-empty list of probe "
                          f"method names, got {value!r}")
    valid = [name for name in PROBE_METHODS.names() if name != "auto"] + list(COMPOSITE)
    for name in value:
        if name not in valid:
            raise ConfigError(f"method 'auto': unknown candidate '{name}' (valid: {', '.join(valid)})")
    return tuple(dict.fromkeys(value))


def fold_count(options: dict[str, Any]) -> int:
    """method_options.folds: k of the cross-validation used without a validation set (>= 2)."""
    value = options.get("folds", FOLDS)
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ConfigError(f"method 'auto': method_options.folds must be an integer >= 2, got {value!r}")
    return value


def _check_options(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ConfigError(f"method 'auto': unknown method_options key '{unknown[0]}' (valid: {', '.join(_OPTIONS)})")
    candidate_names(options)
    fold_count(options)


def _check_base(cfg: ProbeConfig) -> None:
    """auto chooses these fields itself: a value other than the default is a ConfigError."""
    for name, default in _SET_BY_AUTO:
        if getattr(cfg, name) != default:
            raise ConfigError(f"method 'auto' chooses {name} itself: drop {name}={getattr(cfg, name)!r}")
    if cfg.loss_options:
        raise ConfigError("method 'auto' chooses the loss itself: drop loss_options")


# ----------------------------------------------------------------------------- candidates
def _settings(name: str, **extra: Any) -> dict[str, Any]:
    """One row's settings; C (scikit-learn's, l2 = 1 / (C N)) is None for the method's default l2."""
    return {"method": name, "loss": "ce" if name in CE_CANDIDATES else "la", "C": None,
            "method_options": {}, "posthoc_tau": None, "interpolate": None, **COMPOSITE.get(name, {}), **extra}


def config_of(base: ProbeConfig, settings: dict[str, Any], num_samples: int) -> ProbeConfig:
    """The ProbeConfig of one table row for a training set of `num_samples`: `base` with the
    row's settings, C turned into l2 = 1 / (C num_samples)."""
    values = {k: v for k, v in settings.items() if k != "C"}
    l2 = None if settings["C"] is None else 1.0 / (settings["C"] * num_samples)
    return replace(base, **values, l2=l2, loss_options={})


def _train(train: FeatureSet, cfg: ProbeConfig, head: dict[str, Any], init: dict[str, Any] | None) -> Probe:
    """One head of cfg's loss and solver, `head` spec, started from `init` (None: random)."""
    training = {**cfg.head_training(), "head": head}
    return train_head(train.features, train.labels, train.class_counts(), **training, init=init,
                      class_names=train.names())


def _fits(name: str, train: FeatureSet, base: ProbeConfig, shared: dict[str, Any]):
    """(settings, probe without post-hoc adjustment) for each fit of candidate `name`.

    Warm starts, all on this training set only (no held-out image shapes a start): the L2 path
    from the previous (stronger) L2, and cRT from the path's first head (`shared`). Both
    objectives are strictly convex (l2 > 0), so a warm start changes where L-BFGS starts,
    not the minimiser it stops near. The default probe (cosine, not convex) is always cold.
    """
    if name == "tau-norm":
        init = None
        for c in L2_PATH_C if base.solver == "lbfgs" else (None,):
            settings = _settings(name, C=c, method_options={"tau": 0.0, "bias": "none"})  # a bias-free head
            probe = _train(train, config_of(base, settings, train.num_samples), {"type": "linear", "use_bias": False},
                           init)
            init = {"weight": probe.head.weight.detach().clone()}  # warm start of the next, weaker L2
            shared.setdefault("ce_weight", init["weight"])  # build_head copies it: never trained in place
            yield settings, probe
    elif name == "l2-sp":
        for c in L2SP_PATH_C:
            settings = _settings(name, C=c)
            cfg = config_of(base, settings, train.num_samples)
            yield settings, get_method(cfg.method).fit(train, cfg, None)
    elif name == "crt" and "ce_weight" in shared and base.solver == "lbfgs":
        settings = _settings(name)
        cfg = replace(config_of(base, settings, train.num_samples), loss=CRT_LOSS, loss_options=dict(CRT_LOSS_OPTIONS))
        yield settings, _train(train, cfg, {"type": "linear"}, {"weight": shared["ce_weight"].clone()})
    else:
        settings = _settings(name)
        yield settings, get_method(name).fit(train, config_of(base, settings, train.num_samples), None)


def _variants(name: str, settings: dict[str, Any], probe: Probe, features: np.ndarray):
    """(settings, predictions) of every post-hoc variant of one fitted probe, from one forward
    pass; per head, every alpha and post-hoc tau at once: (A, T, rows, C) logits per row chunk
    (within the probe's memory budget), as Probe.combine."""
    norms = row_norms(probe.head.weight)
    # tau-norm: z_c = f . W_c, so the tau-normalised logits are z_c / ||W_c||^t, one head per t
    heads = ([({**settings, "method_options": {"tau": t, "bias": "none"}}, norms.pow(t)) for t in TAU_NORM_GRID]
             if name == "tau-norm" else [(settings, None)])
    alphas = ALPHA_GRID if probe.zero_shot is not None else (1.0,)
    prior = torch.as_tensor(log_prior(probe.class_counts), dtype=torch.float32)
    shifts = torch.tensor(POSTHOC_GRID, dtype=torch.float32)[:, None, None] * prior  # (T, 1, C)
    weights = torch.tensor(alphas, dtype=torch.float32)[:, None, None]  # (A, 1, 1)
    n = len(features)
    predictions = np.empty((len(heads), len(alphas), len(POSTHOC_GRID), n), dtype=np.int64)
    rows = probe.chunk_rows(4 * probe.num_classes * (2 * len(alphas) * len(POSTHOC_GRID) + 3), n)
    for start in range(0, n, rows):
        trained, zs = probe.parts(features[start:start + rows])
        for h, (_, scale) in enumerate(heads):
            z = trained if scale is None else trained / scale
            mixed = z[None] if zs is None else (1.0 - weights) * zs + weights * z  # alpha 1: z exactly
            predictions[h, ..., start:start + rows] = (mixed[:, None] - shifts).numpy().argmax(-1)  # numpy's ~3x torch's
    for (head_settings, _), by_alpha in zip(heads, predictions):
        for alpha, by_tau in zip(alphas, by_alpha):
            for tau, pred in zip(POSTHOC_GRID, by_tau):
                yield ({**head_settings, "interpolate": None if alpha == 1.0 else alpha,
                        "posthoc_tau": None if tau == 0.0 else tau}, pred)


def _work(probe: Probe, num_samples: int) -> int:
    """A fit's work in sample-evaluations: L-BFGS objective evaluations x training samples
    (deterministic, unlike seconds on a shared machine); 0 for methods that train no head."""
    return int(probe.info.get("train", {}).get("evaluations", 0)) * num_samples


def _score_all(names: tuple[str, ...], train: FeatureSet, held: FeatureSet, base: ProbeConfig
               ) -> tuple[dict[str, tuple[str, dict, tuple[float, float]]], dict[str, np.ndarray]]:
    """{row key: (candidate, settings, (held-out balanced accuracy, its SE))}, {candidate: (seconds, work)}."""
    rows: dict[str, tuple[str, dict, tuple[float, float]]] = {}
    cost: dict[str, np.ndarray] = {}
    shared: dict[str, Any] = {}
    for name in names:
        cost[name] = np.zeros(2)
        fits = _fits(name, train, base, shared)
        while True:
            start = time.perf_counter()
            settings, probe = next(fits, (None, None))
            if probe is None:
                break
            cost[name] += (time.perf_counter() - start, _work(probe, train.num_samples))
            if get_method(settings["method"]).trains and train.prototypes is not None:
                probe.zero_shot = prototypes.interpolation_head(train, base.scale, probe.normalize)
            for row, pred in _variants(name, settings, probe, held.features):
                rows[json.dumps(row, sort_keys=True)] = (name, row, balanced_accuracy_se(pred, held.labels,
                                                                                         train.num_classes))
    return rows, cost


# ----------------------------------------------------------------------------- the method
def _plain_fit(cost: dict[str, list[np.ndarray]], k: int | None, chosen: str, refit: np.ndarray
               ) -> tuple[np.ndarray | None, str]:
    """One plain fit's (seconds, work): the default cosine + LA probe on the same data, and how known."""
    if chosen == "cosine":
        return refit, "the refit (the winner is the plain probe)"
    if "cosine" not in cost:
        return None, "unknown (cosine not among the candidates)"
    if k is None:
        return cost["cosine"][0], "the cosine candidate, fitted on the same training set"
    return np.mean(cost["cosine"], axis=0) * k / (k - 1), f"mean cosine fold fit x {k}/{k - 1}"


def _parts(train: FeatureSet, val: FeatureSet | None, cfg: ProbeConfig) -> tuple[int | None, Iterator]:
    """(k or None, (training part, held-out part) pairs): (train, val), or the k stratified folds,
    each fold's copies made when it is reached, so one fold's features live at a time (at
    iNat-2018's shape each fold is 1.3 GB: all k at once would not fit a 6 GB budget)."""
    if val is not None:
        return None, iter([(train, val)])
    k = fold_count(cfg.method_options)
    folds = stratified_folds(train.labels, k, cfg.seed, train.num_classes)
    return k, ((train.with_arrays(train.features[a], train.labels[a]),
                train.with_arrays(train.features[b], train.labels[b])) for a, b in folds)


@probe_method("auto", check_options=_check_options, check_config=_check_base)
def fit_auto(train: FeatureSet, cfg: ProbeConfig, val: FeatureSet | None = None) -> Probe:
    """Choose method, loss, head, l2 and tau by balanced accuracy on val (else k-fold CV on train)."""
    start = time.perf_counter()
    names = candidate_names(cfg.method_options)
    if train.prototypes is None and "candidates" not in cfg.method_options:
        names = tuple(n for n in names if n not in NEEDS_PROTOTYPES)
    for name in set(names) & set(NEEDS_PROTOTYPES):  # named by the user: fail before any fit
        prototypes.require_prototypes(train, f"candidate '{name}'")
    require_nonempty(train.class_counts(), train.names())
    base = replace(cfg, method="cosine", method_options={})
    k, parts = _parts(train, val, cfg)
    table: dict[str, dict[str, Any]] = {}
    cost: dict[str, list[np.ndarray]] = {n: [] for n in names}  # (seconds, work) per part
    held_out_sizes = []
    for part_train, held in parts:
        held_out_sizes.append(int(held.num_samples))
        rows, spent = _score_all(names, part_train, held, base)
        del part_train, held  # this fold's copies go before the next fold's (and the refit) are made
        for name, c in spent.items():
            cost[name].append(c)
        for key, (name, settings, (score, error)) in rows.items():
            row = table.setdefault(key, {"candidate": name, "settings": settings, "scores": [], "errors": []})
            row["scores"].append(score)
            row["errors"].append(error)
    for row in table.values():
        row["mean"] = float(np.mean(row["scores"]))
        row["se"] = float(np.sqrt(np.sum(np.square(row.pop("errors")))) / len(held_out_sizes))  # SE of the mean
        row["fit_seconds"], row["fit_work"] = np.sum(cost[row["candidate"]], axis=0).tolist()
    candidates = list(table.values())
    best = candidates[int(np.argmax([row["mean"] for row in candidates]))]  # first of equals wins
    search = time.perf_counter() - start
    chosen = config_of(base, best["settings"], train.num_samples)
    probe = get_method(chosen.method).fit(train, chosen, None)
    refit = np.array([time.perf_counter() - start - search, _work(probe, train.num_samples)])
    plain, plain_from = _plain_fit(cost, k, best["candidate"], refit)
    total = np.array([time.perf_counter() - start, sum(np.sum(c, axis=0)[1] for c in cost.values()) + refit[1]])
    probe.info["auto"] = {
        "validated_by": "val" if k is None else f"{k}-fold cross-validation on train",
        "folds": k, "held_out_sizes": held_out_sizes,
        "metric": "balanced accuracy", "candidates": candidates,
        "chosen": {"candidate": best["candidate"], "settings": best["settings"], "score": best["mean"],
                   "se": best["se"], "l2": chosen.l2},
        "search_seconds": search, "refit_seconds": float(refit[0]), "total_seconds": float(total[0]),
        "work_unit": "L-BFGS objective evaluations x training samples", "total_work": int(total[1]),
        "plain_fit_from": plain_from,
        "plain_fit_seconds": None if plain is None else float(plain[0]),
        "cost_vs_plain_fit": None if plain is None or not plain[0] else float(total[0] / plain[0]),
        "work_vs_plain_fit": None if plain is None or not plain[1] else float(total[1] / plain[1]),
    }
    return probe


def selection_rows(auto: dict[str, Any]) -> list[dict[str, Any]]:
    """`info["auto"]`'s candidate table as flat rows (selection.csv): the chosen row first, then
    the others by mean score (a stable sort: among equals the table's order)."""
    folds = auto["folds"]
    out = []
    chosen = auto["chosen"]["settings"]
    for row in sorted(auto["candidates"], key=lambda r: (r["settings"] != chosen, -r["mean"])):
        settings = row["settings"]
        scores = dict(zip([f"fold_{i + 1}" for i in range(folds)] if folds else ["val"], row["scores"]))
        out.append({"candidate": row["candidate"], **{k: settings[k] for k in ("method", "loss", "C")},
                    "init": settings.get("init", "random"),
                    "method_options": json.dumps(settings["method_options"], sort_keys=True),
                    "posthoc_tau": settings["posthoc_tau"], "interpolate": settings["interpolate"],
                    **scores, "mean": row["mean"], "se": row["se"], "fit_seconds": row["fit_seconds"], "fit_work": row["fit_work"]})
    return out
