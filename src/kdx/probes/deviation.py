"""The student-teacher deviation plot of Nagarajan et al. (arXiv 2301.12923): each input at
x = phi(p_teacher), y = phi(p_student), phi(p) = log(p / (1 - p)), p on one class per input.
Students that underfit low-confidence points give a least-squares slope above 1.

Which estimator answers the claim: the paper's is the least-squares slope of y on x, i.e. of the student's
mean phi given the teacher's, which is what "the student underfits where the teacher is unsure" is about, and
x (the teacher's own output) is known exactly, not measured with error. Two others are shown beside it
(`robust`) because a verdict can hang on the estimator: the slope through the binned medians (decile medians
of x and of y: robust to the heavy, clipped tails that pull least squares) and the orthogonal (Deming, equal
error variances) fit, which treats x and y symmetrically (it answers "do the two models' phis lie on a line of
slope above 1", not the claim, and exceeds the least-squares slope whenever the correlation is below 1). The
third guard, the one-hot-trained student's slope against the same teacher, is a run of its own: the study
pages report the distilled student's excess over it (two independently trained models already give a slope
below 1 by regression to the mean, which least squares shows as attenuation)."""
from __future__ import annotations

import math

import numpy as np
import torch

from kdx.eval.statistics import mean_interval
from kdx.io import pyplot, save_figure

# Probabilities are clipped to [PROB_CLIP, 1 - PROB_CLIP] before phi, i.e. phi to [-PHI_MAX, PHI_MAX]:
# a few saturated inputs (phi of 30 or 40) would otherwise dominate the least squares. 1e-9 is far
# beyond float32 softmax saturation (1 - 6e-8), so only logit margins above 20.7 are touched.
PROB_CLIP = 1e-9
PHI_MAX = math.log((1 - PROB_CLIP) / PROB_CLIP)
CLASS_CHOICES = ("teacher_top1", "ground_truth")


def phi(logits: torch.Tensor, cls: torch.Tensor) -> np.ndarray:
    """log(p / (1 - p)) of softmax(logits)[cls], clipped to +-PHI_MAX.

    Computed in float64 straight from the logits, phi = z_c - logsumexp_{j != c} z_j, so no
    probability is rounded to 0 or 1 before the clip (in float32, p = 1 already at a margin of 17).
    """
    z = logits.detach().double().cpu()
    cls = cls.detach().long().cpu()[:, None]
    others = z.scatter(1, cls, float("-inf")).logsumexp(1)
    return (z.gather(1, cls)[:, 0] - others).clamp(-PHI_MAX, PHI_MAX).numpy()


def fit_line(x: np.ndarray, y: np.ndarray, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Least-squares slope and intercept of y on x, with percentile bootstrap intervals (inputs resampled)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = _ols(x[None], y[None])
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // len(x))  # bounded memory: chunk x n indices at a time
    slopes, intercepts = [], []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, len(x), size=(min(chunk, resamples - start), len(x)))
        s, i = _ols(x[idx], y[idx])
        slopes.append(s)
        intercepts.append(i)
    a = (1 - level) / 2
    ci = lambda v: [float(np.nanquantile(v, a)), float(np.nanquantile(v, 1 - a))]  # noqa: E731
    return {"slope": float(slope[0]), "slope_ci": ci(np.concatenate(slopes)),
            "intercept": float(intercept[0]), "intercept_ci": ci(np.concatenate(intercepts))}


ROBUST_RESAMPLES = 200  # the binned medians' bootstrap re-sorts every resample: fewer resamples than the fits'


def moments(x: np.ndarray, y: np.ndarray, group: np.ndarray | None = None) -> np.ndarray:
    """(G, 6) sums n, x, y, xx, xy, yy per group (group None: every point its own group)."""
    cols = (np.ones_like(x), x, y, x * x, x * y, y * y)
    if group is None:
        return np.stack(cols, 1)
    _, inv = np.unique(group, return_inverse=True)
    return np.stack([np.bincount(inv, weights=w) for w in cols], 1)


def orthogonal_slope(stats: np.ndarray) -> np.ndarray:
    """The orthogonal (Deming, error-variance ratio 1) slope from summed moments (..., 6); NaN if sxy = 0."""
    n, sx, sy, sxx, sxy, syy = np.moveaxis(stats, -1, 0)
    vxx, vyy, vxy = sxx - sx * sx / n, syy - sy * sy / n, sxy - sx * sy / n
    with np.errstate(invalid="ignore", divide="ignore"):
        return (vyy - vxx + np.sqrt((vyy - vxx) ** 2 + 4 * vxy ** 2)) / (2 * vxy)


def resample_counts(groups: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, groups) counts: how often each group (input, or sequence) is drawn in each resample."""
    return np.random.default_rng(seed).multinomial(groups, np.full(groups, 1 / groups), size=resamples)


def interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    a = (1 - level) / 2
    return [float(np.nanquantile(values, a)), float(np.nanquantile(values, 1 - a))]


def binned_medians(x: np.ndarray, y: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Median x and median y in equal-count groups of points sorted by x (the confidence deciles)."""
    parts = np.array_split(np.argsort(x, kind="stable"), bins)
    parts = [p for p in parts if len(p)]
    return np.array([np.median(x[p]) for p in parts]), np.array([np.median(y[p]) for p in parts])


def _median_line(mx: np.ndarray, my: np.ndarray) -> float:
    """The least-squares slope through the binned medians."""
    return float(_ols(mx[None], my[None])[0][0]) if len(mx) > 1 else float("nan")


