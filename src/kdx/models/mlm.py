"""The masked LM: a small `BertForMaskedLM` (from scratch, sized by `MLM_DEFAULTS` or the caller's settings),
trained ONCE on a token corpus of a text Dataset and cached in mlm/ under the config's `cache_dir` (else
$KDX_CACHE, as teachers are) by a hash of that corpus's ids and the settings (written atomically; a lock
makes concurrent workers wait for one training instead of each training their own).

Two users: the `mlm_replace` view (kdx.sampling.mlm, TinyBERT's augmentation) on the train set's ids, and
the `bert` model's `pretrain` (kdx.models.text): a teacher or student whose encoder starts from an MLM
pretrained on the dataset's `unlabeled` texts (for debian-descriptions: every description of a source
outside the test split, kdx.data.debian), the recipe of BERT itself at a size this CPU trains.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from kdx.data.base import Dataset
from kdx.data.text import cache_dir as cache_folder
from kdx.errors import KdxError
from kdx.io import save_torch, write_json

MLM_FORMAT = 2  # bump when the MLM's training recipe changes meaning (2: length-grouped batches, pads trimmed)
MLM_DEFAULTS = {"layers": 2, "hidden": 128, "heads": 2, "intermediate": 512, "epochs": 2.0, "batch_size": 64,
                "lr": 0.001, "weight_decay": 0.01, "mask_prob": 0.15, "seed": 0, "max_samples": 0, "corpus": "train"}
MLM_SIZES = ("layers", "hidden", "heads", "intermediate")
# `corpus`: whose token ids the MLM learns: the train inputs, or the dataset's unlabeled texts (extra["unlabeled"])
MLM_CORPORA = ("train", "unlabeled")


def mlm_settings(settings: dict | None) -> dict:
    settings = dict(settings or {})
    unknown = set(settings) - set(MLM_DEFAULTS)
    if unknown:
        raise KdxError(f"mlm settings: unknown {', '.join(sorted(unknown))}; valid: {', '.join(MLM_DEFAULTS)}")
    settings = {**MLM_DEFAULTS, **settings}
    if settings["corpus"] not in MLM_CORPORA:
        raise KdxError(f"mlm settings: corpus={settings['corpus']!r} is not one of {', '.join(MLM_CORPORA)}")
    return settings


def mlm_corpus(data: Dataset, s: dict) -> torch.Tensor:
    """The token ids the MLM is trained on: the train inputs, or the dataset's unlabeled texts."""
    if s["corpus"] == "train":
        return data.x_train
    if "unlabeled" not in data.extra:
        raise KdxError(f"mlm corpus 'unlabeled': dataset '{data.name}' has no unlabeled texts; for debian_descriptions "
                       "rebuild it with `kdx data build debian-descriptions --out DIR` (builds since 2026-12-02 hold "
                       "the `unlabeled` split), or pretrain on corpus: train")
    return data.extra["unlabeled"][0]


def mask_id(data: Dataset) -> int:
    tok = getattr(data.tokenizer, "tok", None)
    mid = getattr(tok, "mask_token_id", None)
    if mid is None:
        raise KdxError(f"augment 'mlm_replace' needs a tokenizer with a mask token; dataset '{data.name}' has none")
    return int(mid)


def mlm_key(data: Dataset, settings: dict) -> str:
    h = hashlib.sha256(json.dumps({"s": settings, "format": MLM_FORMAT, "vocab": data.vocab_size,
                                   "pad": data.pad_id, "specials": data.special_ids}, sort_keys=True).encode())
    h.update(mlm_corpus(data, settings).detach().cpu().contiguous().numpy().tobytes())
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


def used_length(mask: torch.Tensor) -> int:
    """How many leading columns of a right-padded batch hold a token in some row (its attention `mask`):
    dropping the rest changes no BERT output (pads are masked and come last) and costs the batch's longest
    text instead of max_length."""
    used = mask.any(0).nonzero()
    return int(used[-1]) + 1 if len(used) else 1


def trim_padding(x: torch.Tensor, pad_id: int) -> torch.Tensor:
    return x[:, : used_length(x != pad_id)]


def length_grouped_batches(mask: torch.Tensor, batch_size: int, steps: int, g: torch.Generator) -> list[torch.Tensor]:
    """`steps` batches of row indices, each of texts of similar length (so trimming pads pays: the corpus's
    median description is far below max_length), in random order: per epoch, a random permutation is cut into
    chunks of 50 batches, each chunk sorted by length and cut into batches, and all batches shuffled (the
    group-by-length sampler of transformers' Trainer)."""
    lengths, n, out, chunk = mask.sum(1), len(mask), [], 50 * batch_size
    while len(out) < steps:
        perm = torch.randperm(n, generator=g, device=mask.device)
        epoch = []
        for c in perm.split(chunk):
            c = c[torch.argsort(lengths[c], descending=True, stable=True)]
            epoch += list(c.split(batch_size))
        order = torch.randperm(len(epoch), generator=g, device=mask.device)
        out += [epoch[i] for i in order.tolist()]
    return out[:steps]


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
    x_all = mlm_corpus(data, s)
    if s["max_samples"]:
        x_all = x_all[: int(s["max_samples"])]
    x_all = x_all.to(device)
    specials = torch.tensor([data.pad_id, *data.special_ids], device=device)
    g = torch.Generator(device=device).manual_seed(int(s["seed"]))
    bs = int(s["batch_size"])
    steps = max(1, math.ceil(len(x_all) * float(s["epochs"]) / bs))
    batches = length_grouped_batches(x_all != data.pad_id, bs, steps, g)
    opt = torch.optim.AdamW(mlm.parameters(), lr=s["lr"], weight_decay=s["weight_decay"])
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: (i + 1) / warm if i < warm else 0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, steps - warm))))
    t0, losses = time.time(), []
    for idx in tqdm(batches, desc=f"masked LM ({steps} steps)", disable=not sys.stderr.isatty(), leave=False):
        x = trim_padding(x_all[idx], data.pad_id)
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


