"""Dataset text for causal LMs: the corpus's windows, teacher-forced, every real position counted
(supervised / word-level KD; with the `onehot` loss, how LM teachers are trained)."""
from __future__ import annotations

import torch

from kdx.data.base import Dataset
from kdx.data.lm_text import lm_targets
from kdx.registry import SOURCES
from kdx.sampling.base import Batch, PoolSource, Source


def lm_batch(x: torch.Tensor, data: Dataset, mask: torch.Tensor | None = None) -> Batch:
    """A Batch of token sequences: next-token labels and the counted positions (given, e.g. a sample's
    completion, or every real next token)."""
    y, real = lm_targets(x, data.pad_id, data.tokenizer.eos_id if data.tokenizer else None)
    return Batch(x, y, None, mask=real if mask is None else mask)


class CorpusSource(PoolSource):
    """The train windows in per-epoch permutations; labels are the next tokens, the mask their validity.
    Teacher logits are never cached for a whole corpus ((N, L, V) floats): the loop runs the teacher."""

    def __init__(self, data: Dataset, seed: int):
        data.require("lm", "source 'corpus'", "source train (text classification data)")
        super().__init__(data, seed, data.x_train, None)
        self.has_labels = True  # the next tokens
        self.tokens = {"input_tokens": 0, "trained_tokens": 0}

    def setup(self, device, teacher_logits_fn, teacher=None, student=None) -> None:
        Source.setup(self, device, None)
        self.x = self.x.to(device)

    def batch(self, step: int, n: int) -> Batch:
        batch = lm_batch(self.x[self.indices(n)], self.data)
        self.tokens["input_tokens"] += batch.x.numel()
        self.tokens["trained_tokens"] += int(batch.mask.sum())
        return batch

    def state_dict(self) -> dict:
        return {**super().state_dict(), "tokens": dict(self.tokens)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.tokens = dict(state["tokens"])

    def accounting(self) -> dict:
        """Tokens fed (the teacher's forward tokens, when the loss needs it) and next-token targets trained on."""
        return dict(self.tokens)


@SOURCES.register(context=("data", "seed"))
def corpus(data: Dataset, seed: int) -> CorpusSource:
    """LM corpus windows, teacher-forced: every real position counts (supervised KD)."""
    return CorpusSource(data, seed)
