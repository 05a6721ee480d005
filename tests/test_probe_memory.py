"""Issue 19: the probe within a memory budget. The objective summed over row chunks equals the
one over all rows, a chunked L-BFGS fit ends where the unchunked one does, the oversamplers'
targets are capped only when the budget binds, and predictions over row chunks are the same."""

import numpy as np
import pytest
import torch

from longtail.data.features import FeatureSet
from longtail.device import parse_memory
from longtail.errors import ConfigError
from longtail.maths import vmf
from longtail.maths.finite import all_finite
from longtail.methods.heads import CosineHead, LinearHead
from longtail.methods.latent import concentration
from longtail.methods.latent.concentration import in_class_knn
from longtail.methods.latent.oversample import (
    cap_targets,
    make_oversampler,
    resolve_oversampling_targets,
)
from longtail.methods.losses import make_loss
from longtail.methods.probe import ProbeConfig
from longtail.methods.probe.objective import autograd_objective, chunk_rows, closed_form_objective
from longtail.methods.probe.solvers import SOLVERS
from longtail.methods.probe.train import fit_probe

COUNTS = np.array([30, 12, 5, 2, 1])
HEADS = [("linear", {}), ("linear", {"use_bias": False}), ("cosine", {"scale": 9.0}),
         ("cosine", {"scale": 9.0, "use_bias": True})]


def _problem(n=50, d=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randint(0, COUNTS.size, (n,), generator=g)
    y[: COUNTS.size] = torch.arange(COUNTS.size)
    return x, y, g


def _head(kind, options, d, g, dtype=torch.float64):
    head = {"linear": LinearHead, "cosine": CosineHead}[kind](COUNTS.size, d, generator=g, **options)
    with torch.no_grad():
        head.weight.normal_(generator=g)
        if head.bias is not None:
            head.bias.normal_(generator=g)
    return head.to(dtype)


@pytest.mark.parametrize("kind,options", HEADS)
@pytest.mark.parametrize("loss,params", [("ce", {}), ("la", {"tau": 0.8}), ("weighted-ce", {})])
def test_chunked_closed_form_equals_all_rows(kind, options, loss, params):
    x, y, g = _problem()
    head = _head(kind, options, x.shape[1], g)
    anchor = torch.randn(head.weight.shape, generator=g, dtype=torch.float64)
    loss_fn = make_loss(loss, COUNTS, **params)
    whole = closed_form_objective(head, loss_fn, x, y, 0.3, anchor)
    chunked = closed_form_objective(head, loss_fn, x, y, 0.3, anchor, rows=7)  # 8 chunks, the last of 1 row
    assert chunked.chunked and not whole.chunked
    v = whole.flat() + 0.1 * torch.randn(whole.flat().shape, generator=g, dtype=torch.float64)
    (f_whole, g_whole), (f_chunk, g_chunk) = whole.fun(v), chunked.fun(v)
    assert float(f_chunk) == pytest.approx(float(f_whole), rel=1e-12)
    assert torch.allclose(g_chunk, g_whole, rtol=1e-10, atol=1e-13)
    x32, v32 = x.float(), v.float()  # float32 as in real runs: 1e-6 relative
    head32 = _head(kind, options, x.shape[1], torch.Generator().manual_seed(1), torch.float32)
    whole = closed_form_objective(head32, loss_fn, x32, y, 0.3, anchor.float())
    chunked = closed_form_objective(head32, loss_fn, x32, y, 0.3, anchor.float(), rows=7)
    (f_whole, g_whole), (f_chunk, g_chunk) = whole.fun(v32), chunked.fun(v32)
    assert float(f_chunk) == pytest.approx(float(f_whole), rel=1e-6)
    assert float((g_chunk - g_whole).norm() / g_whole.norm()) < 1e-6


@pytest.mark.parametrize("kind,options", HEADS[:3])
@pytest.mark.parametrize("loss", ["ccar", "ccar-la"])
def test_chunked_autograd_objective_equals_all_rows(kind, options, loss):
    """CCAR (per-sample weights from each row's own confidence) and L2-SP through autograd."""
    x, y, g = _problem()
    head = _head(kind, options, x.shape[1], g)
    anchor = torch.randn(head.weight.shape, generator=g, dtype=torch.float64)
    loss_fn = make_loss(loss, COUNTS)
    v = torch.nn.utils.parameters_to_vector(head.parameters()).detach().clone()
    f_whole, g_whole = autograd_objective(head, loss_fn, x, y, 0.3, anchor)(v)
    f_chunk, g_chunk = autograd_objective(head, loss_fn, x, y, 0.3, anchor, rows=9)(v)
    head.zero_grad()
    expected = loss_fn(head(x), y) + 0.15 * (head.weight - anchor).square().sum()
    expected.backward()
    assert float(f_whole) == pytest.approx(float(expected.detach()), rel=1e-13)
    assert float(f_chunk) == pytest.approx(float(f_whole), rel=1e-12)
    assert torch.allclose(g_chunk, g_whole, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind,loss,l2,max_iter", [("linear", "ce", 0.05, 300), ("linear", "ccar", 0.05, 300),
                                                    ("cosine", "la", 0.0, 25)])
