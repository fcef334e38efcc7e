"""Paired statistics for "does the student beat the teacher" on the same inputs."""
from __future__ import annotations

import numpy as np


def mcnemar_exact(teacher_correct: np.ndarray, student_correct: np.ndarray) -> float:
    """Exact (binomial) McNemar p-value on the discordant pairs."""
    from statsmodels.stats.contingency_tables import mcnemar  # imported on use: it costs 0.4 s at start-up

    t, s = np.asarray(teacher_correct, bool), np.asarray(student_correct, bool)
    table = [[np.sum(t & s), np.sum(t & ~s)], [np.sum(~t & s), np.sum(~t & ~s)]]
    return float(mcnemar(table, exact=True).pvalue)


def paired_bootstrap_ci(teacher_correct: np.ndarray, student_correct: np.ndarray, resamples: int = 1000,
                        seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile interval for student_acc - teacher_acc, resampling inputs (pairs kept together)."""
    diff = np.asarray(student_correct, float) - np.asarray(teacher_correct, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(resamples, len(diff)))
    means = diff[idx].mean(1)
    a = (1 - level) / 2
    return [float(np.quantile(means, a)), float(np.quantile(means, 1 - a))]


def mean_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and t-interval over seeds (NaN half-width for a single value)."""
    from scipy import stats

    v = np.asarray(values, float)
    m = float(v.mean())
    if len(v) < 2:
        return m, float("nan"), float("nan")
    h = float(stats.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, m - h, m + h
