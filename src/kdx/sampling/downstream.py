"""A downstream set: the inputs the student will serve, maybe of another domain; labels never used."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from kdx.data import load_dataset
from kdx.data.base import Dataset
from kdx.errors import KdxError
from kdx.registry import SOURCES
from kdx.sampling.base import PoolSource
from kdx.sampling.view import resolve_view


@SOURCES.register(context=("data", "seed", "cache_dir"))
def downstream(data: Dataset, seed: int, *, dataset: str = "fashion_mnist_shifted", split: str = "train",
               args: dict[str, Any] = {}, augment: str = "none", mixup_alpha: float = 1.0, p: float = 0.1,
               mlm: dict = {}, top_k: int = 15, cache_dir: Path | None = None) -> PoolSource:
    """Unlabeled inputs from any registered dataset and split (dataset=self: the run's own, split may name its extra sets, e.g. short_train).

    `augment` and its settings as for the `train` source (an mlm_replace MLM is trained on the teacher's train set)."""
    other = data if dataset == "self" else load_dataset({"name": dataset, **args}, f"source.dataset={dataset}")
    splits = ["train", "test", *other.extra]
    if split not in splits:
        raise KdxError(f"source 'downstream': split must be one of {', '.join(splits)} for dataset '{other.name}', got '{split}'")
    if other.modality != data.modality:
        raise KdxError(f"source 'downstream': dataset '{other.name}' has {other.modality} inputs, the teacher takes {data.modality} inputs")
    x = other.x_train if split == "train" else other.x_test if split == "test" else other.extra[split][0]
    if data.is_text and other is not data:  # another corpus: its raw texts, tokenised as the teacher's data
        x = data.encode(other.texts[split])
    if tuple(x.shape[1:]) != data.input_shape:
        raise KdxError(f"source 'downstream': dataset '{dataset}' has inputs {tuple(x.shape[1:])}, "
                       f"but the teacher takes {data.input_shape}")
    view = resolve_view(data, augment, cache_dir=cache_dir, mixup_alpha=mixup_alpha, p=p, mlm=mlm, top_k=top_k)
    return PoolSource(data, seed, x, None, view)