def test_chunked_fit_ends_at_the_same_weights(kind, loss, l2, max_iter):
    """The same L-BFGS path (a cosine head's optimum here is flat: compared after 25 iterations)."""
    x, y, g = _problem(n=80, d=5)
    start = _head(kind, {}, 5, g)
    fits = {}
    for memory in ("auto", "2KB"):  # 2KB: chunks of 2048 / (3 x 5 classes x 8 bytes) = 17 rows
        head = _head(kind, {}, 5, torch.Generator())
        head.load_state_dict(start.state_dict())
        info = SOLVERS.get("lbfgs")(head, make_loss(loss, COUNTS), x, y, memory=memory, max_iter=max_iter,
                                    tol=1e-9, l2=l2)
        fits[memory] = (head.weight.detach().clone(), info)
    assert fits["auto"][1]["chunk_rows"] == 80 and fits["2KB"][1]["chunk_rows"] == 17
    assert fits["2KB"][1]["iterations"] == fits["auto"][1]["iterations"]
    assert torch.allclose(fits["2KB"][0], fits["auto"][0], rtol=1e-9, atol=1e-12)
    assert fits["2KB"][1]["final_objective"] == pytest.approx(fits["auto"][1]["final_objective"], rel=1e-10)


def test_chunk_rows_from_the_budget():
    assert chunk_rows(1000, 10, None) == 1000
    assert chunk_rows(1000, 10, 6 * 1000 * 10 * 4) == 1000  # every N x C array fits: no chunking
    assert chunk_rows(1000, 10, 12_000) == 100  # budget / (3 arrays x 10 classes x 4 bytes)
    assert chunk_rows(1000, 10, 1) == 1
    assert parse_memory("4GB") == 4 * 2**30 and parse_memory("512MiB") == 2**29 and parse_memory("auto") is None
    assert parse_memory(2e9) == 2_000_000_000
    for bad in ("lots", "4XB", "-1GB", "0.5KB", True):
        with pytest.raises(ConfigError, match="memory"):
            parse_memory(bad)
    with pytest.raises(ConfigError, match="memory must be 'auto' or a size"):
        ProbeConfig(memory="plenty")


def test_cap_targets_lowers_only_the_largest_targets():
    counts = np.array([10, 5, 2, 1])
    targets = np.full(4, 10)
    assert cap_targets(targets, counts, 100)[1] is None  # 17 new rows fit: unchanged
    capped, cap = cap_targets(targets, counts, 10)  # cap 6 adds 1 + 4 + 5 = 10; cap 7 would add 13
    assert cap == 6 and capped.tolist() == [10, 6, 6, 6]
    capped, cap = cap_targets(targets, counts, 0)
    assert capped.tolist() == counts.tolist()


def test_oversampling_targets_max_median_and_count():
    counts = np.array([40, 9, 5, 2])
    assert resolve_oversampling_targets("max", counts).tolist() == [40, 40, 40, 40]
    assert resolve_oversampling_targets("median", counts).tolist() == [40, 9, 7, 7]  # median of 40, 9, 5, 2 = 7
    assert resolve_oversampling_targets(6, counts).tolist() == [40, 9, 6, 6]
    with pytest.raises(ConfigError, match="sampling_strategy"):
        resolve_oversampling_targets("most", counts)


