"""Masked-LM replacement views in the style of TinyBERT's data augmentation (Jiao et al., 2020).

A small masked LM (`BertForMaskedLM`, from scratch, sized by `MLM_DEFAULTS` or the source's `mlm:`
settings) is trained ONCE on the train set's token ids and cached in mlm/ under the config's
`cache_dir` (else $KDX_CACHE, as teachers are) by a hash of those ids and the settings (written
atomically; a lock makes concurrent workers wait for one training instead of each training their
own). The `mlm_replace` view (kdx.sampling.view) then selects each word (WordPiece word, as in
`kdx.sampling.text`) with probability p, masks all its tokens, runs the MLM once on the masked batch
(on the device) and replaces each masked token with one of the MLM's top-k candidates at that
position, drawn uniformly (TinyBERT: k=15). Candidates never include padding or special tokens, and
keep a token's role: a word-start token is replaced by a word start, a '##' continuation by a
continuation, so word boundaries survive. Lengths, specials and padding stay where they are: valid
ids, the same attention mask. Every draw comes from the generator passed in (a function of (seed,
step)) and the MLM runs in eval mode, so a resumed run draws the same views.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import time
from pathlib import Path

import torch

from kdx.data.base import Dataset
from kdx.data.text import cache_dir as cache_folder
from kdx.errors import KdxError
from kdx.io import save_torch, write_json
from kdx.registry import VIEWS
from kdx.sampling.text import word_index
from kdx.sampling.view import View, check_probability

MLM_FORMAT = 1  # bump when the MLM's training recipe changes meaning
MLM_DEFAULTS = {"layers": 2, "hidden": 128, "heads": 2, "intermediate": 512, "epochs": 2.0, "batch_size": 64,
                "lr": 0.001, "weight_decay": 0.01, "mask_prob": 0.15, "seed": 0, "max_samples": 0}


def mlm_settings(settings: dict | None) -> dict:
    settings = dict(settings or {})
    unknown = set(settings) - set(MLM_DEFAULTS)
    if unknown:
        raise KdxError(f"mlm settings: unknown {', '.join(sorted(unknown))}; valid: {', '.join(MLM_DEFAULTS)}")
    return {**MLM_DEFAULTS, **settings}


def mask_id(data: Dataset) -> int:
    tok = getattr(data.tokenizer, "tok", None)
    mid = getattr(tok, "mask_token_id", None)
    if mid is None:
        raise KdxError(f"augment 'mlm_replace' needs a tokenizer with a mask token; dataset '{data.name}' has none")
    return int(mid)


def mlm_key(data: Dataset, settings: dict) -> str:
    h = hashlib.sha256(json.dumps({"s": settings, "format": MLM_FORMAT, "vocab": data.vocab_size,
                                   "pad": data.pad_id, "specials": data.special_ids}, sort_keys=True).encode())
    h.update(data.x_train.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def mlm_path(data: Dataset, settings: dict | None = None, *, cache_dir: Path | None = None) -> Path:
    """Where the MLM is cached: under the run's cache folder (`cache_dir` in the config), else $KDX_CACHE."""
    s = mlm_settings(settings)
    return cache_folder(cache_dir) / "mlm" / f"bert-{mlm_key(data, s)}" / "mlm.pt"


def build_mlm(data: Dataset, s: dict):
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(vocab_size=data.vocab_size, hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                     num_attention_heads=s["heads"], intermediate_size=s["intermediate"],
                     max_position_embeddings=max(data.max_length, 8), pad_token_id=data.pad_id)
    torch.manual_seed(s["seed"])
    return BertForMaskedLM(cfg)


def masked_logits(mlm, inp: torch.Tensor, attn: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """The MLM's vocabulary logits at the selected positions only (M, V): the head runs on those alone."""
    h = mlm.bert(input_ids=inp, attention_mask=attn.long()).last_hidden_state
    return mlm.cls(h[sel])


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def train_mlm(data: Dataset, s: dict, device) -> tuple[object, dict]:
    """Standard BERT masking (mask_prob of content tokens; 80% [MASK], 10% random, 10% kept), AdamW, cosine."""
    mlm = build_mlm(data, s).to(device).train()
    mid, cand = mask_id(data), data.candidate_ids().to(device)
    x_all = data.x_train
    if s["max_samples"]:
        x_all = x_all[: int(s["max_samples"])]
    x_all = x_all.to(device)
    specials = torch.tensor([data.pad_id, *data.special_ids], device=device)
    g = torch.Generator(device=device).manual_seed(int(s["seed"]))
    bs = int(s["batch_size"])
    steps = max(1, math.ceil(len(x_all) * float(s["epochs"]) / bs))
    opt = torch.optim.AdamW(mlm.parameters(), lr=s["lr"], weight_decay=s["weight_decay"])
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: (i + 1) / warm if i < warm else 0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, steps - warm))))
    t0, losses = time.time(), []
    for step in range(steps):
        idx = torch.randint(len(x_all), (bs,), generator=g, device=device)
        x = x_all[idx]
        content = ~torch.isin(x, specials)
        sel = (torch.rand(x.shape, generator=g, device=device) < s["mask_prob"]) & content
        if not sel.any():
            continue
        r = torch.rand(x.shape, generator=g, device=device)
        rnd = cand[torch.randint(len(cand), x.shape, generator=g, device=device)]
        inp = torch.where(sel & (r < 0.8), torch.full_like(x, mid), torch.where(sel & (r < 0.9), rnd, x))
        logits = masked_logits(mlm, inp, x != data.pad_id, sel)
        loss = torch.nn.functional.cross_entropy(logits, x[sel])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    stats = {"steps": steps, "seconds": time.time() - t0, "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:]))}
    return mlm.eval(), stats


def get_mlm(data: Dataset, settings: dict | None = None, device="cpu", *, cache_dir: Path | None = None):
    """The cached MLM for this train set and settings (trained here once, under a lock, if missing)."""
    s = mlm_settings(settings)
    mask_id(data)
    path = mlm_path(data, s, cache_dir=cache_dir)
    with _lock(path.parent.with_suffix(".lock")):
        if not path.exists():
            mlm, stats = train_mlm(data, s, torch.device("cpu") if str(device) == "cpu" else device)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path.parent / "recipe.json", {"settings": s, "format": MLM_FORMAT, "train": stats})
            save_torch(path, {"model": {k: v.cpu() for k, v in mlm.state_dict().items()}, "settings": s, "train": stats})
    mlm = build_mlm(data, s)
    mlm.load_state_dict(torch.load(path, map_location="cpu")["model"])
    return mlm.to(device).eval().requires_grad_(False)


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
