"""How hard a classification dataset is made for its teacher: fewer train inputs and noisy train labels.

`data: {name: mnist1d, train_size: 1000, label_noise: 0.2}` (any image, signal, text or tabular dataset):
    train_size   keep this many train inputs, a uniformly random subset (test untouched)
    label_noise  symmetric label noise: exactly round(label_noise * N) train labels, chosen at random, are each
                 replaced by a uniformly random *other* class, so the share of wrong labels is label_noise exactly
    noise_seed   the seed of both draws (default 0). It belongs to the data, not to the run: the teacher and every
                 student of a study see the same subset and the same noisy labels, whatever their seeds.
The test labels are never touched, so test accuracy is measured against the clean labels. The train labels
every model trains on (and `train_subset` is scored against) are the noisy ones; `Dataset.train_labels` keeps
the train index, clean and noisy labels, which a run writes to RUN/train_labels.npz so they can be checked.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from kdx.errors import KdxError

KEYS = ("train_size", "label_noise", "noise_seed")


def split_spec(spec: dict) -> tuple[dict, dict]:
    """The dataset's own arguments, and the difficulty ones (checked: a wrong value is named with its fix)."""
    own = {k: v for k, v in spec.items() if k not in KEYS}
    hard = {k: spec[k] for k in KEYS if k in spec and spec[k] is not None}
    size, noise, seed = hard.get("train_size"), hard.get("label_noise"), hard.get("noise_seed", 0)
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise KdxError(f"data.train_size must be a whole number of train inputs >= 1, got {size!r}")
    if noise is not None and (isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < 1):
        raise KdxError(f"data.label_noise must be a share of train labels in [0, 1), got {noise!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise KdxError(f"data.noise_seed must be an integer, got {seed!r}")
    return own, hard


def apply(data, *, train_size: int | None = None, label_noise: float | None = None, noise_seed: int = 0):
    """The dataset with a random train subset of train_size and label_noise of its train labels flipped."""
    if data.modality == "lm":
        raise KdxError(f"dataset '{data.name}' is a language-model corpus: it has no class labels to make noisy or "
                       "train subset to draw here; drop data.train_size and data.label_noise")
    n = len(data.x_train)
    if train_size is not None and train_size > n:
        raise KdxError(f"data.train_size={train_size} but dataset '{data.name}' has {n} train inputs; give at most {n}")
    rng = np.random.default_rng(noise_seed)
    index = np.sort(rng.permutation(n)[:train_size]) if train_size is not None else np.arange(n)
    clean = data.y_train[torch.from_numpy(index)].numpy()
    noisy = clean.copy()
    k = len(data.classes)
    if label_noise:
        flip = rng.permutation(len(index))[:round(label_noise * len(index))]
        noisy[flip] = (clean[flip] + rng.integers(1, k, size=len(flip))) % k  # uniform over the k - 1 others
    idx = torch.from_numpy(index)
    changes = {"x_train": data.x_train[idx], "y_train": torch.from_numpy(noisy)}
    if data.texts.get("train") is not None and len(data.texts["train"]) == n:
        changes["texts"] = {**data.texts, "train": [data.texts["train"][i] for i in index]}
    return dataclasses.replace(data, **changes, train_labels={"train_index": index, "clean": clean, "noisy": noisy})