def ols_from_moments(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of y on x (slope, intercept) from summed moments (..., 6); NaN where x is constant."""
    n, sx, sy, sxx, sxy, _ = np.moveaxis(stats, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (sxy - sx * sy / n) / (sxx - sx * sx / n)
        return slope, (sy - slope * sx) / n


def robust(x: np.ndarray, y: np.ndarray, group: np.ndarray | None = None, *, resamples: int = 1000, seed: int = 0,
           bins: int = 10) -> dict:
    """The orthogonal slope and the slope through the decile medians, each with a percentile bootstrap that
    resamples groups (`group`: the sequence of each position; None: the inputs themselves)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    inv = np.arange(len(x)) if group is None else np.unique(group, return_inverse=True)[1]  # group ids 0..G-1
    stats = moments(x, y, None if group is None else inv)
    counts = resample_counts(len(stats), resamples, seed)
    ortho = orthogonal_slope(counts @ stats)
    # the points of each group, contiguous: group g is order[starts[g]:starts[g] + sizes[g]]
    order, sizes = np.argsort(inv, kind="stable"), np.bincount(inv)
    starts = np.cumsum(sizes) - sizes
    rng = np.random.default_rng(seed + 1)
    boot = []
    for _ in range(min(resamples, ROBUST_RESAMPLES)):
        draw = rng.integers(0, len(sizes), len(sizes))
        n = sizes[draw]
        offset = np.repeat(starts[draw] - (np.cumsum(n) - n), n)  # each drawn group's start, minus where it lands
        idx = order[offset + np.arange(n.sum())]
        boot.append(_median_line(*binned_medians(x[idx], y[idx], bins)))
    mx, my = binned_medians(x, y, bins)
    return {"orthogonal": {"slope": float(orthogonal_slope(stats.sum(0))), "slope_ci": interval(ortho)},
            "binned_medians": {"slope": _median_line(mx, my), "slope_ci": interval(np.array(boot)),
                               "teacher_phi": mx.tolist(), "student_phi": my.tolist()}}


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise least squares: slope = cov(x, y) / var(x); NaN where x is constant."""
    xc = x - x.mean(1, keepdims=True)
    yc = y - y.mean(1, keepdims=True)
    var = (xc * xc).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (xc * yc).sum(1) / var
    return slope, y.mean(1) - slope * x.mean(1)


def deciles(x: np.ndarray, y: np.ndarray, bins: int = 10) -> list[dict]:
    """Mean deviation y - x (t-interval) and the share below the diagonal, by teacher-confidence decile.

    Deciles are equal-count groups of inputs sorted by x (not quantile edges), so a pile of
    clipped, tied confidences still splits into `bins` groups.
    """
    rows = []
    for b, idx in enumerate(np.array_split(np.argsort(x, kind="stable"), bins)):
        if len(idx) == 0:
            continue
        d = y[idx] - x[idx]
        mean, lo, hi = mean_interval(d)
        rows.append({"decile": b + 1, "n": int(len(idx)),
                     "teacher_p": [_sigmoid(x[idx].min()), _sigmoid(x[idx].max())],
                     "mean_deviation": mean, "ci": [lo, hi], "frac_below_diagonal": float((d < 0).mean())})
    return rows


def _sigmoid(v: float) -> float:
    return float(1 / (1 + math.exp(-v)))


def chosen_class(choice: str, teacher_logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    """The class p is taken on: the teacher's top-1, or the ground truth (None when unlabeled)."""
    if choice == "teacher_top1":
        return teacher_logits.argmax(1)
    return labels


def summarize(teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor | None,
              resamples: int = 1000, seed: int = 0) -> tuple[dict, dict]:
    """deviation.json's entry for one distribution, and the (x, y) points per class choice for the plot."""
    out, points = {}, {}
    for choice in CLASS_CHOICES:
        cls = chosen_class(choice, teacher_logits, labels)
        if cls is None:
            out[choice] = None
            continue
        x, y = phi(teacher_logits, cls), phi(student_logits, cls)
        out[choice] = {"n": int(len(x)), **fit_line(x, y, resamples, seed),
                       "frac_below_diagonal": float((y < x).mean()),
                       "frac_clipped": {"teacher": float((np.abs(x) >= PHI_MAX).mean()),
                                        "student": float((np.abs(y) >= PHI_MAX).mean())},
                       "deciles": deciles(x, y), "robust": robust(x, y, resamples=resamples, seed=seed)}
        points[choice] = (x, y)
    return out, points


def plot(path, name: str, points: dict, fits: dict, hexbin_above: int = 3000) -> None:
    """One panel per class choice: the inputs (hexbin when many), the diagonal, the fitted line."""
    plt = pyplot()

    fig, axes = plt.subplots(1, len(points), figsize=(5.2 * len(points), 4.8), squeeze=False)
    for ax, (choice, (x, y)) in zip(axes[0], points.items()):
        if len(x) > hexbin_above:
            ax.hexbin(x, y, gridsize=60, bins="log", cmap="viridis", mincnt=1)
        else:
            ax.scatter(x, y, s=4, alpha=0.4)
        lim = [min(x.min(), y.min()), max(x.max(), y.max())]
        f = fits[choice]
        ax.plot(lim, lim, "k--", lw=1, label="diagonal")
        ax.plot(lim, [f["intercept"] + f["slope"] * v for v in lim], "r-", lw=1.5, label="least squares")
        lo, hi = f["slope_ci"]
        ax.set_title(f"{name}, {choice}: slope {f['slope']:.2f} [{lo:.2f}, {hi:.2f}]", fontsize=10)
        ax.set_xlabel("phi(p_teacher)")
        ax.set_ylabel("phi(p_student)")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)