@pytest.mark.parametrize("name", ["vmf-kde", "gaussian-kde", "smote", "distribution-calibration"])
def test_oversampler_within_a_budget(name):
    g = torch.Generator().manual_seed(0)
    counts = [30, 6, 3, 2]
    y = torch.repeat_interleave(torch.arange(4), torch.tensor(counts))
    x = torch.nn.functional.normalize(torch.randn(y.numel(), 8, generator=g) + 2 * torch.eye(8)[y], dim=1)
    options = {"head_threshold": 5, "k": 1} if name == "distribution-calibration" else {}
    today = make_oversampler(name, seed=3, **options).sample(x, y, num_classes=4)
    roomy = make_oversampler(name, seed=3, memory="1GB", **options).sample(x, y, num_classes=4)
    assert torch.equal(roomy.features, today.features) and torch.equal(roomy.labels, today.labels)
    assert roomy.info["budget_cap"] is None
    # 4KB / 4 for synthetic rows of 8 float32 = 32 rows at most
    with pytest.warns(UserWarning, match="over the memory budget"):
        tight = make_oversampler(name, seed=3, memory="4KB", **options).sample(x, y, num_classes=4)
    assert today.labels.numel() > 32 >= tight.labels.numel()
    assert 2 < tight.info["budget_cap"] < 30 and tight.labels.numel() > 32 - 3  # the largest cap that fits


def test_probe_predictions_over_row_chunks_are_the_same():
    x, y, _ = _problem(n=120, d=6, dtype=torch.float32)
    train = FeatureSet(x.numpy(), y.numpy())
    probe = fit_probe(train, ProbeConfig(max_iter=20))
    whole = probe.logits(x.numpy()).argmax(1)
    probe.config["memory"] = "1KB"  # 1024 / (3 x 5 classes x 4 bytes) = 17 rows per chunk
    assert probe.chunk_rows(60, 120) == 17
    assert np.array_equal(probe.predict(x.numpy()), whole)


def test_large_safetensors_features_stay_memory_mapped(tmp_path, monkeypatch):
    """A feature file larger than the budget keeps `features` memory-mapped (same values)."""
    import longtail.device
    from longtail.data.features import load_features, save_features

    x, y, _ = _problem(n=40, d=6, dtype=torch.float32)
    path = save_features(FeatureSet(x.numpy(), y.numpy()), tmp_path / "f.safetensors")
    assert load_features(path).features.flags.writeable  # small: read into memory
    monkeypatch.setattr(longtail.device, "available_memory", lambda device: 100)  # budget 50 bytes
    mapped = load_features(path)
    # a read-only view of the file's pages (np.asarray of the np.memmap), not an in-memory copy
    assert not mapped.features.flags.writeable and not mapped.features.flags.owndata
    assert np.array_equal(mapped.features, x.numpy())
    probe = fit_probe(mapped, ProbeConfig(max_iter=5))
    assert probe.predict(mapped.features).shape == (40,)


