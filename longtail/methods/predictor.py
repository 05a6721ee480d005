"""Any run as a model: `Predictor.from_run(RUN)` turns images (or features) into the run's logits.

The one loader of a run for prediction: a probe run (its head on the features of the backbone
recorded in its training feature file, reloaded and checked against that file's weights
fingerprint and preprocessing) or any folder in the fit layout (fit runs, soups, MonoSoup edits,
LT-Soups soup/ and final/: `load_finetuned`). On top of the logits it applies the deployment
prior (`eval.prior`, docs/methods.md §13) and the reject option (`eval.selective`), both fitted
on the run's own validation split where they need one.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from longtail.data.features import FeatureSet
from longtail.data.images import ImageDataset
from longtail.errors import ConfigError, DataError
from longtail.runs import load_run

UNKNOWN = "unknown"  # the label of a rejected image
PRIOR_CHOICES = ("balanced", "train", "estimate", "estimate=em", "estimate=bbse")
# Probe / fit settings whose scores are calibrated for the training prior (plain cross-entropy,
# no post-hoc adjustment, no rebalancing method); every other run targets the balanced prior.
_TRAIN_PRIOR_METHODS = ("linear", "cosine")


@dataclass
class Predictor:
    """A run's classes, training counts and logits functions (see `from_run`)."""

    folder: Path
    kind: str
    class_names: list[str]
    train_counts: np.ndarray
    groups: np.ndarray  # many / medium / few of each class (the run's training statistics)
    trained_for: str  # 'balanced' or 'train': the prior the run's scores are calibrated for
    image_logits: Callable[[ImageDataset, bool], np.ndarray]
    feature_logits: Callable[[FeatureSet], np.ndarray] | None = None
    validation: Callable[[], tuple[np.ndarray, np.ndarray] | None] = lambda: None
    test: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None
    # (known test features, unknown features, class prototypes) for the cosine open-set score, or None
    cosine_inputs: Callable[[str | None, str], tuple[np.ndarray, np.ndarray, np.ndarray] | None] | None = None
    scoring: dict[str, Any] = field(default_factory=dict)  # evaluate()'s group settings for this run

    def __post_init__(self) -> None:
        self.validation = functools.cache(self.validation)  # one pass over the validation images

    @classmethod
    def from_run(cls, run: str | Path, device: str = "auto", batch_size: int = 64, workers: int = 0) -> Predictor:
        """The run at `run` as a model (one-line DataError for a folder that holds none)."""
        record = load_run(run)
        folder, config = Path(record["folder"]), record["config"]
        if config["kind"] == "probe":
            return _probe_predictor(record, device, batch_size, workers)
        from longtail.methods.finetune import is_fit_layout

        if is_fit_layout(folder):
            return _fit_predictor(record, device, batch_size, workers)
        raise DataError(f"{folder}: a {config['kind']} run without a model to predict with "
                        "(use a probe run, a fit run, or a soup of fit runs)")

    @property
    def source_prior(self) -> np.ndarray:
        """The prior the scores are calibrated for: uniform, or the training frequencies."""
        from longtail.eval.prior import prior_from_counts

        if self.trained_for == "train":
            return prior_from_counts(self.train_counts)
        return np.full(len(self.class_names), 1.0 / len(self.class_names))

    def predict(self, images: ImageDataset | Sequence[str], top_k: int = 5, prior: str | None = None,
                reject: str | None = None, progress: bool = False) -> list[dict[str, Any]]:
        """The rows `longtail predict` writes (path, label, score, status, top-k) for an
        ImageDataset or a list of image files; unreadable images get their reason as status."""
        if not isinstance(images, ImageDataset):
            from longtail.data.images import FileReader

            paths = [str(Path(p).resolve()) for p in images]
            images = ImageDataset(paths, np.zeros(len(paths), dtype=np.int64), ["?"], FileReader("/"), name="images")
        logits, reasons = self.score(images, progress)
        return self.table(logits, reasons, [images.describe(i) for i in range(len(images))], top_k, prior, reject)[0]

    def score(self, images: ImageDataset, progress: bool = False) -> tuple[np.ndarray, list[str | None]]:
        """(raw logits (N, C) with NaN rows for unreadable images, per image None or the reason it
        cannot be read): only the readable images go through the model."""
        from longtail.data.unlabelled import readable

        reasons = readable(images)
        good = np.flatnonzero([r is None for r in reasons])
        logits = np.full((len(images), len(self.class_names)), np.nan, dtype=np.float32)
        if good.size:
            logits[good] = self.image_logits(images.subset(good), progress)
        return logits, reasons

    def predict_folder(self, path: str | Path, **options: Any) -> list[dict[str, Any]]:
        """`predict` of every file under a folder (or in a zip, a list file, one image)."""
        from longtail.data.unlabelled import open_unlabelled

        return self.predict(open_unlabelled(path, all_files=True), **options)

    def table(self, logits: np.ndarray, reasons: list[str | None], paths: list[str], top_k: int = 5,
              prior: str | None = None, reject: str | None = None) -> tuple[list[dict[str, Any]], Any, dict, Any]:
        """(rows, target prior, how it was chosen, reject record) from raw logits (NaN rows where
        `reasons` says an image was unreadable): the prior correction, softmax, top-k and the
        reject rule (vectorised; the loop only formats rows)."""
        from scipy.special import softmax

        ok = np.array([r is None for r in reasons])
        target, prior_record = self.target_prior(prior, logits[ok] if ok.any() else None)
        z = np.zeros_like(logits)
        z[ok] = self.adjust(logits[ok], target)
        thresholds, reject_record = (None, None) if reject is None else self.thresholds(reject, target)
        k = min(top_k, len(self.class_names))
        probs = np.where(ok[:, None], softmax(z, axis=1), 0.0)
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        top_p = np.take_along_axis(probs, top, axis=1)
        accepted = np.ones(len(paths), dtype=bool) if thresholds is None else top_p[:, 0] >= thresholds[top[:, 0]]
        names, rows = self.class_names, []
        for i, path in enumerate(paths):
            row: dict[str, Any] = {"path": path}
            c = top[i, 0]
            if not ok[i]:
                row.update(label="", score=None, status=reasons[i])
            elif not accepted[i]:
                row.update(label=UNKNOWN, score=float(top_p[i, 0]),
                           status=f"rejected: confidence {top_p[i, 0]:.4f} below the {self.groups[c]} threshold "
                                  f"{thresholds[c]:.4f} for '{names[c]}'")
            else:
                row.update(label=names[c], score=float(top_p[i, 0]), status="ok")
            for j in range(k):
                row[f"label_{j + 1}"] = names[top[i, j]] if ok[i] else ""
                row[f"prob_{j + 1}"] = float(top_p[i, j]) if ok[i] else None
            rows.append(row)
        return rows, target, prior_record, reject_record

    def target_prior(self, spec: str | None, logits: np.ndarray | None = None) -> tuple[np.ndarray | None, dict]:
        """(target prior or None for 'as trained', a record of how it was chosen) for `--prior`:
        balanced, train, a CSV of class,weight, or estimate[=em|bbse] from `logits` (no labels)."""
        from longtail.eval import prior as P

        if spec is None:
            return None, {"prior": self.trained_for, "how": "as trained"}
        if spec == "balanced":
            return np.full(len(self.class_names), 1.0 / len(self.class_names)), {"prior": "balanced"}
        if spec == "train":
            return P.prior_from_counts(self.train_counts), {"prior": "train"}
        if spec.startswith("estimate"):
            if logits is None:
                raise ConfigError("--prior estimate needs the logits of the images to predict")
            return self._estimate(spec.partition("=")[2] or "em", logits)
        if not Path(spec).is_file():
            raise ConfigError(f"--prior must be one of {', '.join(PRIOR_CHOICES)} or a CSV file of "
                              f"class,weight; got '{spec}' (no such file)")
        return P.read_prior_file(spec, self.class_names), {"prior": "file", "file": spec}

    def _estimate(self, how: str, logits: np.ndarray) -> tuple[np.ndarray, dict]:
        from scipy.special import softmax

        from longtail.eval import prior as P

        if how == "em":
            temperature, calibrated = self.temperature()
            q, info = P.em_prior(softmax(logits / temperature, axis=1), self.source_prior)
            return q, {"prior": "estimate", "method": "em", "temperature": temperature,
                       "temperature_from": calibrated, **info}
        if how == "bbse":
            val = self.validation()
            if val is None:
                raise DataError(f"{self.folder}: --prior estimate=bbse needs a run with a validation split")
            val_logits, val_labels = val
            q, info = P.bbse_prior(logits.argmax(1), val_logits.argmax(1), val_labels, len(self.class_names))
            return q, {"prior": "estimate", "method": "bbse", **info}
        raise ConfigError(f"unknown prior estimate '{how}'; choose em or bbse")

    def temperature(self) -> tuple[float, str]:
        """(T, where it comes from) for calibrated probabilities: fitted on the run's validation
        split (its logits corrected to that split's own class frequencies, so a long-tailed split
        does not read as miscalibration), else the run's own (a calibrated probe's logits are
        already divided by it: 1)."""
        from longtail.eval.prior import prior_from_counts
        from longtail.methods.probe.select import fit_temperature

        val = self.validation()
        if val is None:
            return 1.0, "none (no validation split)"
        val_logits, val_labels = val
        present = prior_from_counts(np.bincount(val_labels, minlength=len(self.class_names)) + 1e-9)
        return fit_temperature(self.adjust(val_logits, present), val_labels)[0], "the run's validation split"

    def adjust(self, logits: np.ndarray, target: np.ndarray | None) -> np.ndarray:
        """Logits for the target prior: z + log q - log p_source (unchanged for None)."""
        from longtail.eval.prior import correct_logits

        return logits if target is None else correct_logits(logits, target, self.source_prior)

    def labelled(self, test: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(logits, labels) of the run's own test data, or of `test` (a feature file for a probe
        run, else an image dataset), its classes matched to the run's by name."""
        if test is None:
            return self.test()
        if self.feature_logits is not None and Path(test).suffix in (".npz", ".safetensors"):
            from longtail.data.features import match_classes
            from longtail.data.open_features import open_features

            fs = match_classes(self.class_names, open_features(test))
            return self.feature_logits(fs), fs.labels
        from longtail.data.open_images import open_matched, test_split_of

        images = open_matched(test, test_split_of(test), self.class_names)
        return self.image_logits(images, False), np.asarray(images.labels)

    def evaluate(self, test: str | None = None, prior: str | None = None, reject: str | None = None,
                 unknown: str | None = None) -> dict[str, Any]:
        """`longtail eval --prior / --reject / --unknown`: the metrics of the run's logits after the
        deployment prior, with the reject rule's operating point (per shot group) and, given images
        of classes outside training, the open-set AUROC and FPR at 95 % TPR of the max-softmax and
        energy scores, and of the cosine to the class prototypes when the run has them."""
        from longtail.eval.metrics import evaluate
        from longtail.eval.selective import (
            confidence,
            cosine_confidence,
            open_set_metrics,
            selective_metrics,
        )

        if reject is not None:
            self.thresholds(reject, None)  # a bad rule or no validation split fails before the test pass
        logits, labels = self.labelled(test)
        target, record = self.target_prior(prior, logits)
        z = self.adjust(logits, target)
        metrics = evaluate(z, labels, self.train_counts, class_names=self.class_names, **self.scoring)
        metrics["prior"] = {**record, **({} if target is None else {"weights": target.tolist()})}
        if reject is not None:
            thresholds, rule = self.thresholds(reject, target)
            metrics["selective"] = {**selective_metrics(z, labels, self.groups, thresholds=thresholds),
                                    "rule": reject, "how": rule}
        if unknown is not None:
            other = self._unknown_logits(unknown)
            other = self.adjust(other, target)
            metrics["open_set"] = {"source": unknown, "images": int(len(other)), **{
                kind: open_set_metrics(confidence(z, kind), confidence(other, kind)) for kind in ("msp", "energy")}}
            cosine = None if self.cosine_inputs is None else self.cosine_inputs(test, unknown)
            if cosine is not None:
                known, unseen, prototypes = cosine
                metrics["open_set"]["cosine"] = open_set_metrics(cosine_confidence(known, prototypes),
                                                                 cosine_confidence(unseen, prototypes))
        if test is not None:
            metrics["test_set"] = {"source": test, "own": False}
        return metrics

    def _unknown_logits(self, source: str) -> np.ndarray:
        from longtail.data.unlabelled import open_unlabelled, readable

        if self.feature_logits is not None and Path(source).suffix in (".npz", ".safetensors"):
            from longtail.data.open_features import open_features

            return self.feature_logits(open_features(source))
        images = open_unlabelled(source)
        bad = [reason for reason in readable(images) if reason is not None]
        if bad:
            raise DataError(f"{source}: {len(bad)} unreadable image(s) ({bad[0]})")
        return self.image_logits(images, False)

    def thresholds(self, reject: str, target: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
        """Per-class confidence thresholds for `--reject coverage=F|risk=F`, chosen on the run's
        validation split (after the same prior correction) per shot group of the predicted class."""
        from scipy.special import softmax

        from longtail.eval.selective import fit_thresholds

        key, _, value = reject.partition("=")
        try:
            amount = float(value)
        except ValueError:
            amount = -1.0
        if key not in ("coverage", "risk") or not 0 < amount <= 1:
            raise ConfigError(f"--reject must be coverage=F or risk=F with F in (0, 1], got '{reject}'")
        val = self.validation()
        if val is None:
            raise DataError(f"{self.folder}: --reject needs a run with a validation split "
                            "(probe: --val FILE; fit: val_per_class=N or val_split=F)")
        val_logits, val_labels = val
        z = self.adjust(val_logits, target)
        pred = z.argmax(1)
        score = softmax(z, axis=1).max(1)
        thresholds = fit_thresholds(score, pred == val_labels, pred, self.groups, **{key: amount})
        return thresholds, {"rule": reject, "per": "shot group of the predicted class", "val_images": int(val_labels.size)}


def _groups(counts: np.ndarray, class_names: list[str], group_counts=None, **thresholds: int) -> np.ndarray:
    """many / medium / few of each class, as `eval.metrics.evaluate` assigns them."""
    from longtail.data.stats import class_stats

    stats = class_stats(np.asarray(counts), class_names,
                        group_counts=None if group_counts is None else np.asarray(group_counts), **thresholds)
    return np.asarray(stats.groups)


def _probe_predictor(record: dict[str, Any], device: str, batch_size: int, workers: int) -> Predictor:
    from longtail.data.open_features import open_features
    from longtail.methods.probe.model import Probe
    from longtail.methods.probe.run import own_test_features, saved_feature_path

    folder, config = Path(record["folder"]), record["config"]
    probe = Probe.load(folder / "head")
    stats = record.get("data_stats") or {}
    counts = np.asarray(stats.get("counts", probe.class_counts))
    names = list(probe.class_names or stats.get("class_names") or [f"class_{i}" for i in range(len(counts))])
    settings = config.get("probe", {})
    trained_for = "train" if (settings.get("loss") == "ce" and settings.get("method") in _TRAIN_PRIOR_METHODS
                              and not settings.get("posthoc_tau")) else "balanced"
    train_meta: dict[str, Any] = {}  # the recorded backbone, loaded once

    def image_features(images: ImageDataset, progress: bool = False) -> np.ndarray:
        from longtail.data.features import read_meta
        from longtail.models.features import extract_features
        from longtail.models.recorded import recorded_backbone

        if "backbone" not in train_meta:
            path = saved_feature_path(config, "train", folder)
            train_meta["backbone"] = recorded_backbone(read_meta(path) or {}, f"{folder}: its training features ({path})")
        return extract_features(train_meta["backbone"], images, batch_size=batch_size, device=device,
                                progress=progress, num_workers=workers, cache=False).features

    def image_logits(images: ImageDataset, progress: bool) -> np.ndarray:
        return probe.logits(image_features(images, progress))

    def features_of(source: str, labelled: bool) -> np.ndarray:
        """Features of a feature file, or of images (a labelled test set or unlabelled ones)."""
        from longtail.data.open_images import open_matched, test_split_of
        from longtail.data.unlabelled import open_unlabelled

        if Path(source).suffix in (".npz", ".safetensors"):
            return open_features(source).features
        images = open_matched(source, test_split_of(source), names) if labelled else open_unlabelled(source)
        return image_features(images)

    def cosine_inputs(test: str | None, unknown: str):
        prototypes = open_features(saved_feature_path(config, "train", folder)).prototypes
        if prototypes is None:
            return None
        known = own_test_features(config, folder).features if test is None else features_of(test, True)
        return known, features_of(unknown, False), prototypes

    def validation() -> tuple[np.ndarray, np.ndarray] | None:
        from longtail.data.features import match_classes

        if config.get("val") is None:
            return None
        val = match_classes(names, open_features(saved_feature_path(config, "val", folder)))
        return probe.logits(val.features), val.labels

    def test() -> tuple[np.ndarray, np.ndarray]:
        from longtail.data.features import match_classes

        test_set = match_classes(names, own_test_features(config, folder))
        return probe.logits(test_set.features), test_set.labels

    scoring = {"group_counts": stats.get("group_counts"), "many_threshold": config.get("many_threshold", 100),
               "few_threshold": config.get("few_threshold", 20)}
    groups = _groups(counts, names, **scoring)
    return Predictor(folder, "probe", names, counts, groups, trained_for, image_logits,
                     lambda fs: probe.logits(fs.features), validation, test, cosine_inputs, scoring=scoring)


def _fit_predictor(record: dict[str, Any], device: str, batch_size: int, workers: int) -> Predictor:
    from longtail.methods.finetune import load_finetuned, predict_logits
    from longtail.methods.finetune.data import open_splits
    from longtail.methods.finetune.loading import train_counts
    from longtail.methods.finetune.predict import evaluation_logits

    folder = Path(record["folder"])
    model, info = load_finetuned(folder, device)
    cfg = info["config"]
    counts, group_counts = train_counts(info)
    names = list(info["class_names"])
    # the run's validation and test images as evaluation reads them (RunModel's splits), opened once
    own = dataclasses.replace(cfg, device=device, progress=False, eval_batch_size=batch_size, num_workers=workers)
    splits = functools.cache(lambda: open_splits(own, test=True))

    def image_logits(images: ImageDataset, progress: bool) -> np.ndarray:
        return predict_logits(model, images, batch_size=batch_size, tte=cfg.tte, device=device,
                              num_workers=workers, precision=cfg.precision, progress=progress)

    # the run's own validation / test images are scored as its metrics were (evaluation_logits:
    # from the frozen-prefix cache where the run trained from one, test-time augmentation on test)
    def validation() -> tuple[np.ndarray, np.ndarray] | None:
        val = splits().val
        return None if val is None else (evaluation_logits(model, own, val, device, tte=False), np.asarray(val.labels))

    def test() -> tuple[np.ndarray, np.ndarray]:
        test_set = splits().test
        return evaluation_logits(model, own, test_set, device), np.asarray(test_set.labels)

    trained_for = "train" if cfg.loss == "ce" else "balanced"
    scoring = {"group_counts": None if group_counts is None else np.asarray(group_counts)}
    return Predictor(folder, record["config"]["kind"], names, counts, _groups(counts, names, **scoring),
                     trained_for, image_logits, None, validation, test, scoring=scoring)
