"""What a view is: an augmentation of a pool's inputs, resolved once, when its source is built, from
the `augment` name and the settings of the source config (`mixup_alpha`, `p`, `mlm`, `top_k`).

Views are registered per modality in `kdx.registry.VIEWS` (image and signal views in
kdx.sampling.augment, text views in kdx.sampling.text and kdx.sampling.mlm; `kdx list` shows them).
A registered view takes the dataset and the settings it reads, keyword-only and without defaults
(the defaults are the source's: its signature is the config), and returns a `View`: a batched,
device-side map (x, y, generator) -> (x, y) of model inputs and labels. The teacher sees the same
view as the student (function matching); every draw comes from the generator, a function of
(seed, step), so a resumed run sees the same views.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from kdx.data.base import Dataset
from kdx.errors import KdxError
from kdx.registry import VIEWS

NO_VIEW = "none"  # the stored inputs as they are (the only pool whose teacher logits can be cached)


class View:
    """A resolved augmentation: `view(x, y, g)` -> (x, y); y may be None (unlabeled) or become soft labels."""

    name = ""  # the registered name, set by resolve_view

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor | None, torch.Generator],
                                    tuple[torch.Tensor, torch.Tensor | None]] | None = None):
        self.fn = fn

    def setup(self, device: torch.device) -> None:
        """Load what the view runs onto the device (mlm_replace: its masked LM); most views need nothing."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None, g: torch.Generator):
        return self.fn(x, y, g)


def resolve_view(data: Dataset, augment: str, *, cache_dir: Path | None = None, **settings) -> View | None:
    """The view `augment` names among the data's modality's views, built with the settings it reads
    (of `settings`: all of the source's), or None for `none`."""
    if augment == NO_VIEW:
        return None
    registry = VIEWS.get(data.modality)  # a modality may have no views at all (lm)
    if registry is None or augment not in registry.names():
        valid = ", ".join([NO_VIEW, *(registry.names() if registry else [])])
        other = [m for m, r in VIEWS.items() if augment in r.names()]
        cause = f"does not apply to {data.modality} data" if other else "is unknown"
        raise KdxError(f"source augment '{augment}' {cause}; valid for dataset '{data.name}': {valid}"
                       + (f" ('{augment}' is for {' and '.join(other)} data)" if other else ""))
    entry = registry.get(augment)
    context = {"data": data, "cache_dir": cache_dir}
    view = entry.fn(**{k: context[k] for k in entry.context}, **{k: settings[k] for k in entry.config_params()})
    view.name = augment
    return view


def check_probability(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise KdxError(f"source augment probability p={p} must be in [0, 1]")