def test_lbfgs_warns_when_the_start_point_meets_tol():
    """At thousands of classes the mean objective's gradient can be below tol at the start: say so."""
    x, y, g = _problem(n=40, d=4)
    head = _head("linear", {}, 4, g)
    with pytest.warns(UserWarning, match="stopped at its start point"):
        info = SOLVERS.get("lbfgs")(head, make_loss("ce", COUNTS), x, y, tol=1e3)
    assert info["iterations"] == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_all_finite_in_chunks_finds_every_bad_entry(dtype):
    """all_finite sums (or tests) one chunk of rows at a time, never a float64 copy of x."""
    x = torch.randn(37, 5, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert all_finite(x, chunk=6) and all_finite(x) and all_finite(x.T, chunk=6) and all_finite(x[:, 1:], chunk=1)
    for row in (0, 1, 18, 36):  # the first, second, a middle and the last chunk (6 // 5 = 1 row each)
        for bad in (float("nan"), float("inf"), -float("inf")):
            y = x.clone()
            y[row, 4] = bad
            assert not all_finite(y, chunk=6) and not all_finite(y) and not all_finite(y.T, chunk=12)
    assert all_finite(torch.tensor(1.0, dtype=dtype)) and not all_finite(torch.tensor(float("nan"), dtype=dtype))
    assert all_finite(torch.ones(3, dtype=torch.long)) and all_finite(x[:0], chunk=6)


def _reference_sample_vmf(mu, kappa, generator):
    """sample_vmf as it was before it worked in place per row block: whole n x d temporaries."""
    n, d = mu.shape
    one_minus_w = vmf._sample_w(kappa, d, generator)
    y = torch.randn(n, d, dtype=mu.dtype, generator=generator)
    radial = torch.sqrt(one_minus_w * (2.0 - one_minus_w))
    y[:, :-1] *= (radial / y[:, :-1].norm(dim=1).double().clamp_min(1e-30)).to(mu.dtype)[:, None]
    y[:, -1] = (1.0 - one_minus_w).to(mu.dtype)
    mu_norm = mu.norm(dim=1).double().clamp_min(1e-30)
    m_d = mu[:, -1].double() / mu_norm
    y_dot_m = (y * mu).sum(1).double() / mu_norm
    gap = 1.0 - m_d
    c = torch.where(gap > 1e-12, (y[:, -1].double() - y_dot_m) / gap.clamp_min(1e-12), torch.zeros_like(gap))
    x = torch.addcmul(y, mu, (c / mu_norm).to(mu.dtype)[:, None])
    x[:, -1] -= c.to(mu.dtype)
    return x.div_(x.norm(dim=1, keepdim=True).clamp_min(1e-30))


def _reference_kappa(x, y, k):
    """local_concentration's r and kappa over all rows at once (no row chunks)."""
    index, _ = in_class_knn(x, y, k)
    valid = index >= 0
    unit = torch.nn.functional.normalize(x.double(), dim=1, eps=1e-12)
    total = unit.clone()
    for j in range(k):
        total += torch.where(valid[:, j, None], unit[index[:, j].clamp_min(0)], 0.0)
    r = (total.norm(dim=1) / (valid.sum(1) + 1).double()).clamp(0.0, 1.0)
    kappa = vmf.banerjee_kappa(r, x.shape[1]).clamp_min(1e-3)
    lonely = valid.sum(1) == 0
    kappa[lonely] = kappa[~lonely].median()
    return kappa


def test_vmf_kde_rows_equal_the_unchunked_formulas(monkeypatch):
    """The vMF sampler's reflection step and local_concentration work per row block (no n x d
    temporaries): the same bits as the whole-matrix formulas, for any block size."""
    g = torch.Generator().manual_seed(2)
    counts = torch.tensor([40, 17, 6, 3, 2, 1])
    y = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    x = torch.nn.functional.normalize(torch.randn(y.numel(), 12, generator=g) + 1.5 * torch.eye(12)[y], dim=1)
    mu = torch.randn(50, 12, generator=g)
    kappa = torch.rand(50, generator=g, dtype=torch.float64) * 200
    whole = _reference_sample_vmf(mu, kappa, torch.Generator().manual_seed(4))
    whole_k = {k: _reference_kappa(x, y, k) for k in (1, 2)}
    sampler = make_oversampler("vmf-kde", seed=3, k_neighbors=2)
    today = sampler.sample(x, y)  # every block is one block at this size
    monkeypatch.setattr(vmf, "_BLOCK_ELEMENTS", 12 * 7)  # 7 rows per block: the last of 1 row
    monkeypatch.setattr(concentration, "ROW_CHUNK", 5)
    assert torch.equal(vmf.sample_vmf(mu, kappa, torch.Generator().manual_seed(4)), whole)
    assert torch.equal(vmf.sample_vmf(mu.double(), kappa, torch.Generator().manual_seed(4)),
                       _reference_sample_vmf(mu.double(), kappa, torch.Generator().manual_seed(4)))
    for k in (1, 2):
        assert torch.equal(concentration.local_concentration(x, y, k), whole_k[k])
    chunked = sampler.sample(x, y)
    assert torch.equal(chunked.features, today.features) and torch.equal(chunked.seeds, today.seeds)
    assert torch.equal(today.features, _reference_sample_vmf(
        x[today.seeds], _reference_kappa(x, y, 2)[today.seeds], _generator_after_seeds(3, today.labels.numel())))


def _generator_after_seeds(seed, n):
    """The oversampler's generator after it drew its n seed picks (one float64 uniform each)."""
    generator = torch.Generator().manual_seed(seed)
    torch.rand(n, generator=generator, dtype=torch.float64)
    return generator


def test_auto_holds_one_folds_copies_at_a_time():
    """method=auto's k-fold search copies one fold's rows at a time: numpy's peak beyond the
    training features stays near one copy of them (all k folds at once: k copies; iNat-2018's
    shape is 1.3 GB a fold)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    x = rng.standard_normal((6000, 64)).astype(np.float32)
    y = np.repeat(np.arange(6), 1000)
    cfg = ProbeConfig.from_dict({"method": "auto", "method_options": {"candidates": ["ncm"], "folds": 6}})
    tracemalloc.start()
    fit_probe(FeatureSet(x, y), cfg)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # one fold's copy (5/6 + 1/6 of the rows) and NCM's normalised copy of it: 2.1 x the features;
    # all six folds at once measured 7.3 x
    assert peak < 3.0 * x.nbytes
