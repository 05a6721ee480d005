"""Probe training: toy problems, agreement with scikit-learn, save/load, post-hoc tau, the
config grammar (validated on construction), errors."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from longtail.data.features import FeatureSet
from longtail.errors import ConfigError, DataError, UnknownNameError
from longtail.eval.metrics import balanced_accuracy
from longtail.methods.probe import TAU_GRID, Probe, ProbeConfig, fit_probe, train_head


def _blobs(seed=0, counts=(60, 30, 12, 6), d=8, spread=1.0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(len(counts), d)) * 2.0
    y = np.repeat(np.arange(len(counts)), counts)
    x = means[y] + spread * rng.normal(size=(y.size, d))
    return FeatureSet(x.astype(np.float32), y, class_names=[f"c{i}" for i in range(len(counts))])


def test_learns_separable_problem():
    fs = _blobs(spread=0.05)
    for cfg in (ProbeConfig(method="linear", loss="ce"), ProbeConfig(method="cosine"), ProbeConfig(solver="adamw", epochs=100, lr=0.1)):
        probe = fit_probe(fs, cfg)
        assert (probe.predict(fs.features) == fs.labels).all(), cfg


def test_lbfgs_matches_sklearn():
    fs = _blobs(seed=1, spread=1.5)
    x = fs.features / np.linalg.norm(fs.features, axis=1, keepdims=True)
    sk = LogisticRegression(C=1.0, max_iter=1000, tol=1e-6).fit(x.astype(np.float64), fs.labels)
    probe = fit_probe(fs, ProbeConfig(method="linear", loss="ce", tol=1e-6))
    ours = probe.logits(fs.features)
    ref = sk.decision_function(x)
    # Same objective and optimum: logits agree up to a per-row constant (softmax invariance).
    diff = (ours - ours.mean(1, keepdims=True)) - (ref - ref.mean(1, keepdims=True))
    assert np.abs(diff).max() < 2e-3
    assert (ours.argmax(1) == ref.argmax(1)).all()


def test_deterministic_and_seeded():
    fs = _blobs(seed=2)
    for cfg in (ProbeConfig(method="linear", loss="ce"), ProbeConfig(solver="adamw", epochs=3, seed=5)):
        a, b = fit_probe(fs, cfg).logits(fs.features), fit_probe(fs, cfg).logits(fs.features)
        assert np.array_equal(a, b)
    c = fit_probe(fs, ProbeConfig(method="linear", loss="ce", solver="adamw", epochs=3, seed=6)).logits(fs.features)
    assert not np.array_equal(a, c)


def test_logit_adjusted_loss_favours_tail():
    fs = _blobs(seed=3, counts=(200, 100, 10, 5), spread=2.0)
    ce = fit_probe(fs, ProbeConfig(method="linear", loss="ce")).predict(fs.features)
    la = fit_probe(fs, ProbeConfig(method="linear", loss="la", loss_options={"tau": 1.0})).predict(fs.features)
    assert (la >= 2).sum() > (ce >= 2).sum()  # more predictions of the two tail classes


def test_save_load_round_trip(tmp_path):
    fs = _blobs(seed=4)
    probe = fit_probe(fs, ProbeConfig(loss="la", posthoc_tau=0.5, method="cosine"))
    probe.save(tmp_path / "run")
    loaded = Probe.load(tmp_path / "run")
    assert np.array_equal(probe.logits(fs.features), loaded.logits(fs.features))
    assert loaded.posthoc_tau == 0.5 and loaded.class_names == fs.names()
    assert loaded.config["loss"] == "la" and loaded.head.spec()["type"] == "cosine"
    with pytest.raises(DataError, match="already exists"):
        probe.save(tmp_path / "run")
    with pytest.raises(DataError, match="missing head.json"):
        Probe.load(tmp_path / "nothing")


def test_posthoc_tau_fixed_and_auto():
    fs = _blobs(seed=5, counts=(200, 100, 10, 5), spread=2.5)
    val = _blobs(seed=5, counts=(50, 50, 50, 50), spread=2.5)  # same means (same seed), balanced
    probe = fit_probe(fs, ProbeConfig(method="linear", loss="ce"))
    fixed = fit_probe(fs, ProbeConfig(method="linear", loss="ce", posthoc_tau=1.0))
    log_pi = np.log(fs.class_counts() / fs.num_samples)
    assert np.allclose(fixed.logits(val.features), probe.logits(val.features) - log_pi, atol=1e-5)

    auto = fit_probe(fs, ProbeConfig(method="linear", loss="ce", posthoc_tau="auto"), val)
    raw = probe.logits(val.features)
    scores = [balanced_accuracy(raw - t * log_pi, val.labels) for t in TAU_GRID]
    assert auto.posthoc_tau == pytest.approx(TAU_GRID[int(np.argmax(scores))])
    assert max(scores) > scores[0]  # adjustment helps on this long-tailed set
    assert auto.info["selection"]["best"] == pytest.approx(max(scores))


def test_train_head_api():
    fs = _blobs(seed=6)
    probe = train_head(fs.features, fs.labels, np.array([10, 10, 10, 10]), loss="la")
    assert probe.logits(fs.features).shape == (fs.num_samples, 4)
    assert np.array_equal(probe.class_counts, [10, 10, 10, 10])
    init = {"weight": np.zeros((4, fs.dim), np.float32), "bias": np.arange(4, dtype=np.float32)}
    zero_steps = train_head(fs.features, fs.labels, fs.class_counts(), solver_options={"max_iter": 0}, init=init)
    assert np.array_equal(zero_steps.logits(fs.features[:3]), np.tile(np.arange(4.0), (3, 1)))


def test_errors():
    fs = _blobs()
    empty = FeatureSet(fs.features, np.where(fs.labels == 2, 1, fs.labels), class_names=fs.names())
    with pytest.raises(DataError, match="class 'c2' has no training samples"):
        fit_probe(empty, ProbeConfig(method="linear", loss="ce"))
    with pytest.raises(ConfigError, match="validation set"):
        fit_probe(fs, ProbeConfig(method="linear", loss="ce", posthoc_tau="auto"))
    with pytest.raises(DataError, match="shape"):
        fit_probe(fs, ProbeConfig(method="linear", loss="ce")).logits(np.zeros((2, 3), np.float32))
    with pytest.raises(DataError, match="NaN"):
        train_head(np.full((4, 2), np.nan), np.arange(4), np.ones(4))
    with pytest.raises(ConfigError, match="L2-SP"):
        train_head(fs.features, fs.labels, fs.class_counts(), l2_target="init")


@pytest.mark.parametrize("values, message", [
    ({"method": "svm"}, "unknown probe method 'svm'; choose from: auto, cosine, crt, distribution-calibration, gaussian-kde, linear, lws, ncm, smote, tau-norm"),
    ({"solver": "sgd"}, "unknown probe solver 'sgd'; choose from: adamw, lbfgs"),
    ({"loss": "lq"}, "unknown loss 'lq'; choose from: balanced-softmax, ccar"),
    ({"head": "mlp"}, "unknown head 'mlp'; choose from: cosine, linear"),
    ({"loss": "la", "loss_options": {"gamma": 0.1}}, "loss 'la': unknown loss_options key 'gamma' (valid: tau)"),
    ({"loss": "ce", "loss_options": {"tau": 0.5}}, "loss 'ce': unknown loss_options key 'tau' (valid: none)"),
    ({"loss": "la", "loss_options": {"tau": "abc"}}, "loss 'la': bad loss_options"),
    ({"loss": "weighted-ce", "loss_options": {"beta": 2.0}}, "beta must be in [0, 1)"),
    ({"method_options": {"k": 1}}, "method 'cosine' takes no method_options (got k)"),
    ({"method": "smote", "method_options": {"kappa": 3}}, "method 'smote': unknown method_options key 'kappa'"),
    ({"method": "zero-shot", "interpolate": 0.5}, "interpolate applies to trained methods"),
    ({"posthoc_tau": "best"}, "posthoc_tau must be none, 'auto' or a finite number, got 'best'"),
    ({"interpolate": 1.5}, "interpolate must be none, 'auto' or a number in [0, 1], got 1.5"),
    ({"normalize": "yes"}, "normalize='yes': expected true/false"),
    ({"max_iter": -1}, "max_iter must be >= 0"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"init": "zeros"}, "init must be one of random, prototypes"),
    ({"calibrate": "platt"}, "calibrate must be one of None, temperature"),
    ({"l2_target": "init"}, "needs init='prototypes'"),
    ({"device": "cuad"}, "unknown device 'cuad'"),
    ({"tau": 0.5}, "unknown config key 'tau'; valid keys: method"),  # no flat tau beside loss_options
    ({"loss": "la", "loss_params": {"tau": 2}}, "unknown config key 'loss_params'"),
])
def test_config_rejects_bad_values_on_construction(values, message):
    with pytest.raises(ConfigError) as err:
        ProbeConfig.from_dict(values)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, UnknownNameError) == ("choose from" in message)


def test_config_grammar_and_round_trip():
    from longtail.config import apply_overrides

    cfg = apply_overrides(ProbeConfig(method="linear", loss="ce"), {"loss": "la", "loss_options.tau": 0.5, "method": "cosine", "lr": 1})
    assert cfg.loss_options == {"tau": 0.5} and cfg.method == "cosine" and cfg.lr == 1.0
    assert ProbeConfig.from_dict(cfg.to_dict()) == cfg
    assert ProbeConfig(method="linear", loss="ce", posthoc_tau=1).posthoc_tau == 1.0 and ProbeConfig(posthoc_tau="auto").posthoc_tau == "auto"
    # the loss gets exactly loss_options: tau 0.5 here, not a default or a second field
    assert cfg.head_training()["loss_options"] == {"tau": 0.5}


def test_saved_configs_of_the_old_layout_are_upgraded():
    from longtail.methods.probe.config import upgrade_saved

    old = {"method": "vmf-kde", "loss": "la", "tau": 0.5, "gamma": None, "mu": None, "omega": None,
           "loss_params": {"tau": 2.0}, "method_params": {"k_neighbors": 3}, "optimizer": "adamw"}
    cfg = ProbeConfig.from_dict(upgrade_saved(old, format_version=1))
    # the old code gave tau 2 (loss_params won); the upgrade keeps what was trained
    assert cfg.loss_options == {"tau": 2.0} and cfg.method_options == {"k_neighbors": 3} and cfg.solver == "adamw"
    ce = upgrade_saved({"loss": "ce", "tau": 1.0, "optimizer": "lbfgs"}, format_version=0)
    assert ProbeConfig.from_dict(ce).loss_options == {}  # flat fields ce did not take were ignored then
    assert upgrade_saved({"loss": "la", "tau": 1.0}, format_version=2) == {"loss": "la", "tau": 1.0}


def test_weighted_ce_matches_sklearn_class_weight_balanced():
    fs = _blobs(seed=3, spread=1.5)
    x = fs.features / np.linalg.norm(fs.features, axis=1, keepdims=True)
    sk = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000, tol=1e-8).fit(x, fs.labels)
    ours = fit_probe(fs, ProbeConfig(method="linear", loss="weighted-ce", tol=1e-7))
    assert np.allclose(ours.head.weight.detach().numpy(), sk.coef_, atol=2e-3)
    assert np.array_equal(ours.predict(fs.features), sk.predict(x))


def test_temperature_scaling_keeps_predictions_and_lowers_val_nll(tmp_path):
    import torch.nn.functional as F

    train, val = _blobs(seed=4, spread=2.0), _blobs(seed=5, spread=2.0, counts=(20, 20, 20, 20))
    plain = fit_probe(train, ProbeConfig(method="linear", loss="la"))
    calibrated = fit_probe(train, ProbeConfig(method="linear", loss="la", calibrate="temperature"), val)
    assert np.array_equal(plain.predict(val.features), calibrated.predict(val.features))

    def nll(probe):
        return float(F.cross_entropy(torch.as_tensor(probe.logits(val.features)), torch.as_tensor(val.labels)))

    assert calibrated.temperature != 1.0 and nll(calibrated) < nll(plain)
    calibrated.save(tmp_path / "head")
    assert Probe.load(tmp_path / "head").temperature == calibrated.temperature
    with pytest.raises(ConfigError, match="validation set"):
        fit_probe(train, ProbeConfig(method="linear", loss="ce", calibrate="temperature"))
