"""science.md, "Theory": in linear regression trained by gradient descent from zero, progress along
the data covariance's eigendirection k is a_k(t) = 1 - (1 - lr lambda_k)^t. A student fitted to an
early-stopped teacher's train-set outputs makes progress a_k(t) a_k(T): the teacher's filter twice,
so at equal progress on the top directions it has made less on the low ones.

The simulation: Gaussian inputs whose train covariance is exactly H = V diag(lambda) V^T (log-spaced
spectrum, random rotation V; the inputs are whitened, then scaled, so the eigendirections gradient
descent sees are the v_k we measure along, with no sampling cross-talk between them); w* with unit
weight on every direction, so progress (v_k . w) / (v_k . w*) is well defined; label noise that
lives in the low-eigenvalue directions (each label is x . (w* + delta), delta ~ N(0, noise^2 P_low),
P_low the projector on the lower half of the spectrum). The teacher is gradient descent on the noisy
labels, stopped where its test error is lowest; the one-hot student is the same descent (same data,
same start), the distilled student descends on the teacher's outputs X w_T. Test error is the exact
excess risk (w - w*)^T H (w - w*).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from kdx.errors import KdxError
from kdx.io import pyplot, save_figure, write_json


@dataclasses.dataclass
class EigenConfig:
    dim: int = 40
    n: int = 10_000  # train inputs; many per dimension, so the sample covariance is close to H
    lam_max: float = 1.0
    lam_min: float = 1e-3
    noise: float = 8.0  # sd of delta along each low-eigenvalue direction
    lr: float = 0.1
    steps: int = 40_000
    share: float = 0.1  # "top" and "low" directions: this share of them at each end of the spectrum
    match: float = 0.95  # matched top-direction progress: this fraction of the teacher's
    seed: int = 0


def problem(cfg: EigenConfig):
    """(lambda, V, w*, X, y): the spectrum descending, V's columns the eigendirections."""
    rng = np.random.default_rng(cfg.seed)
    lam = np.logspace(np.log10(cfg.lam_max), np.log10(cfg.lam_min), cfg.dim)
    v, _ = np.linalg.qr(rng.standard_normal((cfg.dim, cfg.dim)))
    w_star = v @ rng.choice([-1.0, 1.0], cfg.dim)
    z, _ = np.linalg.qr(rng.standard_normal((cfg.n, cfg.dim)))  # orthonormal columns: z^T z = I exactly
    x = (np.sqrt(cfg.n) * z * np.sqrt(lam)) @ v.T
    low = v[:, cfg.dim // 2:]
    delta = cfg.noise * rng.standard_normal((cfg.n, low.shape[1])) @ low.T
    y = x @ w_star + np.einsum("nd,nd->n", x, delta)
    return lam, v, w_star, x, y


def descend(h: np.ndarray, b: np.ndarray, lr: float, steps: int) -> np.ndarray:
    """Gradient descent from zero on 1/2 w^T h w - b^T w (mean squared error with h = X^T X / n,
    b = X^T y / n); returns the weights after every step, row t = after t steps."""
    w, path = np.zeros(len(b)), np.empty((steps + 1, len(b)))
    path[0] = w
    for t in range(1, steps + 1):
        w = w - lr * (h @ w - b)
        path[t] = w
    return path


def simulate(cfg: EigenConfig = EigenConfig()) -> dict:
    lam, v, w_star, x, y = problem(cfg)
    if cfg.lr * lam.max() * 1.5 >= 2:
        raise KdxError(f"eigen: lr {cfg.lr} is unstable for lambda_max {lam.max()}: keep lr * lambda_max below 1.3")
    h = x.T @ x / len(x)
    onehot = descend(h, x.T @ y / len(x), cfg.lr, cfg.steps)
    progress = lambda path: (path @ v) / (v.T @ w_star)  # noqa: E731  (steps, dim)
    risk = lambda path: (((path - w_star) @ v) ** 2 * lam).sum(-1)  # noqa: E731  exact excess test risk
    T = int(risk(onehot).argmin())  # early stopping at the best test error: the teacher
    if T == cfg.steps:
        raise KdxError("eigen: the teacher's test error still falls at the last step; raise noise or steps")
    distilled = descend(h, h @ onehot[T], cfg.lr, cfg.steps)

    m = max(1, int(round(cfg.share * cfg.dim)))
    top, low = slice(0, m), slice(cfg.dim - m, cfg.dim)
    p_onehot, p_distilled = progress(onehot), progress(distilled)
    target = cfg.match * p_onehot[T, top].mean()
    t1 = _first(p_onehot[:, top].mean(1) >= target)
    t2 = _first(p_distilled[:, top].mean(1) >= target)
    filt = lambda t: 1 - (1 - cfg.lr * lam) ** t  # noqa: E731  the theory's per-direction progress
    r_onehot, r_distilled = risk(onehot), risk(distilled)
    return {
        "config": dataclasses.asdict(cfg), "lambda": lam.tolist(), "teacher_step": T, "matched_top_progress": target,
        "steps": {"onehot": t1, "distilled": t2},
        "progress": {"teacher": p_onehot[T].tolist(), "onehot": p_onehot[t1].tolist(),
                     "distilled": p_distilled[t2].tolist()},
        "theory": {"teacher": filt(T).tolist(), "onehot": filt(t1).tolist(),
                   "distilled": (filt(t2) * filt(T)).tolist()},
        "low_progress": {"onehot": float(p_onehot[t1, low].mean()), "distilled": float(p_distilled[t2, low].mean())},
        "test_error": {"teacher": float(r_onehot[T]), "onehot_matched": float(r_onehot[t1]),
                       "distilled_matched": float(r_distilled[t2]), "onehot_best": float(r_onehot.min()),
                       "distilled_best": float(r_distilled.min()), "onehot_last": float(r_onehot[-1]),
                       "distilled_last": float(r_distilled[-1]), "zero": float(risk(np.zeros((1, cfg.dim)))[0])},
    }


def _first(hit: np.ndarray) -> int:
    if not hit.any():
        raise KdxError("eigen: a student never reaches the matched top-direction progress; raise steps or lower match")
    return int(hit.argmax())


def plot(result: dict, path) -> None:
    """Left: per-direction progress at matched top-direction progress, measured (dots) and theory (lines).
    Right: distilled over one-hot progress per direction, which the theory says is a_k(t2) a_k(T) / a_k(t1)."""
    plt = pyplot()
    lam = np.array(result["lambda"])
    fig, (ax, ratio) = plt.subplots(1, 2, figsize=(12, 4.8))
    for name, color in (("teacher", "k"), ("onehot", "tab:blue"), ("distilled", "tab:red")):
        label = f"{name} (step {result['teacher_step'] if name == 'teacher' else result['steps'][name]})"
        ax.plot(lam, result["progress"][name], "o", ms=3, color=color, label=label)
        ax.plot(lam, result["theory"][name], "-", lw=1, color=color, alpha=0.7)
    ax.set_ylabel("progress (v_k . w) / (v_k . w*)")
    err = result["test_error"]
    ax.set_title(f"matched top progress {result['matched_top_progress']:.3f}; test error: teacher "
                 f"{err['teacher']:.4f}, one-hot {err['onehot_matched']:.4f}, distilled {err['distilled_matched']:.4f}",
                 fontsize=8)
    ax.legend(fontsize=8)
    p, t = result["progress"], result["theory"]
    ratio.plot(lam, np.array(p["distilled"]) / np.array(p["onehot"]), "o", ms=3, color="tab:red", label="measured")
    ratio.plot(lam, np.array(t["distilled"]) / np.array(t["onehot"]), "-", color="k", lw=1, label="theory")
    ratio.set_ylabel("distilled / one-hot progress, per direction")
    ratio.set_title("distillation's extra bias toward top eigendirections", fontsize=9)
    ratio.legend(fontsize=8)
    for a in (ax, ratio):
        a.set_xscale("log")
        a.set_xlabel("eigenvalue lambda_k")
    fig.tight_layout()
    save_figure(fig, path)


EIGEN_JSON, EIGEN_PNG = "eigen.json", "eigen.png"  # what `kdx probe eigen --out DIR` writes


def write_simulations(out: Path, seeds: int, *, noise: float = EigenConfig.noise) -> list[dict]:
    """The simulation for seeds 0..seeds-1: OUT/eigen.json (every run) and OUT/eigen.png (seed 0's)."""
    results = [simulate(EigenConfig(seed=s, noise=noise)) for s in range(seeds)]
    write_json(Path(out) / EIGEN_JSON, {"runs": results})
    plot(results[0], Path(out) / EIGEN_PNG)
    return results
