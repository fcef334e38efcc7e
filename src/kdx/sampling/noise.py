"""The whole input space: uniform over the train set's per-channel box, or moment-matched Gaussian."""
from __future__ import annotations

import torch

from kdx.data.base import Dataset
from kdx.errors import KdxError
from kdx.registry import SOURCES
from kdx.sampling.base import Batch, Source, step_generator


class NoiseSource(Source):
    def __init__(self, data: Dataset, seed: int, kind: str, clip: bool):
        super().__init__(data, seed)
        if kind not in ("uniform", "gaussian"):
            raise KdxError(f"source 'noise': kind must be uniform or gaussian, got '{kind}'")
        self.kind, self.clip = kind, clip

    def batch(self, step: int, n: int) -> Batch:
        d, g = self.data, step_generator(self.seed, step, self.device, "noise")
        if self.kind == "uniform":
            return Batch(d.uniform_in_box(n, g, self.device))
        x = d.channel_view(d.mean).to(self.device) + d.channel_view(d.std).to(self.device) * torch.randn(
            (n, *d.input_shape), generator=g, device=self.device)
        return Batch(d.clip_to_box(x) if self.clip else x)

    def skip(self, step: int, n: int) -> None:
        pass  # each draw is a function of (seed, step) alone: nothing to advance


@SOURCES.register(context=("data", "seed"))
def noise(data: Dataset, seed: int, kind: str = "uniform", clip: bool = True) -> NoiseSource:
    """Noise over the input space: uniform in the train set's per-channel box, or Gaussian with its mean/std."""
    return NoiseSource(data, seed, kind, clip)
