"""MUNGE (Bucilă, Caruana and Niculescu-Mizil, "Model Compression", KDD 2006): synthetic rows near the
train rows. For each example e its nearest neighbour e' (Euclidean, attributes scaled to [0, 1], a differing
category at distance 1); each attribute, with probability p, changes in both: a continuous one is drawn from
N(e'_a, |e_a - e'_a| / s) for e and N(e_a, |e_a - e'_a| / s) for e', a categorical one is swapped. A pass over
the rows, in order, on a copy of the train set makes N new rows; `passes` passes make the pool.

Choices the paper leaves open: neighbours are found once, on the unmodified train set; within a pass the rows
are visited in order and e' keeps the changes it got (as the paper's loop over T' does); the random draws are,
per pass, a (N, D) uniform matrix (attribute swapped where < p) and then a (N, D, 2) standard-normal one,
from numpy's default_rng(seed) (`munge_rows`: the whole procedure, for tests against another implementation).
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from kdx.data.base import Dataset
from kdx.errors import KdxError
from kdx.registry import SOURCES
from kdx.sampling.base import PoolSource


def nearest_neighbours(x: np.ndarray, categorical: list[int]) -> np.ndarray:
    """Each row's nearest other row: continuous attributes scaled to [0, 1] by the rows' range, categorical
    ones one-hot at 1/sqrt(2) (a differing category adds 1 to the squared distance)."""
    cont = [c for c in range(x.shape[1]) if c not in categorical]
    lo, span = x[:, cont].min(0), np.ptp(x[:, cont], 0)
    parts = [(x[:, cont] - lo) / np.where(span > 0, span, 1.0)]
    for c in categorical:
        codes = x[:, c].astype(np.int64)
        parts.append(np.eye(codes.max() + 1)[codes] / np.sqrt(2.0))
    z = np.concatenate(parts, 1)
    _, idx = NearestNeighbors(n_neighbors=min(2, len(z))).fit(z).kneighbors(z)
    # a row is its own nearest at distance 0; with an exact duplicate either may come first
    return np.where(idx[:, 0] == np.arange(len(z)), idx[:, -1], idx[:, 0])


def munge_rows(x: np.ndarray, categorical: list[int], *, passes: int, p: float, s: float, seed: int) -> np.ndarray:
    """`passes` x N MUNGE rows made from the rows x (N, D)."""
    n, d = x.shape
    is_cat = np.zeros(d, dtype=bool)
    is_cat[list(categorical)] = True
    neighbour = nearest_neighbours(x, categorical)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(passes):
        t = x.astype(np.float64).copy()
        swap = rng.random((n, d)) < p
        z = rng.standard_normal((n, d, 2))
        for i in range(n):
            a = np.flatnonzero(swap[i])
            if not len(a):
                continue
            j = neighbour[i]
            ei, ej = t[i, a], t[j, a]
            sd = np.abs(ei - ej) / s
            cont = ~is_cat[a]
            t[i, a] = np.where(cont, ej + sd * z[i, a, 0], ej)
            t[j, a] = np.where(cont, ei + sd * z[i, a, 1], ei)
        out.append(t)
    return np.concatenate(out)


@SOURCES.register(context=("data", "seed"))
def munge(data: Dataset, seed: int, *, p: float = 0.5, s: float = 10.0, passes: int = 5) -> PoolSource:
    """Tables: MUNGE (Bucilă et al. 2006), rows swapped and jittered with their nearest neighbour's (p, s), `passes` x N."""
    data.require("tabular", "source 'munge'", "train, noise, downstream or mixture")
    if not (0 <= p <= 1 and s > 0 and passes >= 1):
        raise KdxError(f"source 'munge': needs 0 <= p <= 1, s > 0 and passes >= 1; got p={p}, s={s}, passes={passes}")
    if len(data.x_train) < 2:
        raise KdxError(f"source 'munge' needs at least 2 train rows (a neighbour each), dataset '{data.name}' has "
                       f"{len(data.x_train)}; use more data")
    rows = munge_rows(data.x_train.double().numpy(), list(data.categories), passes=passes, p=p, s=s, seed=seed)
    return PoolSource(data, seed, torch.as_tensor(rows, dtype=torch.float32), None)
