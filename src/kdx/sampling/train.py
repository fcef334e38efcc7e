"""The teacher's own training set."""
from __future__ import annotations

from pathlib import Path

from kdx.data.base import Dataset
from kdx.registry import SOURCES
from kdx.sampling.base import PoolSource
from kdx.sampling.view import resolve_view


@SOURCES.register(context=("data", "seed", "cache_dir"))
def train(data: Dataset, seed: int, *, augment: str = "none", mixup_alpha: float = 1.0, p: float = 0.1,
          mlm: dict = {}, top_k: int = 15, cache_dir: Path | None = None) -> PoolSource:
    """The teacher's train set through the `augment` view (none, or one of the views of the data's modality).

    Teacher and student see the same view. Image and signal views: flip_crop, mixup and cutmix (weight
    Beta(mixup_alpha, mixup_alpha)); text views: word_dropout and word_swap (each word with probability p)
    and mlm_replace (each word with probability p replaced by one of the top_k candidates of a masked LM,
    TinyBERT-style, sized by `mlm` (kdx.sampling.mlm.MLM_DEFAULTS), trained once and cached). Each view
    reads only its own settings."""
    view = resolve_view(data, augment, cache_dir=cache_dir, mixup_alpha=mixup_alpha, p=p, mlm=mlm, top_k=top_k)
    return PoolSource(data, seed, data.x_train, data.y_train, view)
