"""Dataset text for causal LMs: the corpus's windows, teacher-forced, every real position counted
(supervised / word-level KD; with the `onehot` loss, how LM teachers are trained)."""
from __future__ import annotations

from kdx.data.base import Dataset
from kdx.data.lm_text import lm_targets
from kdx.registry import SOURCES
from kdx.sampling.base import Batch, PoolSource, Source


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
        x = self.x[self.indices(n)]
        y, mask = lm_targets(x, self.data.pad_id, self.data.tokenizer.eos_id if self.data.tokenizer else None)
        self.tokens["input_tokens"] += x.numel()
        self.tokens["trained_tokens"] += int(mask.sum())
        return Batch(x, y, None, mask=mask)

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
