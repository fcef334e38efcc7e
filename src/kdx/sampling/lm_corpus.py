"""Dataset text for causal LMs: the corpus's windows, teacher-forced, every real position counted
(supervised / word-level KD; with the `onehot` loss, how LM teachers are trained).

With top_k > 0 the teacher runs once over the corpus and its top-k log-probabilities per position are
cached on disk (DistillKit's offline format; the rest of the mass in one bucket): no teacher forward
during training. The cache's error, KL(full || cached) per token on the first windows, is printed
and kept in the accounting (`top_k_kl_error`)."""
from __future__ import annotations

import sys

import torch

from kdx.data.base import Dataset
from kdx.data.lm_text import lm_targets
from kdx.errors import KdxError
from kdx.models.gpt import dense_from_top_k
from kdx.registry import SOURCES
from kdx.sampling.base import Batch, PoolSource, Source


def lm_batch(x: torch.Tensor, data: Dataset, mask: torch.Tensor | None = None) -> Batch:
    """A Batch of token sequences: next-token labels and the counted positions (given, e.g. a sample's
    completion, or every real next token)."""
    y, real = lm_targets(x, data.pad_id, data.tokenizer.eos_id if data.tokenizer else None)
    return Batch(x, y, None, mask=real if mask is None else mask)


class CorpusSource(PoolSource):
    """The train windows in per-epoch permutations; labels are the next tokens, the mask their validity.
    Full teacher logits are never cached for a whole corpus ((N, L, V) floats): the loop runs the teacher,
    or with top_k the batch carries the cached top-k made dense."""

    def __init__(self, data: Dataset, seed: int, top_k: int = 0, windows: torch.Tensor | None = None):
        data.require("lm", "source 'corpus'", "source train (text classification data)")
        if not 0 <= top_k <= data.vocab_size:
            raise KdxError(f"source 'corpus': top_k={top_k} must be in 0..{data.vocab_size} (0: no cache, the teacher "
                           "runs on every batch)")
        super().__init__(data, seed, data.x_train if windows is None else windows, None)
        self.has_labels = True  # the next tokens
        self.top_k, self.cached = top_k, None
        self.tokens = {"input_tokens": 0, "trained_tokens": 0}

    def setup(self, device, teacher_logits_fn, teacher=None, student=None) -> None:
        Source.setup(self, device, None)
        self.x = self.x.to(device)
        if self.top_k and teacher_logits_fn is not None and self.cached is None:
            values, ids = teacher_logits_fn.top_k(self.x.cpu(), self.top_k)
            self.cached = (values.to(device), ids.to(device))
            self.top_k_error = self.cache_error(teacher)
            print(f"source corpus: teacher top-{self.top_k} cache, KL(full || cached) {self.top_k_error:.3g} "
                  f"nats per token (first {min(32, len(self.x))} windows)", file=sys.stderr)

    @torch.no_grad()
    def cache_error(self, teacher: torch.nn.Module, n: int = 32) -> float:
        """KL(teacher || its top-k cache made dense), per counted token of the first n windows."""
        batch = lm_batch(self.x[:n], self.data)
        full = torch.log_softmax(teacher(batch.x).double(), -1)
        cached = dense_from_top_k(self.cached[0][:n], self.cached[1][:n], full.shape[-1]).double()
        kl = (full.exp() * (full - cached)).sum(-1)
        return float(kl[batch.mask].mean())

    def batch(self, step: int, n: int) -> Batch:
        idx = self.indices(n)
        batch = lm_batch(self.x[idx], self.data)
        if self.cached is not None:  # log-probabilities: the losses' log_softmax leaves them as they are
            batch.teacher_logits = dense_from_top_k(self.cached[0][idx], self.cached[1][idx], self.data.vocab_size)
        self.tokens["input_tokens"] += batch.x.numel()
        self.tokens["trained_tokens"] += int(batch.mask.sum())
        return batch

    def state_dict(self) -> dict:
        return {**super().state_dict(), "tokens": dict(self.tokens)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.tokens = dict(state["tokens"])

    def accounting(self) -> dict:
        """Tokens fed (the teacher's forward tokens, when the loss needs it and there is no top-k cache) and
        next-token targets trained on; with the cache, its error."""
        return {**self.tokens, **({"top_k_kl_error": self.top_k_error} if self.cached is not None else {})}


@SOURCES.register(context=("data", "seed"))
def corpus(data: Dataset, seed: int, top_k: int = 0) -> CorpusSource:
    """LM corpus windows, teacher-forced: every real position counts (supervised KD); top_k: cached teacher top-k."""
    return CorpusSource(data, seed, top_k)
