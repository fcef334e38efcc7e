"""Token-level operations for text sources, batched on the device: the word dropout and word swap views
(kdx.sampling.view; the teacher sees them too), and random token sequences whose lengths follow the
train set's.

Words are WordPiece words: a token that does not start with '##' starts one (`data.word_start`); the
special tokens ([CLS], [SEP]) stay where they are and padding stays at the end, so every output is
valid ids with a valid mask (ids != pad). Every draw comes from the generator passed in, a function of
(seed, step), so resumed runs draw the same.
"""
from __future__ import annotations

import torch

from kdx.data.base import Dataset
from kdx.registry import VIEWS
from kdx.sampling.view import View, check_probability


def _specials(x: torch.Tensor, data: Dataset) -> torch.Tensor:
    ids = torch.tensor(data.special_ids or [-1], device=x.device)
    return torch.isin(x, ids)


def word_index(x: torch.Tensor, data: Dataset):
    """(mask, special, word index per token): each special token is a word of its own."""
    mask = x != data.pad_id
    special = _specials(x, data) & mask
    starts = (data.word_start.to(x.device)[x] | special) & mask
    widx = (starts.long().cumsum(1) - 1).clamp_min(0)
    return mask, special, widx


def _compact(x: torch.Tensor, keep: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Move the kept tokens to the front in order, pad the rest."""
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    out = x.gather(1, order)
    return out.masked_fill(~keep.gather(1, order), pad_id)


def word_dropout(x: torch.Tensor, g: torch.Generator, data: Dataset, p: float) -> torch.Tensor:
    """Drop each word with probability p (never the special tokens, never every word of a row)."""
    mask, special, widx = word_index(x, data)
    drop_word = torch.rand(x.shape, generator=g, device=g.device).to(x.device) < p
    drop = drop_word.gather(1, widx) & mask & ~special
    content = mask & ~special
    emptied = (content & ~drop).sum(1) == 0
    drop[emptied] = False
    return _compact(x, mask & ~drop, data.pad_id)


def word_swap(x: torch.Tensor, g: torch.Generator, data: Dataset, p: float) -> torch.Tensor:
    """Move each word past its right neighbour with probability p (local shuffling; specials stay put)."""
    mask, special, widx = word_index(x, data)
    n, length = x.shape
    move = (torch.rand(x.shape, generator=g, device=g.device).to(x.device) < p).float() * 1.5
    word_key = torch.arange(length, device=x.device).float().expand(n, length) + move
    key = word_key.gather(1, widx) + torch.arange(length, device=x.device).float() / (2 * length + 2)
    pos = torch.arange(length, device=x.device).expand(n, length)
    first = special & (pos == 0)
    key = torch.where(first, torch.full_like(key, -1.0), key)  # [CLS] first
    key = torch.where(special & ~first, key.new_full((), 3.0 * length) + pos, key)  # [SEP] after every word
    key = torch.where(mask, key, key.new_full((), 10.0 * length) + pos)  # padding last, in place
    return x.gather(1, torch.sort(key, dim=1, stable=True).indices)


@VIEWS["text"].register("word_dropout", context=("data",))
def word_dropout_view(data: Dataset, *, p: float) -> View:
    """Word dropout: each word dropped with probability p (specials kept, never every word of a row)."""
    check_probability(p)
    return View(lambda x, y, g: (word_dropout(x, g, data, p), y))


@VIEWS["text"].register("word_swap", context=("data",))
def word_swap_view(data: Dataset, *, p: float) -> View:
    """Word swap: each word moved past its right neighbour with probability p (specials stay put)."""
    check_probability(p)
    return View(lambda x, y, g: (word_swap(x, g, data, p), y))


def random_sequences(data: Dataset, n: int, g: torch.Generator, device, kind: str = "uniform") -> torch.Tensor:
    """n token sequences shaped like the train set's: a length drawn from its lengths, the template
    tokens (first and last, e.g. [CLS] and [SEP]) in place, the content drawn uniformly from the
    non-special vocabulary or from the train set's unigram frequencies."""
    length = data.max_length
    lengths = data.lengths.to(device)[torch.randint(len(data.lengths), (n,), generator=g, device=device)]
    cand = data.candidate_ids().to(device)
    if kind == "unigram":
        w = data.token_counts.to(device)[cand].double() + 1e-12
        draw = cand[torch.multinomial(w / w.sum(), n * length, replacement=True, generator=g).view(n, length)]
    else:
        draw = cand[torch.randint(len(cand), (n, length), generator=g, device=device)]
    bos, eos = template(data)
    pos = torch.arange(length, device=device).expand(n, length)
    first = 1 if bos is not None else 0
    last = lengths.view(-1, 1) - (1 if eos is not None else 0)
    x = torch.where((pos >= first) & (pos < last), draw, torch.full_like(draw, data.pad_id))
    if bos is not None:
        x[:, 0] = bos
    if eos is not None:
        x.scatter_(1, (lengths - 1).clamp_min(first).view(-1, 1), eos)
    return x


def template(data: Dataset) -> tuple[int | None, int | None]:
    """The special tokens every train row starts and ends with ([CLS], [SEP] for BERT-style encodings), if any."""
    x = data.x_train[: min(len(data.x_train), 256)]
    specials = set(data.special_ids)
    first = {int(t) for t in x[:, 0]}
    last_pos = ((x != data.pad_id).sum(1) - 1).clamp_min(0)
    last = {int(t) for t in x.gather(1, last_pos.view(-1, 1)).flatten()}
    bos = first.pop() if len(first) == 1 and first <= specials else None
    eos = last.pop() if len(last) == 1 and last <= specials else None
    return bos, eos
