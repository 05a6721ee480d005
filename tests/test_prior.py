"""Label-shift correction (longtail.eval.prior, docs/methods.md §13.1–13.4)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import log_softmax, softmax

from longtail.errors import DataError
from longtail.eval.prior import (
    PRIOR_FLOOR,
    bbse_prior,
    check_prior,
    correct_logits,
    em_prior,
    prior_from_counts,
    read_prior_file,
)

MEANS = np.array([0.0, 2.5, 5.0, 7.5, 10.0])  # five classes, x | y ~ N(MEANS[y], 1): 84 % Bayes accuracy
ZIPF = 1.0 / np.arange(1, 6) / np.sum(1.0 / np.arange(1, 6))


def _draw(prior: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(labels, exact log-posteriors under a uniform source prior) of n samples, round(n prior_y) of
    class y: exact class counts, so the tests measure the estimator's error, not the multinomial
    noise of the draw (at n = 20,000 that alone is about 0.015 in L1)."""
    y = np.repeat(np.arange(MEANS.size), np.round(prior * n).astype(int))
    x = rng.normal(MEANS[y], 1.0)
    return y, log_softmax(-0.5 * (x[:, None] - MEANS[None, :]) ** 2, axis=1)


def test_em_two_class_fixed_point_by_hand():
    # Uniform source; posteriors (0.9, 0.1) twice and (0.2, 0.8) once. The EM fixed point is the
    # maximiser of sum_i log(b_i + d_i q) (d_i = a_i - b_i), whose stationarity condition
    # 2 d1 / (b1 + d1 q) + d2 / (b2 + d2 q) = 0 gives q = -(2 d1 b2 + d2 b1) / (3 d1 d2).
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8]])
    d1, b1, d2, b2 = 0.8, 0.1, -0.6, 0.8
    q1 = -(2 * d1 * b2 + d2 * b1) / (3 * d1 * d2)  # = 1.22 / 1.44
    q, info = em_prior(probs, [0.5, 0.5], tol=1e-13)
    assert info["converged"]
    assert q == pytest.approx([q1, 1 - q1], abs=1e-9)
    expected_ll = np.sum(np.log(2 * (probs @ np.array([q1, 1 - q1]))))
    assert info["log_likelihood"] == pytest.approx(expected_ll, abs=1e-9)


def test_em_one_step_by_hand():
    # From q = source the first E step leaves the posteriors unchanged: q1 = mean of p(y|x).
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8]])
    q, info = em_prior(probs, [0.75, 0.25], max_iter=1)
    assert q == pytest.approx([2 / 3, 1 / 3])
    assert info["iterations"] == 1 and not info["converged"]
    # second step by hand: p'(y|x) ∝ p(y|x) q_y / p_y with q = (2/3, 1/3), p = (3/4, 1/4)
    w = np.array([2 / 3 / 0.75, 1 / 3 / 0.25])
    post = probs * w / (probs * w).sum(axis=1, keepdims=True)
    q2, _ = em_prior(probs, [0.75, 0.25], max_iter=2)
    assert q2 == pytest.approx(post.mean(axis=0))


def test_em_recovers_a_shifted_prior():
    rng = np.random.default_rng(0)
    _, logp = _draw(ZIPF, 20_000, rng)
    q, info = em_prior(np.exp(logp), np.full(5, 0.2))
    assert info["converged"] and info["log_likelihood"] > 0
    assert np.abs(q - ZIPF).sum() < 0.02


def test_bbse_recovers_a_shifted_prior():
    rng = np.random.default_rng(1)
    val_y, val_logp = _draw(np.full(5, 0.2), 10_000, rng)  # balanced validation set
    _, test_logp = _draw(ZIPF, 20_000, rng)
    q, info = bbse_prior(test_logp.argmax(1), val_logp.argmax(1), val_y, 5)
    assert np.abs(q - ZIPF).sum() < 0.04  # hard predictions + a noisy confusion matrix: looser than EM
    assert np.abs(np.full(5, 0.2) - ZIPF).sum() > 0.5  # the shift it recovered
    assert not info["ill_conditioned"] and 1 < info["condition_number"] < 1e3
    assert info["weights"] == pytest.approx(list(q / (np.bincount(val_y) / val_y.size)))


