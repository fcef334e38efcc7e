"""Causal language models for the `lm` modality: token ids (N, L) -> next-token logits (N, L, V).

`gpt`: a transformers GPT-2 (or Llama) configured here (layers, width, heads; the vocabulary and the
context from the data), trained by kdx's loop as teacher (next-token cross-entropy: the `onehot`
loss) and as student. `hf_causal_lm`: a user's causal LM from a save_pretrained folder
(AutoModelForCausalLM, local files only), used as it arrives. Teacher and student must give logits
over the same vocabulary: `check_vocabularies` refuses a mismatch before any work, naming both sizes.

`sample` draws completions with the model's KV cache and a torch.Generator (transformers' generate
takes none), so a sample is a function of the weights, the prompts and the generator's seed.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from torch import nn

from kdx.data.base import Dataset
from kdx.data.lm_text import lm_targets
from kdx.errors import KdxError, first_line
from kdx.models.pretrained import files_digest
from kdx.registry import MODELS

ARCHS = ("gpt2", "llama")


class CausalLM(nn.Module):
    """A transformers causal LM under kdx's model contract (right padding needs no attention mask: the
    attention is causal, so no real position sees the padding after it)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    @property
    def vocab_size(self) -> int:
        return int(self.lm.get_output_embeddings().out_features)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        out = self.lm(input_ids=x, output_hidden_states=return_features, use_cache=False)
        return (out.logits, out.hidden_states[-1]) if return_features else out.logits


def _lm_data(data: Dataset, what: str) -> None:
    data.require("lm", what, "a text classifier (bert, bag_of_embeddings, text_cnn) for text data")


@MODELS.register(context=("data",))
def gpt(data: Dataset, n_layer: int = 2, n_embd: int = 64, n_head: int = 2, arch: str = "gpt2",
        vocab_size: int = 0, context: int = 0, dropout: float = 0.0) -> CausalLM:
    """A GPT-2 (or arch=llama) causal LM of n_layer x n_embd; vocabulary and context from the data (0)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    _lm_data(data, "model 'gpt'")
    if arch not in ARCHS:
        raise KdxError(f"model 'gpt': arch must be one of {', '.join(ARCHS)}, got '{arch}'")
    if n_embd % n_head:
        raise KdxError(f"model 'gpt': n_embd={n_embd} must be a multiple of n_head={n_head}")
    vocab = vocab_size or data.vocab_size
    if vocab < data.vocab_size:
        raise KdxError(f"model 'gpt': vocab_size={vocab} is below the data's vocabulary ({data.vocab_size}); "
                       "use 0 (the data's) or a larger size")
    positions = context or data.max_length
    if positions < data.max_length:
        raise KdxError(f"model 'gpt': context={context} is below the data's windows ({data.max_length} tokens); use 0 "
                       "(the data's) or a larger context")
    eos = data.tokenizer.eos_id if getattr(data.tokenizer, "eos_id", None) is not None else None
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                         resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, bos_token_id=eos, eos_token_id=eos)
        return CausalLM(GPT2LMHeadModel(cfg))
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=n_embd, intermediate_size=4 * n_embd, num_hidden_layers=n_layer,
                      num_attention_heads=n_head, num_key_value_heads=n_head, max_position_embeddings=positions,
                      attention_dropout=dropout, pad_token_id=data.pad_id,
                      bos_token_id=eos, eos_token_id=eos)
    return CausalLM(LlamaForCausalLM(cfg))


def _folder(path: str) -> Path:
    d = Path(path).expanduser()
    if not path or not (d / "config.json").is_file():
        raise KdxError(f"model 'hf_causal_lm': {'no path given' if not path else f'{d} has no config.json'}; point "
                       "path at a folder written by model.save_pretrained(DIR) (config.json, model.safetensors), "
                       "and pass its tokenizer as data.tokenizer=DIR")
    return d


def folder_config(path: str, keys: tuple[str, ...]) -> int | None:
    """The first of `keys` in a saved causal LM's config.json (or its text_config), read before loading weights."""
    cfg = json.loads((_folder(path) / "config.json").read_text())
    for c in (cfg, cfg.get("text_config") or {}):
        for k in keys:
            if c.get(k):
                return int(c[k])
    return None


def folder_vocab_size(path: str) -> int:
    """The logits size of a saved causal LM."""
    size = folder_config(path, ("vocab_size",))
    if not size:
        raise KdxError(f"model 'hf_causal_lm': {path}/config.json has no vocab_size")
    return size


