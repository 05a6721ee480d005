"""The decoupling probe methods (Kang et al. 2020; docs/methods.md §10): ncm, crt, tau-norm, lws
on small hand-made cases, their equivalences, options, save/load and the CLI."""

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longtail.cli import main
from longtail.data.features import FeatureSet
from longtail.data.splits import ValRule, split_features
from longtail.errors import ConfigError
from longtail.eval.metrics import balanced_accuracy, per_class_accuracy
from longtail.methods.losses import make_loss
from longtail.methods.probe import TAU_GRID, Probe, ProbeConfig, fit_probe, train_head
from longtail.methods.probe.decoupling import BASE_C, TAU_NORM_DEFAULT, tau_normalised

COUNTS = (200, 100, 10, 5)


def _blobs(seed=0, counts=COUNTS, d=8, spread=1.0, means_seed=None, prototypes=False):
    """Gaussian blobs (class means from `means_seed`, default `seed`); optional unit prototypes."""
    means = np.random.default_rng(seed if means_seed is None else means_seed).normal(size=(len(counts), d)) * 2.0
    rng = np.random.default_rng(seed + 1000)
    y = np.repeat(np.arange(len(counts)), counts)
    x = means[y] + spread * rng.normal(size=(y.size, d))
    protos = (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32) if prototypes else None
    return FeatureSet(x.astype(np.float32), y, class_names=[f"c{i}" for i in range(len(counts))],
                      prototypes=protos)


def _few_accuracy(probe, test, few=(2, 3)):
    acc, _ = per_class_accuracy(probe.predict(test.features), test.labels, test.num_classes)
    return float(acc[list(few)].mean())


def _base_head(fs, loss="ce", bias=True):
    """The base head of tau-norm / lws: linear, plain CE, l2 = 1 / (BASE_C N) (scikit-learn's C = 3)."""
    cfg = ProbeConfig(method="linear", loss=loss, l2=1.0 / (BASE_C * fs.num_samples))
    return train_head(fs.features, fs.labels, fs.class_counts(), **{**cfg.head_training(),
                      "head": {"type": "linear", "use_bias": bias}})


def _without_bias(probe, x):
    """f . W_c on the normalised features: the head's logits with its bias dropped."""
    return F.linear(F.normalize(torch.as_tensor(x), dim=1), probe.head.weight.detach()).numpy()


def test_tau_zero_is_the_trained_ce_head_without_its_bias():
    fs = _blobs(seed=1, spread=1.5)
    tau0 = fit_probe(fs, ProbeConfig(method="tau-norm", loss="ce", method_options={"tau": 0}))
    plain = _base_head(fs)
    assert np.allclose(tau0.logits(fs.features), _without_bias(plain, fs.features), atol=1e-6)
    info = tau0.info["tau_norm"]
    assert tau0.head.bias is None and info["tau"] == 0.0 and info["bias"] == "dropped"
    assert np.array_equal(info["dropped_bias"], plain.head.bias.detach().numpy())
    # bias "none": trained without a bias, so tau = 0 is the trained head bit for bit
    none = fit_probe(fs, ProbeConfig(method="tau-norm", method_options={"tau": 0, "bias": "none"}))
    assert np.array_equal(none.logits(fs.features), _base_head(fs, bias=False).logits(fs.features))
    assert none.info["tau_norm"]["dropped_bias"] is None
    # tau = 1: every row has unit norm; the logits are the bias-free ones divided by the row norms
    tau1 = fit_probe(fs, ProbeConfig(method="tau-norm", loss="ce", method_options={"tau": 1.0}))
    assert np.allclose(tau1.head.weight.detach().norm(dim=1).numpy(), 1.0, atol=1e-6)
    norms = plain.head.weight.detach().norm(dim=1).numpy()
    assert np.allclose(tau1.logits(fs.features), _without_bias(plain, fs.features) / norms, atol=1e-5)
    w = torch.tensor([[3.0, 4.0], [0.6, 0.8]])
    assert torch.allclose(tau_normalised(w, 0.5), w / torch.tensor([[5.0 ** 0.5], [1.0]]))


