"""Speed of `kdx probe` on Fashion-MNIST (printed; not a test). Targets from issue 3: the faiss steps
on all 70k points under 5 s, the whole `kdx probe RUN` under 3 minutes on this CPU, UMAP compile included.

  python bench/probes.py RUN_DIR      (a finished Fashion-MNIST run, e.g. from
                                       kdx run configs/fashion_mnist.yaml --runs-dir /tmp/probe_runs)

(a) on the teacher's features of all 70k images (60k train + 10k test), projected to 64-d (PCA,
    numpy): faiss k-means (k=20), the coverage kNN of the 10k test points against the 60k train
    points (exact), the 15 nearest neighbours of every one of the 70k points (the map's graph; IVF,
    since 70k x 70k pairs is past EXACT_PAIRS), and that graph's recall. Best of 3 after a warm-up.
(b) the whole probe as a user runs it, in a fresh process (so numba compiles UMAP there), --remap.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from kdx.models import predict
from kdx.neighbors import Projection, kmeans, search, self_neighbors
from kdx.rundir import load_run


def best_of(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def graph_recall(z: np.ndarray, k: int, n: int) -> float:
    """Share of each sampled point's exact k nearest others that the (IVF) graph found."""
    rows = np.random.default_rng(0).choice(len(z), n, replace=False)
    graph = self_neighbors(z, k)[1][rows]
    exact = search(z, z[rows], k + 1)[1]  # 1000 x 70k pairs: exact
    return float(np.mean([len(set(g) & (set(e) - {r})) / k for g, e, r in zip(graph, exact, rows)]))


def main(run_dir: str) -> None:
    run = load_run(run_dir)
    d = run.data
    t = time.perf_counter()
    x = torch.cat([d.x_train, d.x_test])
    feats = predict(run.teacher.model, x, 1024, features=True)[1].cpu().numpy()
    print(f"teacher features of {len(x):,} images ({feats.shape[1]}-d): {time.perf_counter() - t:.1f} s "
          f"on {torch.get_num_threads()} threads (not a faiss step)")

    pca = best_of(lambda: Projection(feats, 64))
    project = Projection(feats, 64)
    z = project(feats)
    train, test = z[:len(d.x_train)], z[len(d.x_train):]
    km = best_of(lambda: kmeans(z, 20, seed=0))
    cov = best_of(lambda: search(train, test, 1))
    graph = best_of(lambda: self_neighbors(z, 15))
    total = km + cov + graph
    print(f"on {len(z):,} points: PCA {feats.shape[1]}->64 {pca:.2f} s (numpy/scipy; explained variance "
          f"{project.explained:.3f}); faiss: k-means k=20 (3 restarts) {km:.2f} s, coverage kNN 10k vs 60k "
          f"(exact) {cov:.2f} s, 15-NN graph of 70k (IVF) {graph:.2f} s; faiss total {total:.2f} s (target < 5 s)")
    print(f"IVF graph recall of the exact 15 nearest, 1000 random points: {graph_recall(z, 15, 1000):.3f}")

    t = time.perf_counter()
    cmd = [sys.executable, "-c", "import sys; from kdx.cli.probe import probe_app; sys.argv[0] = 'kdx probe'; "
           "probe_app()", run_dir, "--remap"]
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t
    print(f"whole `kdx probe {run_dir} --remap` in a fresh process: {wall:.1f} s (target < 180 s)")
    print(f"per phase: 'seconds' in {Path(run_dir) / 'probes' / 'summary.json'}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
