"""Language-model corpora (modality `lm`): documents -> fixed-context windows of token ids for causal LMs.

Documents come from json/jsonl, parquet, a folder of .txt files, a HF dataset saved on disk, or the
Debian descriptions corpus (`kdx data build debian-lm`). They are split into train and test by a hash
of their document group (`group_column`: e.g. the Debian source package; by default each document is
its own group), so no group has text on both sides (and a text repeated in two groups is kept once).
Documents whose `shift_column` value is in `shift_values` (Debian: sections) are held out of both
splits, with the rest of their groups, as the `shift` held-out row. Tokens: a byte-level BPE trained
here on the train split (the `tokenizers` library; cached under $KDX_CACHE/tokenizers by a hash of the
texts and settings) or a user's tokenizer from a model folder.

Each document becomes [eos] ids [eos] and is cut into windows of `context` tokens that overlap by one
token, so every token but a document's first is a next-token target exactly once; a short last window
is padded with `pad_id` on the right (causal attention never sees the padding of a real position).
Prompts for the sampling sources: the first `prompt_tokens` tokens of each document long enough to
have a continuation, per split (`data.extra["prompts_train"|"prompts_test"]`). Inputs are x (N, L)
int64; y holds each window's document index; `lm_targets` gives next-token labels and the mask.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import NamedTuple

import torch

from kdx.data.base import Dataset
from kdx.data.apt_lists import APT_LISTS
from kdx.data.debian import collect_packages, is_test_source
from kdx.data.text import cache_dir, open_tokenizer
from kdx.errors import KdxError
from kdx.io import save_torch, write_text
from kdx.registry import DATASETS

LM_TOKENIZER_FORMAT = 1  # bump when the BPE recipe changes
LM_WINDOWS_FORMAT = 1  # bump when windowing changes
EOS, PAD = "<|endoftext|>", "<|pad|>"
BYTE_ALPHABET = 256  # a byte-level BPE starts from every byte
# the held-out rows of an LM run (kdx.eval.lm): held-out corpus windows, teacher and student samples of
# held-out prompts, uniformly random tokens; and `domain` where the corpus has a domain_column
LM_HELDOUT = ["test", "teacher_samples", "student_samples", "random_tokens"]


class LMTokenizer:
    """Text <-> ids without templates or truncation (windows are cut by kdx); eos ends documents."""

    def __init__(self, tok, source: str):
        self.tok, self.source = tok, source  # a transformers PreTrainedTokenizerFast
        if tok.eos_token_id is None:
            raise KdxError(f"tokenizer {source} has no end-of-text token (eos_token); a causal-LM corpus "
                           "separates documents with it: give a tokenizer that has one, or train one here (tokenizer='')")
        self.eos_id = int(tok.eos_token_id)
        # without a padding token the eos pads (the mask, not the id, says which positions count)
        self.pad_id = int(tok.pad_token_id) if tok.pad_token_id is not None else self.eos_id
        self.special_ids = sorted(set(int(i) for i in tok.all_special_ids) - {self.pad_id})
        self.vocab_size = len(tok)
        self.key = hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()[:16]

    def ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def encode(self, texts: list[str], max_length: int) -> torch.Tensor:
        """(N, max_length) ids: [eos] text, truncated, right-padded (held-out texts, prompts)."""
        out = torch.full((len(texts), max_length), self.pad_id, dtype=torch.long)
        for i, row in enumerate(self.ids(texts)):
            row = [self.eos_id, *row][:max_length]
            out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        return out

    def decode(self, rows: list[list[int]]) -> list[str]:
        return self.tok.batch_decode(rows, skip_special_tokens=True)

    def vocab(self) -> list[str]:
        inv = {i: t for t, i in self.tok.get_vocab().items()}
        return [inv.get(i, "") for i in range(self.vocab_size)]


def _hash_texts(settings: dict, texts: list[str]) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def train_bpe(texts: list[str], vocab_size: int = 8000, min_frequency: int = 2) -> LMTokenizer:
    """A byte-level BPE (GPT-2's pre-tokenizer and decoder) trained on `texts`, cached by their hash."""
    from tokenizers import Tokenizer as RawTokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < BYTE_ALPHABET + 2:
        raise KdxError(f"lm_text: vocab_size={vocab_size} is below the {BYTE_ALPHABET} bytes plus 2 special "
                       f"tokens a byte-level BPE starts from; use vocab_size >= {BYTE_ALPHABET + 2}")
    key = _hash_texts({"v": vocab_size, "min": min_frequency, "format": LM_TOKENIZER_FORMAT, "kind": "bytebpe"}, texts)
    file = cache_dir() / "tokenizers" / f"bpe-{key}" / "tokenizer.json"
    if file.exists():
        raw = RawTokenizer.from_file(str(file))
    else:
        raw = RawTokenizer(models.BPE())
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        raw.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS, PAD],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        raw.train_from_iterator(texts, trainer)
        write_text(file, raw.to_str())  # atomic: concurrent runs write the same bytes
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=EOS, pad_token=PAD)
    return LMTokenizer(tok, str(file))