def test_lws_with_unit_scales_is_the_frozen_head_and_learning_favours_the_tail():
    fs = _blobs(seed=2, spread=2.0)
    frozen = fit_probe(fs, ProbeConfig(method="linear", loss="ce", l2=1.0 / (BASE_C * fs.num_samples)))
    unit = fit_probe(fs, ProbeConfig(method="lws", loss="ce", method_options={"max_iter": 0}))
    assert np.array_equal(unit.logits(fs.features), frozen.logits(fs.features))
    assert np.array_equal(unit.info["lws"]["scales"], np.ones(4, dtype=np.float32))
    lws = fit_probe(fs, ProbeConfig(method="lws", loss="ce"))
    scales = lws.info["lws"]["scales"]
    assert scales[3] > scales[0]  # the class-balanced objective enlarges the rarest class's logits
    # the logits are the frozen head's scaled per class (weights and bias alike)
    assert np.allclose(lws.logits(fs.features), frozen.logits(fs.features) * scales, atol=1e-4)
    assert (lws.predict(fs.features) >= 2).sum() > (frozen.predict(fs.features) >= 2).sum()


def test_ncm_cosine_rule_is_the_nearest_normalised_class_mean():
    fs = _blobs(seed=3, spread=2.0)
    test = _blobs(seed=33, counts=(40, 40, 40, 40), spread=2.0, means_seed=3)
    probe = fit_probe(fs, ProbeConfig(method="ncm", scale=10.0, method_options={"rule": "cosine"}))
    x = fs.features / np.linalg.norm(fs.features, axis=1, keepdims=True)
    means = np.stack([x[fs.labels == c].mean(0) for c in range(4)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    t = test.features / np.linalg.norm(test.features, axis=1, keepdims=True)
    assert np.array_equal(probe.predict(test.features), (t @ means.T).argmax(1))
    assert np.allclose(probe.logits(test.features), 10.0 * t @ means.T, atol=1e-5)
    assert "train" not in probe.info and probe.info["ncm"]["rule"] == "cosine"  # nothing was trained


def test_ncm_default_is_the_authors_centred_euclidean_rule_on_a_hand_computed_case():
    # Raw training features; their mean is mu = (1, 1), so the centred ones are (3, 4), (3, -4)
    # (class 0) and (-6, 0) (class 1). L2-normalised: (0.6, 0.8), (0.6, -0.8) and (-1, 0); the
    # class means of those (not re-normalised): m_0 = (0.6, 0), m_1 = (-1, 0).
    train = FeatureSet(np.array([[4.0, 5.0], [4.0, -3.0], [-5.0, 1.0]], dtype=np.float32), np.array([0, 0, 1]),
                       class_names=["a", "b"])
    probe = fit_probe(train, ProbeConfig(method="ncm", scale=4.0))
    assert probe.info["ncm"]["rule"] == "centred" and probe.normalize is False
    assert np.allclose(probe.head.center.numpy(), [1.0, 1.0]) and np.allclose(probe.head.weight.detach().numpy(),
                                                                            [[0.6, 0.0], [-1.0, 0.0]], atol=1e-6)
    # f = (1, 2): centred (0, 1), already unit; squared distances 0.6^2 + 1 = 1.36 and 1 + 1 = 2.
    # f = (0, 8): centred (-1, 7), unit (-1, 7) / sqrt(50) = x; ||x - m_0||^2 = 1.36 + 1.2 / sqrt(50),
    # ||x - m_1||^2 = 2 - 2 / sqrt(50): class 0 is nearer, though cos(x, m_1) > 0 > cos(x, m_0).
    r = 1.0 / np.sqrt(50.0)
    squared = np.array([[1.36, 2.0], [1.36 + 1.2 * r, 2.0 - 2.0 * r]])
    test = np.array([[1.0, 2.0], [0.0, 8.0]], dtype=np.float32)
    assert np.allclose(probe.logits(test), -(4.0 / 2) * squared, atol=1e-5)  # -(s/2) ||x - m_c||^2
    assert probe.predict(test).tolist() == [0, 0]
    # the cosine rule (no centring; means of the normalised raw features) puts (0, 8) in class 1
    cosine = fit_probe(train, ProbeConfig(method="ncm", scale=4.0, method_options={"rule": "cosine"}))
    assert cosine.predict(test).tolist() == [0, 1]


def _authors_ncm(train_x, train_y, test_x):
    """The authors' NCM written as their code does it (run_networks.get_knncentroids 'cl2ncs' +
    KNNClassifier(feat_type='cl2n', dist_type='l2')): logits -||x - c||^2 = -(AA + BB - 2AB)."""
    mean = train_x.mean(axis=0)
    cl2n = train_x - mean
    cl2n = cl2n / np.linalg.norm(cl2n, axis=1, keepdims=True)
    centroids = np.stack([cl2n[train_y == c].mean(axis=0) for c in np.unique(train_y)])
    x = test_x - mean
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    dist = (x ** 2).sum(1, keepdims=True) + (centroids ** 2).sum(1)[None] - 2 * x @ centroids.T
    return -dist


def test_ncm_matches_the_authors_code_and_round_trips(tmp_path):
    fs = _blobs(seed=9, spread=3.0, d=16)
    fs = FeatureSet(np.abs(fs.features) + 1.0, fs.labels, class_names=fs.class_names)  # ReLU-like, offset
    test = _blobs(seed=99, counts=(60, 60, 60, 60), spread=3.0, means_seed=9, d=16)
    test_x = np.abs(test.features) + 1.0
    probe = fit_probe(fs, ProbeConfig(method="ncm"))
    theirs = _authors_ncm(fs.features.astype(np.float64), fs.labels, test_x.astype(np.float64))
    assert np.array_equal(probe.predict(test_x), theirs.argmax(1))
    assert np.allclose(probe.logits(test_x), 25.0 / 2 * theirs, atol=1e-4)
    cosine = fit_probe(fs, ProbeConfig(method="ncm", method_options={"rule": "cosine"}))
    assert (cosine.predict(test_x) != probe.predict(test_x)).any()  # two different rules
    probe.save(tmp_path / "head")
    loaded = Probe.load(tmp_path / "head")
    assert np.array_equal(loaded.logits(test_x), probe.logits(test_x))
    assert json.loads((tmp_path / "head" / "head.json").read_text())["head"]["type"] == "nearest-mean"
    with pytest.raises(ConfigError, match="head must be one of linear, cosine"):  # not a head to train
        fit_probe(fs, ProbeConfig(method="linear", head="nearest-mean"))


def test_crt_is_linear_with_class_balanced_ce_and_beats_plain_ce_on_the_tail():
    fs = _blobs(seed=4, spread=2.5)
    test = _blobs(seed=44, counts=(100, 100, 100, 100), spread=2.5, means_seed=4)
    crt = fit_probe(fs, ProbeConfig(method="crt"))  # the default loss (la) is replaced
    weighted = fit_probe(fs, ProbeConfig(method="linear", loss="weighted-ce"))
    assert np.array_equal(crt.logits(test.features), weighted.logits(test.features))
    assert crt.config["loss"] == "weighted-ce" and crt.info["crt"]["replaced_loss"] == "la"
    ce = fit_probe(fs, ProbeConfig(method="linear", loss="ce"))
    assert _few_accuracy(crt, test) > _few_accuracy(ce, test) + 0.1
    assert balanced_accuracy(crt.logits(test.features), test.labels) > balanced_accuracy(ce.logits(test.features), test.labels)
    # the weighted CE is class-balanced sampling's expected loss: mean over classes of the class-mean CE
    z, y = torch.randn(fs.num_samples, 4, dtype=torch.float64), torch.as_tensor(fs.labels)
    per = F.cross_entropy(z, y, reduction="none")
    expected = torch.stack([per[y == c].mean() for c in range(4)]).mean()
    assert torch.allclose(make_loss("weighted-ce", fs.class_counts())(z, y), expected)


def test_tau_norm_auto_picks_a_grid_tau_on_validation():
    fs = _blobs(seed=5, spread=2.5)
    val = _blobs(seed=55, counts=(30, 30, 30, 30), spread=2.5, means_seed=5)
    cfg = ProbeConfig(method="tau-norm", loss="ce", method_options={"tau": "auto"})
    assert cfg.needs_validation() == []  # without val: k-fold CV on train
    probe = fit_probe(fs, cfg, val)
    info = probe.info["tau_norm"]
    assert info["tau"] in TAU_GRID and info["selection"]["scores"].shape == TAU_GRID.shape
    best = balanced_accuracy(probe.logits(val.features), val.labels)
    assert best == pytest.approx(info["selection"]["best"]) and best == pytest.approx(info["selection"]["scores"].max())
    for tau in (0.0, 2.0):  # no fixed tau of the grid does better on validation
        fixed = fit_probe(fs, ProbeConfig(method="tau-norm", loss="ce", method_options={"tau": tau}))
        assert balanced_accuracy(fixed.logits(val.features), val.labels) <= best + 1e-12


def test_tau_norm_and_lws_train_their_base_head_with_plain_ce_by_default():
    fs = _blobs(seed=10, spread=1.5)
    # the configured loss is the project's default, la; the base head is CE all the same
    default = fit_probe(fs, ProbeConfig(method="tau-norm", method_options={"tau": 0}))
    assert np.allclose(default.logits(fs.features), _without_bias(_base_head(fs), fs.features), atol=1e-6)
    info = default.info["tau_norm"]
    assert (info["base_loss"], info["configured_loss"]) == ("ce", "la")
    assert info["l2"] == pytest.approx(1.0 / (BASE_C * fs.num_samples))  # C = 3 unless l2 is set
    assert fit_probe(fs, ProbeConfig(method="tau-norm", l2=0.01)).info["tau_norm"]["l2"] == 0.01
    la = fit_probe(fs, ProbeConfig(method="tau-norm", method_options={"tau": 0, "base_loss": "la"}))
    assert np.allclose(la.logits(fs.features), _without_bias(_base_head(fs, "la"), fs.features), atol=1e-6)
    assert not np.allclose(la.logits(fs.features), default.logits(fs.features), atol=1e-3)
    lws = fit_probe(fs, ProbeConfig(method="lws", max_iter=100))
    lws_ce = fit_probe(fs, ProbeConfig(method="lws", loss="ce", max_iter=100))
    assert np.array_equal(lws.logits(fs.features), lws_ce.logits(fs.features)) and lws.info["lws"]["base_loss"] == "ce"


def test_tau_defaults_to_cv_on_train_without_val_and_to_the_val_choice_with_one():
    fs = _blobs(seed=11, spread=2.5)
    val = _blobs(seed=111, counts=(30, 30, 30, 30), spread=2.5, means_seed=11)
    plain = _base_head(fs)
    norms = plain.head.weight.detach().norm(dim=1).numpy()
    with pytest.warns(UserWarning):  # 5 and 10 tail rows: the winner is within one SE
        alone = fit_probe(fs, ProbeConfig(method="tau-norm"))
    info = alone.info["tau_norm"]
    tau, selection = info["tau"], info["selection"]
    assert info["tau_from"] == "k-fold cross-validation on train" and tau in TAU_GRID
    assert selection["validated_by"] == "5-fold CV on train" and selection["folds"] == 5
    assert selection["val_rows"] == fs.num_samples  # pooled: every row held out once
    assert selection["val_per_class"] == [5, 200] and selection["classes_with_at_most_2_val_rows"] == 0
    assert selection["best"] == selection["scores"].max() and selection["best_se"] > 0
    # the head is refitted on all of train with the chosen tau
    assert np.allclose(alone.logits(fs.features), _without_bias(plain, fs.features) / norms ** tau, atol=1e-5)
    assert ProbeConfig(method="tau-norm").needs_validation() == []  # val is optional
    chosen = fit_probe(fs, ProbeConfig(method="tau-norm"), val)
    auto = fit_probe(fs, ProbeConfig(method="tau-norm", method_options={"tau": "auto"}), val)
    info = chosen.info["tau_norm"]
    assert info["tau_from"] == "validation set" and info["tau"] == auto.info["tau_norm"]["tau"]
    assert np.array_equal(chosen.logits(val.features), auto.logits(val.features))
    assert info["selection"]["se"].shape == TAU_GRID.shape and info["selection"]["val_per_class"] == [30, 30]
    assert "refit" not in info  # a validation set of its own: nothing to give back to training


def test_tau_chosen_on_a_split_of_train_is_refitted_on_all_of_train():
    full = _blobs(seed=12, counts=(200, 100, 20, 12), spread=2.5)
    part, val, _ = split_features(full, ValRule(per_class=4, seed=0))
    probe = fit_probe(part, ProbeConfig(method="tau-norm"), val)
    info = probe.info["tau_norm"]
    assert info["refit"] == {"done": True, "why_not": None, "rows": full.num_samples}
    tau = info["tau"]
    assert tau == info["selection"]["grid"][np.argmax(info["selection"]["scores"])]
    everything = part.with_arrays(np.concatenate([part.features, val.features]), np.concatenate([part.labels, val.labels]))
    again = fit_probe(everything, ProbeConfig(method="tau-norm", method_options={"tau": tau}))
    assert np.array_equal(probe.logits(full.features), again.logits(full.features))
    assert np.array_equal(probe.class_counts, full.class_counts())
    # another choice on the same split: the head stays the one fitted on the training part
    kept = fit_probe(part, ProbeConfig(method="tau-norm", posthoc_tau="auto"), val)
    assert kept.info["tau_norm"]["refit"]["done"] is False
    assert "posthoc_tau='auto'" in kept.info["tau_norm"]["refit"]["why_not"]
    assert np.array_equal(kept.class_counts, part.class_counts())


@pytest.mark.parametrize("method, options", [
    ("ncm", {}), ("ncm", {"rule": "cosine"}), ("crt", {}), ("tau-norm", {"tau": 0.7}), ("lws", {}),
])
def test_save_load_round_trip(tmp_path, method, options):
    fs = _blobs(seed=6, spread=1.5)
    probe = fit_probe(fs, ProbeConfig(method=method, loss="ce", method_options=options, max_iter=50))
    probe.save(tmp_path / "head")
    loaded = Probe.load(tmp_path / "head")
    assert np.array_equal(probe.logits(fs.features), loaded.logits(fs.features))
    assert loaded.config["method"] == method


def test_init_prototypes_composes_with_the_underlying_head():
    fs = _blobs(seed=7, spread=1.5, prototypes=True)
    zero_shot = fit_probe(fs, ProbeConfig(method="zero-shot", scale=5.0)).logits(fs.features)
    # no training and tau 0: the tau-norm head is the prototype head (bias-free, scale * P)
    start = fit_probe(fs, ProbeConfig(method="tau-norm", init="prototypes", scale=5.0, max_iter=0,
                                      method_options={"tau": 0}))
    assert np.allclose(start.logits(fs.features), zero_shot, atol=1e-5)
    # trained from the prototypes with L2-SP, then re-scaled: differs from the random start
    for method in ("crt", "lws"):
        cfg = dict(method=method, loss="ce", scale=5.0, seed=3)
        anchored = fit_probe(fs, ProbeConfig(**cfg, init="prototypes", l2_target="init", l2=1.0))
        random = fit_probe(fs, ProbeConfig(**cfg, l2=1.0))
        assert not np.allclose(anchored.logits(fs.features), random.logits(fs.features), atol=1e-3), method
        assert balanced_accuracy(anchored.logits(fs.features), fs.labels) > 0.5


@pytest.mark.parametrize("method, options, message", [
    ("tau-norm", {"taux": 1}, "unknown method_options key 'taux' \\(valid: tau, base_loss, bias\\)"),
    ("tau-norm", {"bias": "kept"}, "bias must be one of dropped, none"),
    ("tau-norm", {"base_loss": "hinge"}, "base_loss must be a loss name"),
    ("lws", {"base_loss": 1}, "base_loss must be a loss name"),
    ("tau-norm", {"tau": -1}, "'auto' or a number >= 0"),
    ("tau-norm", {"tau": "best"}, "'auto' or a number >= 0"),
    ("tau-norm", {"tau": True}, "'auto' or a number >= 0"),
    ("lws", {"max_iter": -1}, "integer >= 0"),
    ("lws", {"max_iter": 1.5}, "integer >= 0"),
    ("lws", {"iters": 3}, "valid: max_iter, base_loss"),
    ("ncm", {"k": 1}, "unknown method_options key 'k' \\(valid: rule\\)"),
    ("ncm", {"rule": "euclidean"}, "rule must be one of centred, cosine"),
    ("crt", {"weighting": "sqrt"}, "takes no method_options"),
])
def test_bad_method_options_fail_when_the_config_is_built(method, options, message):
    with pytest.raises(ConfigError, match=message):
        ProbeConfig(method=method, method_options=options)


def test_loss_options_must_belong_to_the_base_loss():
    for method in ("tau-norm", "lws"):
        with pytest.raises(ConfigError, match="base_loss=ce, so loss_options \\(for loss=la\\) do not apply"):
            ProbeConfig(method=method, loss_options={"tau": 0.5})
        cfg = ProbeConfig(method=method, loss_options={"tau": 0.5}, method_options={"base_loss": "la"})
        assert cfg.loss == "la"


def test_options_that_do_not_apply_are_errors_before_training():
    fs = _blobs(seed=8)
    for method in ("tau-norm", "lws"):
        with pytest.raises(ConfigError, match="use head=linear"):
            fit_probe(fs, ProbeConfig(method=method, head="cosine"))
    with pytest.raises(ConfigError, match="ncm"):
        fit_probe(_blobs(seed=8, prototypes=True), ProbeConfig(method="ncm", init="prototypes"))
    assert ProbeConfig(method="tau-norm", method_options={"tau": "1e-1"}).needs_validation() == []


def test_cli_decoupling_methods_end_to_end(tmp_path, capsys):
    common = ["probe", "--train", "synthetic_features:train", "--test", "synthetic_features:test", "--json",
              "--no-report"]
    assert main([*common, "--method", "ncm", "--out", str(tmp_path / "ncm")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["all"] > 0.5 and out["few"] is not None
    assert main(["eval", str(tmp_path / "ncm"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["all"] == pytest.approx(out["all"])
    assert main([*common, "--method", "tau-norm", "method_options.tau=auto", "max_iter=100",
                 "--out", str(tmp_path / "t")]) == 0  # no validation set: k-fold CV on train
    capsys.readouterr()
    cv = json.loads((tmp_path / "t" / "head" / "head.json").read_text())["info"]["tau_norm"]
    assert cv["tau_from"] == "k-fold cross-validation on train" and cv["tau"] in TAU_GRID
    assert main([*common, "--method", "tau-norm", "--loss", "ce", "method_options.tau=auto", "val_split=0.1",
                 "max_iter=100", "--out", str(tmp_path / "tau")]) == 0
    head = json.loads((tmp_path / "tau" / "head" / "head.json").read_text())
    assert head["info"]["tau_norm"]["tau"] in TAU_GRID
    assert head["info"]["tau_norm"]["refit"]["done"] is True  # tau chosen on the split, head refitted on all


def test_cv_choice_reads_only_train_and_is_deterministic_for_a_seed(monkeypatch):
    import longtail.data.features as features
    import longtail.methods.probe.decoupling as decoupling

    def no_reading(*args, **kwargs):
        raise AssertionError("the tau choice read a file")

    monkeypatch.setattr(features, "load_features", no_reading)
    seen = []
    folds = decoupling.stratified_folds
    monkeypatch.setattr(decoupling, "stratified_folds", lambda labels, *a: seen.append(labels) or folds(labels, *a))
    fs = _blobs(seed=13, counts=(60, 30, 4, 3), spread=2.0)
    cfg = ProbeConfig(method="tau-norm", max_iter=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first, second = fit_probe(fs, cfg), fit_probe(fs, cfg)
        other = fit_probe(fs, ProbeConfig(method="tau-norm", max_iter=100, seed=1))
    assert all(np.array_equal(labels, fs.labels) for labels in seen) and len(seen) == 3  # train's labels only
    a, b = first.info["tau_norm"], second.info["tau_norm"]
    assert a["tau"] == b["tau"] and np.array_equal(a["selection"]["scores"], b["selection"]["scores"])
    assert np.array_equal(first.logits(fs.features), second.logits(fs.features))
    # k falls to the smallest class (3 rows); pooled, every row is held out once
    assert a["selection"]["folds"] == 3 and a["selection"]["val_per_class"] == [3, 60]
    assert other.info["tau_norm"]["selection"]["seed"] == 1 and a["selection"]["seed"] == 0  # may differ


def test_cv_falls_back_to_the_default_tau_when_nothing_can_be_held_out():
    fs = _blobs(seed=14, counts=(1, 1, 1, 1))
    probe = fit_probe(fs, ProbeConfig(method="tau-norm", max_iter=50))
    info = probe.info["tau_norm"]
    assert info["tau"] == TAU_NORM_DEFAULT == 0.9 and info["tau_from"].startswith("default (no validation set;")


def test_winner_within_one_se_of_the_runner_up_warns():
    fs = _blobs(seed=5, spread=2.5)
    with pytest.warns(UserWarning, match="by less than one SE") as record:
        probe = fit_probe(fs, ProbeConfig(method="tau-norm"))
    selection = probe.info["tau_norm"]["selection"]
    assert selection["within_one_se"] and len([w for w in record if "one SE" in str(w.message)]) == 1
    runner = selection["runner_up"]
    assert abs(runner["tau"] - probe.info["tau_norm"]["tau"]) > 0.1 + 1e-9  # not a grid neighbour
    assert selection["best"] - runner["score"] < selection["best_se"]
    # well-separated classes with many rows: the scores' SEs are small, tau = 0 loses clearly
    wide = _blobs(seed=6, counts=(2000, 1000, 300, 200), spread=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            clear = fit_probe(wide, ProbeConfig(method="tau-norm", max_iter=100))
        except UserWarning as warned:  # noqa: PERF203
            pytest.fail(str(warned))
    assert not clear.info["tau_norm"]["selection"]["within_one_se"]


@pytest.mark.parametrize("method, loss", [("tau-norm", "la"), ("tau-norm", "balanced-softmax"), ("lws", "cf"),
                                          ("lws", "weighted-ce")])
def test_a_rebalancing_base_loss_warns_of_correcting_twice(method, loss):
    fs = _blobs(seed=15, spread=1.5)
    options = {"base_loss": loss, **({"tau": 0.5} if method == "tau-norm" else {})}
    with pytest.warns(UserWarning, match="corrects for the class prior twice"):
        fit_probe(fs, ProbeConfig(method=method, max_iter=50, method_options=options))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # plain CE, named or not: no warning
        fit_probe(fs, ProbeConfig(method=method, max_iter=50, method_options={**options, "base_loss": "ce"}))
