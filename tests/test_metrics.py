"""Metrics agree with independent computations (scipy, sklearn, statsmodels-free binomial test)."""
import numpy as np
import torch
from scipy.special import rel_entr, softmax
from scipy.stats import binomtest
from sklearn.metrics import log_loss

from kdx.eval.fidelity import ece, fidelity_metrics
from kdx.eval.statistics import mcnemar_exact, mean_interval, paired_bootstrap_ci


def _logits(seed, n=500, k=10, scale=3.0):
    return torch.from_numpy(np.random.default_rng(seed).normal(0, scale, (n, k)))


def test_fidelity_metrics_match_independent_computation():
    t, s = _logits(0), _logits(1)
    y = torch.from_numpy(np.random.default_rng(2).integers(0, 10, 500))
    m = fidelity_metrics(t, s, y, bootstrap=300, seed=0)
    pt, ps = softmax(t.numpy(), 1), softmax(s.numpy(), 1)
    assert m["agreement"] == np.mean(pt.argmax(1) == ps.argmax(1))
    assert np.isclose(m["kl_teacher_student"], rel_entr(pt, ps).sum(1).mean())
    assert np.isclose(m["tv"], 0.5 * np.abs(pt - ps).sum(1).mean())
    assert np.isclose(m["student_nll"], log_loss(y.numpy(), ps, labels=range(10)))
    assert np.isclose(m["teacher_nll"], log_loss(y.numpy(), pt, labels=range(10)))
    assert np.isclose(m["acc_diff"], np.mean(ps.argmax(1) == y.numpy()) - np.mean(pt.argmax(1) == y.numpy()))
    lo, hi = m["acc_diff_ci"]
    assert lo <= m["acc_diff"] <= hi


def test_unlabeled_distribution_has_null_accuracy_fields():
    m = fidelity_metrics(_logits(0), _logits(1), None)
    assert m["teacher_acc"] is None and m["mcnemar_p"] is None and m["agreement"] is not None


def test_identical_models_have_perfect_fidelity():
    t = _logits(3)
    m = fidelity_metrics(t, t.clone(), None)
    assert m["agreement"] == 1.0 and abs(m["kl_teacher_student"]) < 1e-12 and m["tv"] < 1e-12


def test_ece_against_a_direct_loop():
    rng = np.random.default_rng(4)
    p = softmax(rng.normal(0, 2, (2000, 5)), 1)
    y = rng.integers(0, 5, 2000)
    conf, ok = p.max(1), (p.argmax(1) == y)
    edges = np.linspace(0, 1, 16)
    expected = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)  # right-closed bins; no confidence sits exactly on an edge here
        if m.any():
            expected += m.mean() * abs(ok[m].mean() - conf[m].mean())
    assert np.isclose(ece(p, y), expected)


def test_mcnemar_exact_is_binomial_test_on_discordant_pairs():
    rng = np.random.default_rng(5)
    t = rng.random(400) < 0.7
    s = np.where(rng.random(400) < 0.2, ~t, t)
    b, c = int(np.sum(t & ~s)), int(np.sum(~t & s))
    assert np.isclose(mcnemar_exact(t, s), binomtest(min(b, c), b + c, 0.5).pvalue)


def test_paired_bootstrap_interval_covers_and_shrinks():
    rng = np.random.default_rng(6)
    t = rng.random(5000) < 0.8
    s = np.where(rng.random(5000) < 0.1, rng.random(5000) < 0.9, t)
    lo, hi = paired_bootstrap_ci(t, s, 2000, seed=0)
    d = s.mean() - t.mean()
    se = np.std(s.astype(float) - t.astype(float), ddof=1) / np.sqrt(len(t))
    assert lo < d < hi and np.isclose(hi - lo, 2 * 1.96 * se, rtol=0.15)


def test_mean_interval_is_t_interval():
    from scipy import stats

    v = [0.90, 0.91, 0.93]
    m, lo, hi = mean_interval(v)
    ref = stats.t.interval(0.95, 2, loc=np.mean(v), scale=stats.sem(v))
    assert np.isclose(m, np.mean(v)) and np.allclose([lo, hi], ref)