@MODELS.register(context=("data",))
def hf_causal_lm(data: Dataset, path: str = "") -> CausalLM:
    """A user's causal LM from a save_pretrained folder (AutoModelForCausalLM, local files only), used as it arrives."""
    from transformers import AutoModelForCausalLM

    _lm_data(data, "model 'hf_causal_lm'")
    d = _folder(path)
    try:
        lm = AutoModelForCausalLM.from_pretrained(str(d), local_files_only=True, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError ... for bad folders
        raise KdxError(f"model 'hf_causal_lm': cannot load {d}: {type(e).__name__}: {first_line(e)}") from None
    model = CausalLM(lm)
    model.arrives_trained = True  # a teacher used as is, never trained here
    model.weights_digest = files_digest([f for f in d.iterdir() if f.is_file()])
    return model


def model_vocab_size(spec: dict, data: Dataset) -> int:
    """The logits size a model spec will have on this data, without building it."""
    if spec.get("name") == "hf_causal_lm":
        return folder_vocab_size(spec.get("path", ""))
    if spec.get("name") == "gpt":
        return int(spec.get("vocab_size") or data.vocab_size)
    raise KdxError(f"model '{spec.get('name')}' is not a causal LM; LM data (dataset '{data.name}') needs "
                   "teacher.model and student.model from: gpt, hf_causal_lm")


def check_vocabularies(teacher_spec: dict, student_spec: dict, data: Dataset) -> None:
    """Teacher and student must predict over one vocabulary that holds the data's ids: refused at startup."""
    t, s = model_vocab_size(teacher_spec, data), model_vocab_size(student_spec, data)
    if t != s:
        raise KdxError(f"teacher and student vocabularies differ: the teacher predicts over {t} tokens, the student "
                       f"over {s}; token-level distillation compares them position by position. Give both the same "
                       f"tokenizer and size (e.g. student.model.vocab_size={t}, with data.tokenizer set to the "
                       "teacher's folder)")
    if t < data.vocab_size:
        raise KdxError(f"the models predict over {t} tokens but the data's tokenizer has {data.vocab_size}; tokenize "
                       "with the models' own tokenizer (data.tokenizer=the teacher's folder)")
    for role, spec in (("teacher", teacher_spec), ("student", student_spec)):
        if spec.get("name") == "hf_causal_lm":
            positions = folder_config(spec.get("path", ""), ("n_positions", "max_position_embeddings"))
            if positions is not None and positions < data.max_length:
                raise KdxError(f"{role}.model: {spec.get('path')} reads at most {positions} positions, the data's "
                               f"windows are {data.max_length} tokens; set data.context={positions} or less")


def _cached_step(lm: nn.Module, ids: torch.Tensor, past):
    """One forward with the KV cache: (the cache, the last position's logits). transformers 5 names the
    cache `cache`, earlier versions `past_key_values`."""
    name = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
    out = lm(input_ids=ids, use_cache=True, **({} if past is None else {name: past}))
    return out.get("cache", None) or out.get("past_key_values"), out.logits[:, -1]


@torch.no_grad()
def sample(model: CausalLM, prompts: torch.Tensor, new_tokens: int, g: torch.Generator, temperature: float = 1.0,
           top_p: float = 1.0, eos_id: int | None = None, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Completions of `prompts` (N, k), new_tokens each, drawn with the KV cache and generator `g` at a
    temperature and nucleus top_p (1: the whole distribution), never the padding token. After an eos
    the row is padded.
    Returns (ids (N, k + new_tokens), mask (N, k + new_tokens)): the positions whose next token was
    sampled here and is real, the ones the loss counts."""
    if temperature <= 0 or not 0 < top_p <= 1:
        raise KdxError(f"sampling: temperature={temperature} must be > 0 and top_p={top_p} in (0, 1]")
    was_training = model.training
    model.eval()
    n, k = prompts.shape
    ids = torch.full((n, k + new_tokens), pad_id, dtype=torch.long, device=prompts.device)
    ids[:, :k] = prompts
    alive = torch.ones(n, dtype=torch.bool, device=prompts.device)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    past, logits = _cached_step(model.lm, prompts, None)
    for i in range(new_tokens):
        probs = torch.softmax(logits.float() / temperature, -1)
        if pad_id != eos_id:  # padding is never a token of a sequence (an untrained model may favour it)
            probs[:, pad_id] = 0.0
        if top_p < 1.0:  # keep the smallest set of tokens whose mass reaches top_p
            sorted_p, order = probs.sort(-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p >= top_p
            probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
        nxt = torch.multinomial(probs, 1, generator=g).squeeze(1)
        ids[:, k + i] = torch.where(alive, nxt, torch.full_like(nxt, pad_id))
        mask[:, k + i - 1] = alive
        if eos_id is not None:
            alive = alive & (nxt != eos_id)
        if i + 1 < new_tokens:
            past, logits = _cached_step(model.lm, ids[:, k + i:k + i + 1], past)
    model.train(was_training)
    return ids, mask


@torch.no_grad()
def next_token_accuracy(model: nn.Module, x: torch.Tensor, pad_id: int, batch_size: int = 64) -> float:
    """The share of counted positions of windows `x` where the model's top-1 next token is the true one."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    hits = total = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device)
        y, mask = lm_targets(xb, pad_id)
        hits += int(((model(xb).argmax(-1) == y) & mask).sum())
        total += int(mask.sum())
    model.train(was_training)
    return hits / max(total, 1)


@torch.no_grad()
def top_k_log_probs(model: nn.Module, x: torch.Tensor, k: int, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's k largest next-token log-probabilities at every position of windows x (N, L): values
    (N, L, k) float32 and token ids (N, L, k) int32, on the CPU."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    values, ids = [], []
    for i in range(0, len(x), batch_size):
        top = torch.log_softmax(model(x[i:i + batch_size].to(device)).float(), -1).topk(k, -1)
        values.append(top.values.cpu())
        ids.append(top.indices.to(torch.int32).cpu())
    model.train(was_training)
    return torch.cat(values), torch.cat(ids)


def dense_from_top_k(values: torch.Tensor, ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """Log-probabilities (..., vocab) from a top-k cache: the k kept exactly, the rest of the mass in one
    bucket spread evenly over the other tokens (a tiny floor where the top k hold all of it)."""
    k = values.shape[-1]
    kept = torch.logsumexp(values, -1, keepdim=True).exp().clamp_max(1 - 1e-6)
    rest = torch.log1p(-kept)  # the log of the mass outside the top k
    out = (rest - torch.log(torch.tensor(float(max(vocab - k, 1))))).expand(*values.shape[:-1], vocab).clone()
    return out.scatter_(-1, ids.long(), values)
