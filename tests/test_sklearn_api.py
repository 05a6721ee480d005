"""The ecosystem's interfaces: LongTailClassifier (scikit-learn) and the latent samplers
(imbalanced-learn) pass their libraries' own checks and drop into pipelines and searches."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from longtail.errors import ConfigError
from longtail.methods.probe import LongTailClassifier

imblearn = pytest.importorskip("imblearn")
from imblearn.pipeline import Pipeline  # noqa: E402
from imblearn.utils.estimator_checks import (  # noqa: E402
    check_dataframe_column_names_consistency,
    check_param_validation,
)
from imblearn.utils.estimator_checks import parametrize_with_checks as imblearn_checks  # noqa: E402

from longtail.methods.latent import (  # noqa: E402
    DistributionCalibrationSampler,
    GaussianKDESampler,
    SMOTESampler,
    VMFKDESampler,
)

# Checks that are expected to fail, each with the reason (scikit-learn marks them xfail): none.
PROBE_XFAIL: dict[str, str] = {}
# Checks that skip themselves (reported as skipped, for the probe and for every sampler):
SKIPPED_BY_LIBRARY = {
    "check_array_api_input": "scikit-learn runs it only with SCIPY_ARRAY_API=1 and for estimators "
                             "that support the array API; these take numpy-convertible input "
                             "(torch inside), so it is not claimed",
}

PROBES = [
    LongTailClassifier(max_iter=50),  # the default: cosine head, logit-adjusted loss
    LongTailClassifier(method="linear", loss="ce", max_iter=50),
]


def _probe_xfail(estimator):
    return PROBE_XFAIL


@parametrize_with_checks(PROBES, expected_failed_checks=_probe_xfail)
def test_sklearn_checks_probe(estimator, check):
    check(estimator)


SAMPLER_XFAIL: dict[str, str] = {}
SAMPLERS = [
    VMFKDESampler(random_state=0),
    GaussianKDESampler(random_state=0),
    SMOTESampler(random_state=0),
    # head classes (here: within 1% of the largest) lend their statistics and are not resampled
    DistributionCalibrationSampler(random_state=0, k=1, head_threshold=0.99),
]


def _sampler_xfail(estimator):
    return SAMPLER_XFAIL


@imblearn_checks(SAMPLERS, expected_failed_checks=_sampler_xfail)
def test_imblearn_checks_samplers(estimator, check):
    check(estimator)


@parametrize_with_checks(SAMPLERS, expected_failed_checks=_sampler_xfail)
def test_sklearn_checks_samplers(estimator, check):
    check(estimator)


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: type(s).__name__)
def test_imblearn_param_validation_and_column_names(sampler):
    """imbalanced-learn's two checks outside its parametrize set: every parameter has a
    constraint (bad values: ValueError naming it), and data frame column names are kept."""
    check_param_validation(type(sampler).__name__, sampler)
    check_dataframe_column_names_consistency(type(sampler).__name__, sampler)


def _blobs(counts=(60, 20, 6), d=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(counts), d)) * 3
    x = np.concatenate([c + rng.normal(size=(n, d)) for c, n in zip(centres, counts)])
    y = np.repeat(np.array(["cat", "dog", "eel"])[: len(counts)], counts)
    return x.astype(np.float32), y


def test_probe_string_labels_proba_and_decision():
    x, y = _blobs()
    clf = LongTailClassifier(method="linear", loss="ce").fit(x, y)
    assert list(clf.classes_) == ["cat", "dog", "eel"] and clf.n_features_in_ == 8
    proba = clf.predict_proba(x)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    assert (clf.classes_[proba.argmax(1)] == clf.predict(x)).all()
    assert clf.decision_function(x).shape == (len(y), 3)
    assert clf.score(x, y) > 0.9
    np.testing.assert_allclose(clf.decision_function(x), clf.probe_.logits(x), rtol=1e-6)


def test_probe_bad_parameter_fails_in_fit_as_value_error():
    x, y = _blobs()
    clf = LongTailClassifier(loss="nope")  # __init__ only stores
    with pytest.raises(ConfigError, match="nope"):
        clf.fit(x, y)
    assert issubclass(ConfigError, ValueError)


def test_probe_prototypes_as_fit_parameter():
    x, y = _blobs()
    protos = np.stack([x[y == c].mean(0) for c in ("cat", "dog", "eel")])
    zs = LongTailClassifier(method="zero-shot").fit(x, y, prototypes=protos)
    assert zs.score(x, y) > 0.9
    with pytest.raises(ValueError):
        LongTailClassifier(method="zero-shot").fit(x, y)  # no prototypes


def test_probe_auto_choice_draws_validation_from_training_rows():
    x, y = _blobs()
    with pytest.raises(ValueError, match="val_split"):
        LongTailClassifier(posthoc_tau="auto").fit(x, y)
    clf = LongTailClassifier(posthoc_tau="auto", val_split=0.3).fit(x, y)
    assert clf.score(x, y) > 0.8


def test_cross_val_score_and_grid_search():
    x, y = _blobs(counts=(40, 30, 20))
    scores = cross_val_score(LongTailClassifier(method="linear", max_iter=100), x, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.8
    search = GridSearchCV(LongTailClassifier(method="linear", max_iter=100), {"loss": ["ce", "la"]}, cv=3)
    search.fit(x, y)
    assert search.best_params_["loss"] in ("ce", "la") and len(search.cv_results_["params"]) == 2


@pytest.mark.parametrize("sampler", [VMFKDESampler, GaussianKDESampler, SMOTESampler])
def test_imblearn_pipeline_fits_and_predicts(sampler):
    x, y = _blobs()
    pipe = Pipeline([("over", sampler(random_state=0)), ("probe", LongTailClassifier(method="linear", loss="ce"))])
    pipe.fit(x, y)
    assert pipe.score(x, y) > 0.9
    assert set(pipe.predict(x)) <= set(y)


@pytest.mark.parametrize("sampler", [VMFKDESampler, GaussianKDESampler, SMOTESampler])
def test_sampling_strategy_semantics(sampler):
    x, y = _blobs()
    x_res, y_res = sampler(random_state=0).fit_resample(x, y)  # 'auto': every class to the largest
    assert dict(zip(*np.unique(y_res, return_counts=True))) == {"cat": 60, "dog": 60, "eel": 60}
    np.testing.assert_array_equal(x_res[: len(x)], x)  # real rows first, unchanged
    assert x_res.dtype == np.float32
    _, y_min = sampler(random_state=0, sampling_strategy="minority").fit_resample(x, y)
    assert dict(zip(*np.unique(y_min, return_counts=True))) == {"cat": 60, "dog": 20, "eel": 60}
    _, y_dict = sampler(random_state=0, sampling_strategy={"eel": 9}).fit_resample(x, y)
    assert dict(zip(*np.unique(y_dict, return_counts=True))) == {"cat": 60, "dog": 20, "eel": 9}
    again = sampler(random_state=0).fit_resample(x, y)[0]
    np.testing.assert_array_equal(again, x_res)  # seeded


def test_distribution_calibration_leaves_head_classes_alone():
    x, y = _blobs(counts=(60, 50, 6))
    sampler = DistributionCalibrationSampler(random_state=0, k=2, head_threshold=40)
    _, y_res = sampler.fit_resample(np.abs(x), y)
    # 'auto' asks for 60 of each; 'dog' (50 > 40) is a head class and keeps its 50 rows
    assert dict(zip(*np.unique(y_res, return_counts=True))) == {"cat": 60, "dog": 50, "eel": 60}
    assert sampler.sampler_info_["head_classes"] == [0, 1]


@pytest.mark.parametrize("params", [{"method": "ncm"}, {"method": "crt"}, {"method": "tau-norm"},
                                    {"method": "lws"}, {"method": "smote"},
                                    {"method": "linear", "init": "prototypes", "l2_target": "init"}])
def test_probe_methods_through_the_estimator(params):
    x, y = _blobs()
    protos = np.stack([x[y == c].mean(0) for c in ("cat", "dog", "eel")])
    clf = LongTailClassifier(**params, prototypes=protos, max_iter=100).fit(x, y)
    assert clf.score(x, y) > 0.9 and clf.config_.method == params["method"]
