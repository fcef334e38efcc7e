"""A downstream set: the inputs the student will serve, maybe of another domain; labels never used."""
from __future__ import annotations

from typing import Any

from kdx.data import load_dataset
from kdx.data.base import Dataset
from kdx.errors import KdxError
from kdx.registry import SOURCES
from kdx.sampling.base import PoolSource


@SOURCES.register(context=("data", "seed"))
def downstream(data: Dataset, seed: int, dataset: str = "fashion_mnist_shifted", split: str = "train",
               args: dict[str, Any] = {}, augment: str = "none") -> PoolSource:
    """Unlabeled inputs from any registered dataset and split (e.g. a domain shift or a class subset)."""
    other = load_dataset({"name": dataset, **args}, f"source.dataset={dataset}")
    if split not in ("train", "test"):
        raise KdxError(f"source 'downstream': split must be train or test, got '{split}'")
    x = other.x_train if split == "train" else other.x_test
    if tuple(x.shape[1:]) != data.input_shape:
        raise KdxError(f"source 'downstream': dataset '{dataset}' has inputs {tuple(x.shape[1:])}, "
                       f"but the teacher takes {data.input_shape}")
    return PoolSource(data, seed, x, None, augment)
