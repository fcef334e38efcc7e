"""The teacher's own training set."""
from __future__ import annotations

from kdx.data.base import Dataset
from kdx.registry import SOURCES
from kdx.sampling.base import PoolSource


@SOURCES.register(context=("data", "seed"))
def train(data: Dataset, seed: int, augment: str = "none", mixup_alpha: float = 1.0, p: float = 0.1,
          mlm: dict = {}, top_k: int = 15) -> PoolSource:
    """The teacher's train set; augment none|flip_crop|mixup|cutmix (text: word_dropout|word_swap, probability p;
    mlm_replace: each word with probability p replaced by top_k masked-LM candidates, TinyBERT-style, the MLM
    sized by `mlm` (kdx.sampling.mlm.MLM_DEFAULTS), trained once and cached), same view for teacher and student."""
    return PoolSource(data, seed, data.x_train, data.y_train, augment, mixup_alpha, p, mlm, top_k)
