"""A 2-D UMAP map of teacher features, evaluation points and distillation inputs together, with
each point's nearest neighbours (faiss). One faiss kNN graph serves both: UMAP takes it
precomputed instead of building its own with NN-descent."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from kdx.io import pyplot, save_figure
from kdx.neighbors import search, self_neighbors

UMAP_NEIGHBORS = 15


def embed(features: np.ndarray, dist: np.ndarray, idx: np.ndarray, seed: int = 0,
          epochs: int | None = None) -> np.ndarray:
    """UMAP to 2-D from a kNN graph (self excluded); UMAP wants each point's own row first."""
    import umap

    n = len(features)
    nn = min(UMAP_NEIGHBORS, n - 1)
    knn_idx = np.concatenate([np.arange(n)[:, None], idx[:, :nn - 1]], 1)
    knn_dist = np.concatenate([np.zeros((n, 1), np.float32), dist[:, :nn - 1]], 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no NNDescent search index": we never transform new points
        reducer = umap.UMAP(n_neighbors=nn, n_components=2, random_state=seed, n_epochs=epochs,
                            precomputed_knn=(knn_idx, knn_dist), init="spectral" if n > nn + 1 else "random")
        return reducer.fit_transform(features).astype(np.float32)


def build(features: np.ndarray, points: pd.DataFrame, neighbors: int = 10, seed: int = 0,
          epochs: int | None = None) -> pd.DataFrame:
    """points plus x, y (UMAP) and `neighbors`: the ids (row numbers) of each point's k nearest others;
    `eval_neighbors` and `distill_neighbors`: its k nearest other evaluation points and distillation
    inputs alone (the explorer lists both when a point is clicked)."""
    k = min(max(neighbors, UMAP_NEIGHBORS - 1), len(features) - 1)
    dist, idx = self_neighbors(features, k)
    xy = embed(features, dist, idx, seed, epochs)
    out = points.reset_index(drop=True).copy()
    out.insert(0, "id", np.arange(len(out), dtype=np.int64))
    out.insert(2, "x", xy[:, 0])
    out.insert(3, "y", xy[:, 1])
    out["neighbors"] = list(idx[:, :neighbors].astype(np.int64))
    for kind in ("eval", "distill"):
        out[f"{kind}_neighbors"] = list(kind_neighbors(features, (out["kind"] == kind).to_numpy(), neighbors))
    return out


def kind_neighbors(features: np.ndarray, of_kind: np.ndarray, k: int) -> np.ndarray:
    """For every row, the ids of its k nearest other rows among those with of_kind (fewer there: -1 pads)."""
    ids = np.flatnonzero(of_kind)
    out = np.full((len(features), k), -1, np.int64)
    if len(ids) == 0:
        return out
    kk = min(k + 1, len(ids))
    _, idx = search(features[ids], features, kk)
    found = np.where(idx >= 0, ids[np.maximum(idx, 0)], -1)
    for i, row in enumerate(found):  # drop the row itself; it is among its own kind's nearest
        row = row[row != i][:k]
        out[i, :len(row)] = row
    return out


def plot(df: pd.DataFrame, classes: list[str], path) -> None:
    """Left: the teacher's class, distillation inputs in grey beneath. Right: deviation of eval points."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    ev, di = df[df["kind"] == "eval"], df[df["kind"] == "distill"]
    for ax in axes:
        ax.scatter(di["x"], di["y"], s=2, c="0.8", label="distillation inputs", rasterized=True)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for c in sorted(ev["teacher_class"].unique()):
        g = ev[ev["teacher_class"] == c]
        axes[0].scatter(g["x"], g["y"], s=2, color=cmap(c % cmap.N), label=classes[c], rasterized=True)
    axes[0].legend(markerscale=5, fontsize=7, loc="best")
    axes[0].set_title("evaluation points by teacher class")
    lim = max(1.0, float(np.nanquantile(np.abs(ev["deviation"]), 0.98)))
    sc = axes[1].scatter(ev["x"], ev["y"], s=2, c=ev["deviation"], cmap="coolwarm_r", vmin=-lim, vmax=lim,
                         rasterized=True)
    fig.colorbar(sc, ax=axes[1], label="phi(p_student) - phi(p_teacher), teacher's top class")
    axes[1].set_title("deviation (blue: student more sure, red: less sure)")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path)