def test_bbse_singular_confusion_is_flagged():
    val_y = np.array([0, 1, 2, 0, 1, 2])
    val_pred = np.array([0, 0, 2, 0, 0, 2])  # classes 0 and 1 never told apart
    with pytest.warns(UserWarning, match="ill-conditioned"):
        q, info = bbse_prior(np.array([0, 2, 2]), val_pred, val_y, 3)
    assert info["ill_conditioned"]
    assert q.sum() == pytest.approx(1.0) and (q >= 0).all()


def test_bbse_needs_every_class_in_validation():
    with pytest.raises(DataError, match="class 2"):
        bbse_prior(np.array([0, 1]), np.array([0, 1]), np.array([0, 1]), 3)
    with pytest.raises(DataError, match="outside"):
        bbse_prior(np.array([0, 3]), np.array([0, 1]), np.array([0, 1]), 2)


def test_correct_logits_identity_and_bayes_decision():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(7, 4))
    src = np.array([0.4, 0.3, 0.2, 0.1])
    assert correct_logits(z, src, src) == pytest.approx(z)
    # exact discrete model: p(x|y) table, 3 classes, 4 values of x
    lik = np.array([[0.5, 0.1, 0.2], [0.3, 0.2, 0.3], [0.1, 0.3, 0.3], [0.1, 0.4, 0.2]])
    source, target = np.array([0.7, 0.2, 0.1]), np.array([0.1, 0.3, 0.6])
    logits = np.log(lik * source) + 3.0  # any per-sample shift: logits are defined up to one
    corrected = correct_logits(logits, target, source)
    bayes = lik * target
    assert (corrected.argmax(1) == bayes.argmax(1)).all()
    assert softmax(corrected, axis=1) == pytest.approx(bayes / bayes.sum(1, keepdims=True))
    assert not (corrected.argmax(1) == logits.argmax(1)).all()  # the shift changes decisions here


def test_zero_target_weight_is_floored_not_minus_inf():
    out = correct_logits(np.zeros((2, 3)), [0.5, 0.5, 0.0], [1, 1, 1])
    assert np.isfinite(out).all()
    assert out[0, 2] == pytest.approx(np.log(PRIOR_FLOOR) - np.log(1 / 3), abs=1e-6)
    assert (out.argmax(1) != 2).all()


def test_prior_checks():
    assert prior_from_counts([30, 10]) == pytest.approx([0.75, 0.25])
    assert check_prior([2, 2, 4]) == pytest.approx([0.25, 0.25, 0.5])
    for bad, match in [([1, -1], "negative"), ([1, np.nan], "NaN"), ([0, 0], "all zero"), ([[1]], "1-D")]:
        with pytest.raises(DataError, match=match):
            check_prior(bad)
    with pytest.raises(DataError, match="3 classes"):
        correct_logits(np.zeros((1, 3)), [1, 1], [1, 1, 1])
    with pytest.raises(DataError, match="sums to"):
        em_prior(np.array([[2.0, 1.0]]), [0.5, 0.5])


def test_read_prior_file(tmp_path):
    names = ["cat", "dog", "emu"]
    f = tmp_path / "prior.csv"
    f.write_text("class,weight\ndog,2\ncat,1\nemu,1\n")
    assert read_prior_file(f, names) == pytest.approx([0.25, 0.5, 0.25])
    f.write_text("cat,10\n\ndog, 30\nemu,60\n")  # no header, blank line, spaces
    assert read_prior_file(f, names) == pytest.approx([0.1, 0.3, 0.6])
    cases = [
        ("cat,1\ndog,1\n", "'emu' missing"),
        ("cat,1\ndog,1\nemu,1\nyak,1\n", "unknown class 'yak'"),
        ("cat,1\ndog,-1\nemu,1\n", "'dog' has weight '-1'"),
        ("cat,1\ndog,nan\nemu,1\n", "'dog' has weight 'nan'"),
        ("cat,1\ndog,x\nemu,1\n", "'dog' has weight 'x'"),
        ("cat,1\ncat,2\ndog,1\nemu,1\n", "listed twice"),
        ("cat,1,2\n", "3 fields"),
        ("class,weight\n", "no class,weight rows"),
        ("cat,0\ndog,0\nemu,0\n", "all weights are zero"),
    ]
    for text, match in cases:
        f.write_text(text)
        with pytest.raises(DataError, match=match):
            read_prior_file(f, names)
    with pytest.raises(DataError, match="cannot read"):
        read_prior_file(tmp_path / "absent.csv", names)
