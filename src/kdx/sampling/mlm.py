"""Masked-LM replacement views in the style of TinyBERT's data augmentation (Jiao et al., 2020).

A small masked LM (kdx.models.mlm: sized by `MLM_DEFAULTS` or the source's `mlm:` settings) is trained
ONCE on the train set's token ids and cached. The `mlm_replace` view (kdx.sampling.view) then selects
each word (WordPiece word, as in `kdx.sampling.text`) with probability p, masks all its tokens, runs the MLM once on the masked batch
(on the device) and replaces each masked token with one of the MLM's top-k candidates at that
position, drawn uniformly (TinyBERT: k=15). Candidates never include padding or special tokens, and
keep a token's role: a word-start token is replaced by a word start, a '##' continuation by a
continuation, so word boundaries survive. Lengths, specials and padding stay where they are: valid
ids, the same attention mask. Every draw comes from the generator passed in (a function of (seed,
step)) and the MLM runs in eval mode, so a resumed run draws the same views.
"""
from __future__ import annotations

from pathlib import Path

import torch

from kdx.data.base import Dataset
from kdx.errors import KdxError
from kdx.models.mlm import get_mlm, mask_id, masked_logits, mlm_settings
from kdx.registry import VIEWS
from kdx.sampling.text import word_index
from kdx.sampling.view import View, check_probability


def mlm_selection(x: torch.Tensor, g: torch.Generator, data: Dataset, p: float) -> torch.Tensor:
    """Which tokens a view replaces: every token of each word selected with probability p (never specials)."""
    mask, special, widx = word_index(x, data)
    pick = torch.rand(x.shape, generator=g, device=g.device).to(x.device) < p
    return pick.gather(1, widx) & mask & ~special


def allowed_ids(data: Dataset, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(word starts, continuations) among the candidate ids, as (V,) bool masks."""
    ok = torch.zeros(data.vocab_size, dtype=torch.bool)
    ok[data.candidate_ids()] = True
    ws = data.word_start.cpu()
    return (ok & ws).to(device), (ok & ~ws).to(device)


def mlm_replace(x: torch.Tensor, g: torch.Generator, data: Dataset, p: float, mlm, top_k: int = 15,
                return_selection: bool = False):
    """Replace the selected words' tokens with uniform draws from the MLM's top-k candidates (see module doc)."""
    sel = mlm_selection(x, g, data, p)
    choice = torch.randint(top_k, x.shape, generator=g, device=g.device).to(x.device)
    out = x.clone()
    if sel.any():
        logits = candidate_logits(mlm, x, sel, data)
        top = logits.topk(top_k, dim=1).indices
        out[sel] = top.gather(1, choice[sel].view(-1, 1)).squeeze(1)
    return (out, sel) if return_selection else out


@torch.no_grad()
def candidate_logits(mlm, x: torch.Tensor, sel: torch.Tensor, data: Dataset) -> torch.Tensor:
    """The MLM's logits at the selected positions of x masked there, with ids a replacement may not take at -inf."""
    inp = x.masked_fill(sel, mask_id(data))
    logits = masked_logits(mlm, inp, x != data.pad_id, sel).float()
    starts, conts = allowed_ids(data, x.device)
    was_start = data.word_start.to(x.device)[x[sel]]
    allowed = torch.where(was_start.view(-1, 1), starts.view(1, -1), conts.view(1, -1))
    return logits.masked_fill(~allowed, float("-inf"))


class MLMReplaceView(View):
    """The mlm_replace view: its MLM is loaded (trained once and cached, if missing) at setup."""

    def __init__(self, data: Dataset, *, p: float, settings: dict, top_k: int, cache_dir: Path | None):
        super().__init__()
        self.data, self.p, self.settings, self.top_k, self.cache_dir = data, p, settings, top_k, cache_dir
        self.mlm = None

    def setup(self, device) -> None:
        if self.mlm is None:
            self.mlm = get_mlm(self.data, self.settings, device, cache_dir=self.cache_dir)

    def __call__(self, x, y, g):
        if self.mlm is None:  # a batch drawn before setup: the MLM on the inputs' device
            self.setup(x.device)
        return mlm_replace(x, g, self.data, self.p, self.mlm, self.top_k), y


@VIEWS["text"].register("mlm_replace", context=("data", "cache_dir"))
def mlm_replace_view(data: Dataset, *, p: float, mlm: dict, top_k: int, cache_dir: Path | None = None) -> View:
    """Masked-LM replacement (TinyBERT): each word with probability p replaced by one of the MLM's top_k candidates."""
    check_probability(p)
    mlm_settings(mlm)  # refuse unknown settings at build time, before any training
    mask_id(data)
    if not 1 <= top_k <= len(data.candidate_ids()):
        raise KdxError(f"source top_k={top_k} must be in 1..{len(data.candidate_ids())}")
    return MLMReplaceView(data, p=p, settings=mlm, top_k=top_k, cache_dir=cache_dir)
