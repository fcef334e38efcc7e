"""The teacher's own training set."""
from __future__ import annotations

from kdx.data.base import Dataset
from kdx.registry import SOURCES
from kdx.sampling.base import PoolSource


@SOURCES.register(context=("data", "seed"))
def train(data: Dataset, seed: int, augment: str = "none", mixup_alpha: float = 1.0, p: float = 0.1) -> PoolSource:
    """The teacher's train set; augment none|flip_crop|mixup|cutmix (text: word_dropout|word_swap, probability p), same view for teacher and student."""
    return PoolSource(data, seed, data.x_train, data.y_train, augment, mixup_alpha, p)