def load_lm_tokenizer(path: str | Path) -> LMTokenizer:
    """A user's tokenizer from a model folder (local files only), its missing files named."""
    return LMTokenizer(open_tokenizer(path), str(path))


# ---------------------------------------------------------------------------------------------- documents
class Document(NamedTuple):
    text: str
    group: str  # documents of one group land on one side of the split
    domain: str = ""  # a shifted-domain text of the same document (Debian: its one-line synopsis), if any
    kind: str = ""  # the value of the column that can hold documents out of both splits (Debian: the section)


def _read_table_rows(files: list[Path]) -> list[dict]:
    rows: list[dict] = []
    for f in files:
        if f.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows += pq.read_table(f).to_pylist()
        elif f.suffix == ".jsonl":
            rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        else:
            obj = json.loads(f.read_text())
            rows += obj if isinstance(obj, list) else obj.get("data", [obj]) if isinstance(obj, dict) else []
    return rows


def read_documents(path: str, text_column: str = "text", group_column: str = "",
                   domain_column: str = "", shift_column: str = "") -> list[Document]:
    """Every document at `path`: a HF dataset saved on disk (all its splits), json/jsonl or parquet file(s)
    (a file, or a folder of them), or a folder of .txt files (a file is a document, its relative path its
    group). Without `group_column` each document is its own group."""
    if not path:
        raise KdxError("lm_text: set data.path to a corpus: a folder of .txt files, json/jsonl/parquet file(s), a HF "
                       "dataset saved on disk, or a `kdx data build debian-lm --out DIR` build")
    p = Path(path).expanduser()
    if not p.exists():
        raise KdxError(f"lm_text: {p} does not exist; give a file or folder holding the corpus")
    if p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "dataset_info.json").exists()):
        import datasets

        loaded = datasets.load_from_disk(str(p))
        parts = list(loaded.values()) if isinstance(loaded, datasets.DatasetDict) else [loaded]
        rows = [r for part in parts for r in part]
    elif p.is_dir() and not any(p.glob("*.json*")) and not any(p.glob("*.parquet")):
        files = sorted(f for f in p.rglob("*.txt") if f.is_file())
        if not files:
            raise KdxError(f"lm_text: {p} holds no .txt, .json, .jsonl or .parquet files and no saved HF dataset")
        return [Document(f.read_text(errors="replace"), str(f.relative_to(p))) for f in files]
    else:
        files = [p] if p.is_file() else sorted([*p.glob("*.jsonl"), *p.glob("*.json"), *p.glob("*.parquet")])
        bad = [f for f in files if f.suffix not in (".json", ".jsonl", ".parquet", ".txt")]
        if bad:
            raise KdxError(f"lm_text: cannot read {bad[0]}; give .txt, .json, .jsonl or .parquet files")
        if p.is_file() and p.suffix == ".txt":
            return [Document(p.read_text(errors="replace"), p.name)]
        rows = _read_table_rows(files)
    if rows and text_column not in rows[0]:
        raise KdxError(f"lm_text: the corpus at {p} has no column '{text_column}'; it has {', '.join(map(str, rows[0]))} "
                       "(set data.text_column)")
    for column, arg in ((group_column, "group_column"), (domain_column, "domain_column"), (shift_column, "shift_column")):
        if column and rows and column not in rows[0]:
            raise KdxError(f"lm_text: the corpus at {p} has no column '{column}'; it has "
                           f"{', '.join(map(str, rows[0]))} (set data.{arg}, or '' for none)")
    return [Document(str(r[text_column] or ""), str(r[group_column]) if group_column else str(i),
                     str(r[domain_column] or "") if domain_column else "",
                     str(r[shift_column] or "") if shift_column else "") for i, r in enumerate(rows)]


