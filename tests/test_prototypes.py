"""Prototype methods (issue #7): zero-shot rule, prototype init, interpolation endpoints, errors."""

import numpy as np
import pytest

from longtail.data.features import FeatureSet
from longtail.errors import ConfigError, DataError
from longtail.eval.metrics import balanced_accuracy
from longtail.methods.probe import ALPHA_GRID, Probe, ProbeConfig, fit_probe


def _data(seed=0, counts=(80, 40, 10, 5), d=6, unit_prototypes=True, noise=0.8):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(len(counts), d))
    y = np.repeat(np.arange(len(counts)), counts)
    x = (means[y] + noise * rng.normal(size=(y.size, d))).astype(np.float32)
    protos = means / np.linalg.norm(means, axis=1, keepdims=True) if unit_prototypes else means
    return FeatureSet(x, y, prototypes=protos.astype(np.float32)), means


def test_zero_shot_unit_prototypes_is_nearest_prototype_on_sphere():
    train, _ = _data()
    # true class means of the normalised features, as unit prototypes
    u = train.features / np.linalg.norm(train.features, axis=1, keepdims=True)
    class_means = np.stack([u[train.labels == c].mean(0) for c in range(4)])
    unit = class_means / np.linalg.norm(class_means, axis=1, keepdims=True)
    fs = FeatureSet(train.features, train.labels, prototypes=unit.astype(np.float32))
    probe = fit_probe(fs, ProbeConfig(method="zero-shot"))
    nearest = np.argmin(((u[:, None, :] - unit[None]) ** 2).sum(-1), axis=1)
    assert np.array_equal(probe.predict(fs.features), nearest)
    assert probe.head.spec()["type"] == "cosine" and "cosine" in probe.info["zero_shot_rule"]
    # logits are s * cos
    assert np.allclose(probe.logits(fs.features[:5]), 25.0 * u[:5] @ unit.T, atol=1e-4)


def test_zero_shot_linear_prototypes_with_bias_is_nearest_mean():
    train, means = _data(unit_prototypes=False)
    fs = FeatureSet(train.features, train.labels, prototypes=means.astype(np.float32),
                    prototype_bias=(-0.5 * (means**2).sum(1)).astype(np.float32))
    probe = fit_probe(fs, ProbeConfig(method="zero-shot", normalize=False))
    nearest = np.argmin(((fs.features[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert np.array_equal(probe.predict(fs.features), nearest)
    assert probe.head.spec()["type"] == "linear"


@pytest.mark.parametrize("head,solver", [("linear", "lbfgs"), ("cosine", "lbfgs"), ("linear", "adamw")])
def test_prototype_init_without_training_is_zero_shot(head, solver):
    train, _ = _data(seed=1)
    zs = fit_probe(train, ProbeConfig(method="zero-shot")).logits(train.features)
    cfg = ProbeConfig(method="linear", loss="ce", init="prototypes", head=head, solver=solver, max_iter=0, epochs=0)
    init = fit_probe(train, cfg).logits(train.features)
    assert np.allclose(init, zs, atol=1e-4)


def test_interpolation_endpoints_are_exact():
    train, _ = _data(seed=2)
    zs = fit_probe(train, ProbeConfig(method="zero-shot")).logits(train.features)
    trained = fit_probe(train, ProbeConfig(method="linear", loss="ce")).logits(train.features)
    assert not np.allclose(zs, trained)
    assert np.array_equal(fit_probe(train, ProbeConfig(method="linear", loss="ce", interpolate=0.0)).logits(train.features), zs)
    assert np.array_equal(fit_probe(train, ProbeConfig(method="linear", loss="ce", interpolate=1.0)).logits(train.features), trained)
    half = fit_probe(train, ProbeConfig(method="linear", loss="ce", interpolate=0.5)).logits(train.features)
    assert np.allclose(half, 0.5 * zs + 0.5 * trained, atol=1e-5)


def test_auto_interpolation_with_posthoc_and_save_load(tmp_path):
    train, _ = _data(seed=3)
    val, _ = _data(seed=3, counts=(30, 30, 30, 30))
    probe = fit_probe(train, ProbeConfig(method="linear", loss="ce", interpolate="auto", posthoc_tau="auto"), val)
    sel = probe.info["selection"]
    assert probe.alpha in ALPHA_GRID and np.asarray(sel["scores"]).shape == (11, 21)
    assert balanced_accuracy(probe.logits(val.features), val.labels) == pytest.approx(sel["best"])
    probe.save(tmp_path / "p")
    loaded = Probe.load(tmp_path / "p")
    assert np.array_equal(loaded.logits(val.features), probe.logits(val.features))
    assert loaded.alpha == probe.alpha and loaded.zero_shot is not None


def test_missing_prototypes_is_one_line_error():
    train, _ = _data()
    bare = FeatureSet(train.features, train.labels, source="train.npz")
    for cfg in (ProbeConfig(method="zero-shot"), ProbeConfig(init="prototypes"), ProbeConfig(interpolate=0.5)):
        with pytest.raises(DataError, match="train.npz: .* needs class prototypes") as err:
            fit_probe(bare, cfg)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="interpolate"):
        fit_probe(train, ProbeConfig(method="zero-shot", interpolate=0.5))


@pytest.mark.parametrize("solver", ["lbfgs", "adamw"])
def test_l2_sp_pulls_towards_the_prototypes_not_zero(solver):
    train, _ = _data()
    strong = dict(loss="la", init="prototypes", solver=solver, epochs=30)
    strong |= {"l2": 10.0} if solver == "lbfgs" else {"weight_decay": 10.0}
    start = fit_probe(train, ProbeConfig(method="linear", loss="ce", init="prototypes", max_iter=0, epochs=0)).head.weight.detach()
    anchored = fit_probe(train, ProbeConfig(method="linear", l2_target="init", **strong)).head.weight.detach()
    plain = fit_probe(train, ProbeConfig(method="linear", **strong)).head.weight.detach()
    # a strong anchor keeps W next to its prototype start; plain L2 shrinks it towards 0
    assert float((anchored - start).norm()) < 0.1 * float(start.norm())
    assert float((plain - start).norm()) > 0.5 * float(start.norm())


def test_l2_sp_needs_prototype_init():
    train, _ = _data()
    with pytest.raises(ConfigError, match="L2-SP"):
        fit_probe(train, ProbeConfig(method="linear", loss="ce", l2_target="init"))
