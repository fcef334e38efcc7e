"""Geometry of teacher features: PCA (numpy), and with faiss k-means and nearest neighbours.

faiss-cpu by default; where a GPU build of faiss sees a GPU (the optional faiss-gpu package), the
indexes and k-means run there.
"""
from __future__ import annotations

import os

import numpy as np

from kdx.errors import KdxError


def _faiss():
    try:
        import faiss
    except ImportError:
        raise KdxError("kdx probe needs faiss: pip install faiss-cpu (or faiss-gpu with CUDA)") from None
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        # OpenMP threads spin at barriers waiting for descheduled peers when more processes want the
        # CPU than there are cores: k-means of 70k points took 177 s on 2 threads, 21 s on 1, here.
        # (faiss-cpu and torch share one OpenMP runtime: this sets torch's intra-op threads to 1 as well)
        faiss.omp_set_num_threads(1)
    return faiss


def _gpus() -> int:
    faiss = _faiss()
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def _f32(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


class Projection:
    """PCA to `dim` dimensions, fitted once (on the evaluation points), applied to every set after.

    kNN costs O(dim) per pair: on 1200-d teacher features it takes ~20x longer than on their 64-d
    projection, which keeps most of the variance (`explained`). Only the top `dim` eigenpairs of the
    covariance are computed (faiss's PCAMatrix decomposes it fully: 10x slower at 1200-d).
    """

    def __init__(self, x: np.ndarray, dim: int = 64):
        from scipy.linalg import eigh

        x = _f32(x)
        self.mean, self.basis, self.explained = None, None, 1.0
        if x.shape[1] > dim:
            self.mean = x.mean(0)
            xc = x - self.mean
            cov = (xc.T @ xc) / len(x)
            d = cov.shape[0]
            eigval, eigvec = eigh(cov, subset_by_index=[d - dim, d - 1])
            self.basis = np.ascontiguousarray(eigvec[:, ::-1], dtype=np.float32)
            self.explained = float(eigval.sum() / np.trace(cov))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = _f32(x)
        return x if self.basis is None else _f32((x - self.mean) @ self.basis)


EXACT_PAIRS = 2e9  # up to this many (query, base) pairs, search is exact: 20k x 60k on 64-d takes ~1 s


def _index(base: np.ndarray, n_query: int):
    """Exact (flat) index, or for more than EXACT_PAIRS pairs an inverted-file one (IVF): base split
    in 2 sqrt(n) k-means cells, each query scanning the 8 nearest cells, ~40x fewer distances (on 70k
    Fashion-MNIST features: 0.986 recall of the exact 15 nearest, 1.5x faster than sqrt(n) cells)."""
    faiss = _faiss()
    n, dim = base.shape
    if n * n_query <= EXACT_PAIRS:
        index = faiss.IndexFlatL2(dim)
    else:
        cells = 2 * int(np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, cells)
        index.cp.max_points_per_centroid = 64  # the quantizer trains on 64 points a cell, not 256
        index.train(base)
        index.nprobe = 8
    index = faiss.index_cpu_to_all_gpus(index) if _gpus() else index
    index.add(base)
    return index


def search(base: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest rows of `base` for each row of `query` (exact up to EXACT_PAIRS): (distances, indices)."""
    base, query = _f32(base), _f32(query)
    d2, idx = _index(base, len(query)).search(query, k)
    return np.sqrt(np.maximum(d2, 0)), idx


def self_neighbors(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other rows of each row of x: (distances, indices), the point itself excluded.

    Duplicates can put another row at distance 0 ahead of the row itself, so the self-match is
    removed by index, not by position.
    """
    d, idx = search(x, x, k + 1)
    keep = idx != np.arange(len(x))[:, None]
    keep[keep.sum(1) > k, -1] = False  # the row itself was not among its k+1 nearest: drop the last
    return d[keep].reshape(len(x), k), idx[keep].reshape(len(x), k)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 25, restarts: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """faiss k-means from k-means++ seeds, best of `restarts` by squared error: (cluster of each row,
    centroids). faiss's own start (k random rows) often puts two seeds in one cluster and merges two
    others, even for well-separated clusters; k-means++ does so less often, and restarts catch the rest."""
    x = _f32(x)
    if len(x) < k:
        raise KdxError(f"k-means with k={k} needs at least {k} points, got {len(x)}: lower --regions")
    rng, best = np.random.default_rng(seed), None
    for r in range(restarts):
        # centroids fitted on at most 1,024 points a cluster (a random subset), then every point assigned
        km = _faiss().Kmeans(x.shape[1], k, niter=iters, seed=seed + r, gpu=bool(_gpus()), verbose=False,
                             max_points_per_centroid=1024)
        km.train(x, init_centroids=kmeans_pp(x, k, rng))
        if best is None or km.obj[-1] < best.obj[-1]:
            best = km
    _, assign = best.index.search(x, 1)
    return assign[:, 0], best.centroids


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next seed drawn with probability proportional to squared distance to the nearest."""
    seeds = [x[rng.integers(len(x))]]
    d2 = ((x - seeds[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else None  # all points identical: any row will do
        seeds.append(x[rng.choice(len(x), p=p)])
        d2 = np.minimum(d2, ((x - seeds[-1]) ** 2).sum(1))
    return np.stack(seeds).astype(np.float32)