def hold_out(docs: list[Document], values: list[str]) -> tuple[list[Document], list[Document]]:
    """(the documents kept for the splits, the held-out ones): a document whose `kind` is one of `values`
    is held out; the other documents of its group, and any repeat of a held-out text, are dropped, so
    neither a group nor a text reaches both sides."""
    held = [d for d in docs if d.kind in values]
    groups, texts = {d.group for d in held}, {d.text for d in held}
    return [d for d in docs if d.group not in groups and d.text not in texts], held


def split_documents(docs: list[Document], test_fraction: float) -> tuple[list[Document], list[Document]]:
    """Train and test documents, split by group (a hash of its name: the same group always on the same
    side); empty documents and exact repeats of an earlier document's text (in another group they would
    leak across the split) dropped."""
    train, test, seen = [], [], set()
    for d in docs:
        if d.text.strip() and d.text not in seen:
            seen.add(d.text)
            (test if is_test_source(d.group, test_fraction) else train).append(d)
    return train, test


def windows(docs: list[list[int]], context: int, eos_id: int, pad_id: int, max_windows: int = 0):
    """[eos] ids [eos] of each document cut into windows of `context` tokens overlapping by one:
    ((W, context) ids right-padded with pad_id, (W,) document index of each window)."""
    rows, owner = [], []
    for d, ids in enumerate(docs):
        seq = [eos_id, *ids, eos_id]
        starts = range(0, max(1, len(seq) - 1), context - 1)
        for k, s in enumerate(starts):
            if max_windows and k >= max_windows:
                break
            rows.append(seq[s:s + context])
            owner.append(d)
    x = torch.full((len(rows), context), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return x, torch.tensor(owner, dtype=torch.long)


def lm_targets(x: torch.Tensor, pad_id: int, eos_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token labels (N, L) (x shifted left, pad at the end) and the mask of positions whose next
    token is real (N, L): a window's valid tokens are those before its trailing padding."""
    y = torch.cat([x[:, 1:], torch.full_like(x[:, :1], pad_id)], 1)
    valid = x != pad_id
    if eos_id is not None and eos_id == pad_id:  # eos pads: the first trailing eos after the text is real
        real = (x != pad_id).long()
        last = (real * torch.arange(x.shape[1], device=x.device)).amax(1, keepdim=True)
        valid = torch.arange(x.shape[1], device=x.device) <= (last + 1).clamp_max(x.shape[1] - 1)
    mask = torch.cat([valid[:, 1:], torch.zeros_like(valid[:, :1])], 1)
    return y, mask


def prompts(docs: list[list[int]], k: int, eos_id: int) -> torch.Tensor:
    """The first k tokens ([eos] then the text) of each document with at least one more token after them."""
    rows = [[eos_id, *ids][:k] for ids in docs if len(ids) + 1 > k]
    return torch.tensor(rows, dtype=torch.long).view(len(rows), k)


@DATASETS.register()
def lm_text(path: str = "", text_column: str = "text", group_column: str = "", domain_column: str = "",
            shift_column: str = "", shift_values: list[str] = [], test_fraction: float = 0.1,
            context: int = 128, tokenizer: str = "", vocab_size: int = 8000, prompt_tokens: int = 8,
            max_windows: int = 0, max_documents: int = 0) -> Dataset:
    """A causal-LM corpus (txt folder, json/jsonl, parquet, saved HF dataset, debian-lm build) in windows of `context` tokens."""
    if context < 4:
        raise KdxError(f"lm_text: context must be at least 4 tokens, got {context}")
    if not 1 <= prompt_tokens < context:
        raise KdxError(f"lm_text: prompt_tokens={prompt_tokens} must be in 1..{context - 1} (below the context)")
    if not 0.0 < test_fraction < 1.0:
        raise KdxError(f"lm_text: test_fraction must be in (0, 1), got {test_fraction}")
    if bool(shift_column) != bool(shift_values):
        raise KdxError("lm_text: shift_column and shift_values go together (e.g. shift_column=section "
                       "shift_values=[games, sound]: those documents held out of training, the `shift` row)")
    docs = read_documents(path, text_column, group_column, domain_column, shift_column)
    if max_documents:
        docs = docs[:max_documents]
    docs, shifted = hold_out(docs, list(shift_values))
    if shift_values and not any(d.text.strip() for d in shifted):
        raise KdxError(f"lm_text: no document has {shift_column} in {list(shift_values)}; values present: "
                       f"{', '.join(sorted({d.kind for d in docs})[:20])}")
    train_docs, test_docs = split_documents(docs, test_fraction)
    train_texts, test_texts = [d.text for d in train_docs], [d.text for d in test_docs]
    if not train_texts or not test_texts:
        raise KdxError(f"lm_text: {path} gives {len(train_texts)} train and {len(test_texts)} test documents "
                       f"(non-empty, split by group at test_fraction={test_fraction}); both need at least one: add "
                       "documents or groups, or change test_fraction")
    tok = load_lm_tokenizer(tokenizer) if tokenizer else train_bpe(train_texts, vocab_size)
    key = _hash_texts({"tok": tok.key, "pad": tok.pad_id, "eos": tok.eos_id, "context": context, "k": prompt_tokens,
                       "max_windows": max_windows, "format": LM_WINDOWS_FORMAT}, [*train_texts, "\0split\0", *test_texts])
    cached = cache_dir() / "lm_windows" / f"{key}.pt"
    if cached.exists():
        arrays = torch.load(cached)
    else:
        arrays = {}
        for split, texts in (("train", train_texts), ("test", test_texts)):
            ids = tok.ids(texts)
            arrays[f"x_{split}"], arrays[f"doc_{split}"] = windows(ids, context, tok.eos_id, tok.pad_id, max_windows)
            arrays[f"prompts_{split}"] = prompts(ids, prompt_tokens, tok.eos_id)
        save_torch(cached, arrays)
    for split in ("train", "test"):
        if len(arrays[f"prompts_{split}"]) == 0:
            raise KdxError(f"lm_text: no {split} document is longer than prompt_tokens={prompt_tokens} tokens, so "
                           "there are no prompts to sample from; lower data.prompt_tokens")
    extra = {f"prompts_{s}": (arrays[f"prompts_{s}"], None) for s in ("train", "test")}
    heldout = list(LM_HELDOUT)
    domain = [d.domain for d in test_docs if d.domain.strip()]
    if domain:  # the test documents' shifted-domain texts (Debian: synopses), one window each; the train
        extra["domain"] = (tok.encode(domain, context), None)  # documents' are a source (lm_downstream)
        extra["domain_train"] = (tok.encode([d.domain for d in train_docs if d.domain.strip()], context), None)
        heldout.append("domain")
    if shifted:  # documents of the held-out kinds (Debian: sections), windowed like the test split
        ids = tok.ids([d.text for d in shifted if d.text.strip()])
        extra["shift"] = (windows(ids, context, tok.eos_id, tok.pad_id, max_windows)[0], None)
        heldout.append("shift")
    return Dataset("lm_text", arrays["x_train"], arrays["doc_train"], arrays["x_test"], arrays["doc_test"], [],
                   default_heldout=heldout, modality="lm", vocab_size=tok.vocab_size, pad_id=tok.pad_id,
                   special_ids=tok.special_ids, tokenizer=tok, extra=extra,
                   texts={"train": train_texts, "test": test_texts})


# ---------------------------------------------------------------------------------------------- debian
def build_debian_lm(out: Path | str, lists_dir: Path | str = APT_LISTS, decompress: str = "auto"):
    """Every English package description in apt's lists as an LM corpus: a HF dataset saved to `out`
    (columns text (the long description), short (the synopsis), package, source, section), exact
    duplicate texts dropped (the first in (source, package) order stays). Split it by source package
    with lm_text's group_column=source. Returns the dataset."""
    import datasets

    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "dataset_info.json").exists())):
        raise KdxError(f"debian-lm: {out} exists and is not an earlier build; pass an empty or new folder")
    seen, cols = set(), {k: [] for k in ("text", "short", "package", "source", "section")}
    for r in sorted(collect_packages(Path(lists_dir), decompress), key=lambda r: (r["source"], r["package"])):
        if not r["long"].strip() or r["long"] in seen:
            continue
        seen.add(r["long"])
        for k, v in (("text", r["long"]), ("short", r["short"]), ("package", r["package"]), ("source", r["source"]),
                     ("section", r["section"])):
            cols[k].append(v)
    if not cols["text"]:
        raise KdxError(f"debian-lm: no package in {lists_dir} has an English description")
    ds = datasets.Dataset.from_dict(cols)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    ds.save_to_disk(str(tmp))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)  # the build appears whole or not at all
    return ds
