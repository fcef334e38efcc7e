"""The whole input space: uniform over the train set's per-channel box, or moment-matched Gaussian;
for text, random token sequences (uniform over the vocabulary, or by the train set's unigram
frequencies) whose lengths follow the train set's."""
from __future__ import annotations

import torch

from kdx.data.base import Dataset
from kdx.errors import KdxError
from kdx.registry import SOURCES
from kdx.sampling.base import Batch, Source, step_generator
from kdx.sampling.lm_corpus import lm_batch
from kdx.sampling.text import random_sequences

KINDS = {"image": ("uniform", "gaussian"), "signal": ("uniform", "gaussian"), "text": ("uniform", "unigram"),
         "lm": ("uniform", "unigram"), "tabular": ("uniform", "gaussian")}


class NoiseSource(Source):
    def __init__(self, data: Dataset, seed: int, kind: str, clip: bool):
        super().__init__(data, seed)
        kinds = KINDS[data.modality]
        if kind not in kinds:
            raise KdxError(f"source 'noise': kind must be {' or '.join(kinds)} for {data.modality} data "
                           f"(dataset '{data.name}'), got '{kind}'")
        self.kind, self.clip = kind, clip
        self.tokens = {"input_tokens": 0, "trained_tokens": 0} if data.modality == "lm" else None  # LM costs

    def batch(self, step: int, n: int) -> Batch:
        d, g = self.data, step_generator(self.seed, step, self.device, "noise")
        if d.is_text:
            return Batch(random_sequences(d, n, g, self.device, self.kind))
        if d.modality == "lm":  # random token windows at the corpus's window lengths, every real position counted
            batch = lm_batch(random_sequences(d, n, g, self.device, self.kind), d)
            self.tokens["input_tokens"] += batch.x.numel()
            self.tokens["trained_tokens"] += int(batch.mask.sum())
            return batch
        if self.kind == "uniform":
            return Batch(d.uniform_in_box(n, g, self.device))
        x = d.channel_view(d.mean).to(self.device) + d.channel_view(d.std).to(self.device) * torch.randn(
            (n, *d.input_shape), generator=g, device=self.device)
        return Batch(d.clip_to_box(x) if self.clip else x)

    def skip(self, step: int, n: int) -> None:
        pass  # each draw is a function of (seed, step) alone: nothing to advance

    def state_dict(self) -> dict:
        return {} if self.tokens is None else {"tokens": dict(self.tokens)}

    def load_state_dict(self, state: dict) -> None:
        if self.tokens is not None:
            self.tokens = dict(state["tokens"])

    def accounting(self) -> dict:
        """LM: tokens fed and next-token targets trained on (like the corpus source's)."""
        return {} if self.tokens is None else dict(self.tokens)


@SOURCES.register(context=("data", "seed"))
def noise(data: Dataset, seed: int, kind: str = "uniform", clip: bool = True) -> NoiseSource:
    """Noise over the input space: uniform in the box or Gaussian (mean/std); text: uniform or unigram token sequences."""
    return NoiseSource(data, seed, kind, clip)
