"""scikit-learn's bundled 8x8 handwritten digits (1,797 images), a fixed 80/20 split."""
from __future__ import annotations

import torch

from kdx.data.base import Dataset
from kdx.registry import DATASETS


@DATASETS.register()
def digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits (bundled, no download), rescaled 0..16 -> 0..255, fixed split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
    y = torch.as_tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(y) * test_fraction))
    te, tr = perm[:n_test], perm[n_test:]
    return Dataset("digits", x[tr], y[tr], x[te], y[te], [str(i) for i in range(10)],
                   default_heldout=["test", "train_subset", "gaussian_noise-2", "blur-2", "rotation-2", "uniform_noise"])
