"""RANDOM of Bucilă et al. 2006: every attribute drawn independently from its marginal, i.e. from the value
that attribute has in a uniformly drawn train row (a different row per attribute): the marginals kept, every
dependence between attributes lost."""
from __future__ import annotations

import torch

from kdx.data.base import Dataset
from kdx.registry import SOURCES
from kdx.sampling.base import Batch, Source, step_generator


class MarginalsSource(Source):
    def __init__(self, data: Dataset, seed: int):
        super().__init__(data, seed)
        data.require("tabular", "source 'marginals'", "train, noise, downstream or mixture")
        self.x = data.x_train

    def setup(self, device, teacher_logits_fn, teacher=None, student=None) -> None:
        super().setup(device, teacher_logits_fn)
        self.x = self.data.x_train.float().to(device)

    def batch(self, step: int, n: int) -> Batch:
        g = step_generator(self.seed, step, self.device, "marginals")
        rows = torch.randint(len(self.x), (n, self.x.shape[1]), generator=g, device=self.device)
        return Batch(torch.gather(self.x, 0, rows))

    def skip(self, step: int, n: int) -> None:
        pass  # each draw is a function of (seed, step) alone


@SOURCES.register(context=("data", "seed"))
def marginals(data: Dataset, seed: int) -> MarginalsSource:
    """Tables: each attribute independently from its train marginal (Bucilă et al.'s RANDOM)."""
    return MarginalsSource(data, seed)
