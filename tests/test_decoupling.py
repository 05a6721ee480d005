"""The decoupling probe methods (Kang et al. 2020; docs/methods.md §10): ncm, crt, tau-norm, lws
on small hand-made cases, their equivalences, options, save/load and the CLI."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longtail.cli import main
from longtail.data.features import FeatureSet
from longtail.errors import ConfigError
from longtail.eval.metrics import balanced_accuracy, per_class_accuracy
from longtail.methods.losses import make_loss
from longtail.methods.probe import TAU_GRID, Probe, ProbeConfig, fit_probe, train_head
from longtail.methods.probe.decoupling import tau_normalised

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


def test_tau_zero_is_the_plain_bias_free_head_exactly():
    fs = _blobs(seed=1, spread=1.5)
    tau0 = fit_probe(fs, ProbeConfig(method="tau-norm", loss="ce", method_options={"tau": 0}))
    cfg = ProbeConfig(method="linear", loss="ce")
    plain = train_head(fs.features, fs.labels, fs.class_counts(), **{**cfg.head_training(),
                       "head": {"type": "linear", "use_bias": False}})
    assert np.array_equal(tau0.logits(fs.features), plain.logits(fs.features))
    assert tau0.head.bias is None and tau0.info["tau_norm"]["tau"] == 0.0
    # tau = 1: every row has unit norm; the logits are the plain ones divided by the row norms
    tau1 = fit_probe(fs, ProbeConfig(method="tau-norm", loss="ce", method_options={"tau": 1.0}))
    assert np.allclose(tau1.head.weight.detach().norm(dim=1).numpy(), 1.0, atol=1e-6)
    norms = plain.head.weight.detach().norm(dim=1).numpy()
    assert np.allclose(tau1.logits(fs.features), plain.logits(fs.features) / norms, atol=1e-5)
    w = torch.tensor([[3.0, 4.0], [0.6, 0.8]])
    assert torch.allclose(tau_normalised(w, 0.5), w / torch.tensor([[5.0 ** 0.5], [1.0]]))


def test_lws_with_unit_scales_is_the_frozen_head_and_learning_favours_the_tail():
    fs = _blobs(seed=2, spread=2.0)
    frozen = fit_probe(fs, ProbeConfig(method="linear", loss="ce"))
    unit = fit_probe(fs, ProbeConfig(method="lws", loss="ce", method_options={"max_iter": 0}))
    assert np.array_equal(unit.logits(fs.features), frozen.logits(fs.features))
    assert np.array_equal(unit.info["lws"]["scales"], np.ones(4, dtype=np.float32))
    lws = fit_probe(fs, ProbeConfig(method="lws", loss="ce"))
    scales = lws.info["lws"]["scales"]
    assert scales[3] > scales[0]  # the class-balanced objective enlarges the rarest class's logits
    # the logits are the frozen head's scaled per class (weights and bias alike)
    assert np.allclose(lws.logits(fs.features), frozen.logits(fs.features) * scales, atol=1e-4)
    assert (lws.predict(fs.features) >= 2).sum() > (frozen.predict(fs.features) >= 2).sum()


def test_ncm_is_the_nearest_normalised_class_mean():
    fs = _blobs(seed=3, spread=2.0)
    test = _blobs(seed=33, counts=(40, 40, 40, 40), spread=2.0, means_seed=3)
    probe = fit_probe(fs, ProbeConfig(method="ncm", scale=10.0))
    x = fs.features / np.linalg.norm(fs.features, axis=1, keepdims=True)
    means = np.stack([x[fs.labels == c].mean(0) for c in range(4)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    t = test.features / np.linalg.norm(test.features, axis=1, keepdims=True)
    assert np.array_equal(probe.predict(test.features), (t @ means.T).argmax(1))
    assert np.allclose(probe.logits(test.features), 10.0 * t @ means.T, atol=1e-5)
    assert "train" not in probe.info and "ncm" in probe.info  # nothing was trained


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
    assert cfg.needs_validation() == ["method_options.tau='auto'"]
    with pytest.raises(ConfigError, match="needs a validation set"):
        fit_probe(fs, cfg)
    probe = fit_probe(fs, cfg, val)
    info = probe.info["tau_norm"]
    assert info["tau"] in TAU_GRID and info["selection"]["scores"].shape == TAU_GRID.shape
    best = balanced_accuracy(probe.logits(val.features), val.labels)
    assert best == pytest.approx(info["selection"]["best"]) and best == pytest.approx(info["selection"]["scores"].max())
    for tau in (0.0, 2.0):  # no fixed tau of the grid does better on validation
        fixed = fit_probe(fs, ProbeConfig(method="tau-norm", loss="ce", method_options={"tau": tau}))
        assert balanced_accuracy(fixed.logits(val.features), val.labels) <= best + 1e-12


@pytest.mark.parametrize("method, options", [
    ("ncm", {}), ("crt", {}), ("tau-norm", {"tau": 0.7}), ("lws", {}),
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
    ("tau-norm", {"taux": 1}, "unknown method_options key 'taux' \\(valid: tau\\)"),
    ("tau-norm", {"tau": -1}, "'auto' or a number >= 0"),
    ("tau-norm", {"tau": "best"}, "'auto' or a number >= 0"),
    ("tau-norm", {"tau": True}, "'auto' or a number >= 0"),
    ("lws", {"max_iter": -1}, "integer >= 0"),
    ("lws", {"max_iter": 1.5}, "integer >= 0"),
    ("lws", {"iters": 3}, "valid: max_iter"),
    ("ncm", {"k": 1}, "takes no method_options"),
    ("crt", {"weighting": "sqrt"}, "takes no method_options"),
])
def test_bad_method_options_fail_when_the_config_is_built(method, options, message):
    with pytest.raises(ConfigError, match=message):
        ProbeConfig(method=method, method_options=options)


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
    assert main([*common, "--method", "tau-norm", "method_options.tau=auto", "--out", str(tmp_path / "t")]) == 2
    assert "method_options.tau='auto' needs a validation set: add --val FILE" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
    assert main([*common, "--method", "tau-norm", "--loss", "ce", "method_options.tau=auto", "val_split=0.1",
                 "max_iter=100", "--out", str(tmp_path / "tau")]) == 0
    head = json.loads((tmp_path / "tau" / "head" / "head.json").read_text())
    assert head["info"]["tau_norm"]["tau"] in TAU_GRID
