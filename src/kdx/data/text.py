"""Text classification data: token ids (N, L) int64 padded with the tokenizer's pad id.

Tokenizer: a model directory's (AutoTokenizer, local files only), or a WordPiece vocabulary trained
here with the `tokenizers` library on the training texts and cached under $KDX_CACHE/tokenizers by a
hash of the texts and settings. Every row is [CLS] tokens [SEP], truncated to `max_length`.

The registered text datasets that read files are in kdx.data.text_sets; every one ends in `text_dataset`.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from kdx.data.base import Dataset
from kdx.errors import KdxError, first_line
from kdx.io import save_arrays, write_json, write_text

TOKENIZER_FORMAT = 2  # bump when the trained tokenizer's recipe changes (2: the file named by its content's hash)
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# the held-out sets every text dataset offers (kdx.eval.heldout_text); `domain` where it has a domain set
TEXT_HELDOUT = ["test", "train_subset", "typos-1", "typos-2", "typos-3", "word_dropout-1", "word_dropout-2",
                "word_dropout-3", "truncation-2", "class_subset", "random_tokens"]
# files a tokenizer directory may hold; one of these sets must be complete
TOKENIZER_FILES = [("tokenizer.json",), ("vocab.txt",), ("vocab.json", "merges.txt"), ("spiece.model",),
                   ("sentencepiece.bpe.model",)]


def cache_dir(configured: str | Path | None = None) -> Path:
    """kdx's cache folder (teachers, MLMs, tokenizers): the config's `cache_dir`, else $KDX_CACHE, else ~/.cache/kdx."""
    return Path(configured or os.environ.get("KDX_CACHE") or Path.home() / ".cache" / "kdx")


class Tokenizer:
    """A transformers fast tokenizer with kdx's fixed encoding: [CLS] ... [SEP], truncated, padded."""

    def __init__(self, tok, source: str):
        self.tok, self.source = tok, source
        if tok.pad_token_id is None:
            raise KdxError(f"tokenizer {source} has no padding token; kdx pads token ids with it")
        self.pad_id = int(tok.pad_token_id)
        self.special_ids = sorted(set(int(i) for i in tok.all_special_ids) - {self.pad_id})
        self.vocab_size = len(tok)
        self.key = hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()[:16]  # the vocabulary's content

    def encode(self, texts: list[str], max_length: int) -> torch.Tensor:
        """(N, max_length) int64 ids: the Rust tokenizer's batch encoding (5x transformers' __call__ here)."""
        from tokenizers import Tokenizer as RawTokenizer

        bt = RawTokenizer.from_str(self.tok.backend_tokenizer.to_str())  # a copy: truncation/padding set here only
        bt.enable_truncation(max_length)
        bt.enable_padding(length=max_length, pad_id=self.pad_id, pad_token=self.tok.pad_token)
        # a token is at least one character, and 16 per token is far past any WordPiece here: cutting the
        # text there first leaves the first max_length tokens unchanged and saves tokenising long tails
        cut = [t[:16 * max_length] for t in texts]
        h = hashlib.sha256(f"{self.key}:{max_length}".encode())
        for t in cut:
            h.update(t.encode())
            h.update(b"\0")
        path = cache_dir() / "encoded" / f"{h.hexdigest()[:24]}.npz"
        cached = _read_cached_ids(path, len(texts), max_length)
        if cached is not None:
            return torch.from_numpy(cached)
        ids = np.array([e.ids for e in bt.encode_batch(cut)], dtype=np.int64).reshape(len(texts), max_length)
        if len(texts) >= 1000:  # the splits, not held-out perturbations: cached by content
            save_arrays(path, ids=ids)
        return torch.from_numpy(ids)

    def decode(self, rows: list[list[int]]) -> list[str]:
        return self.tok.batch_decode(rows, skip_special_tokens=True, clean_up_tokenization_spaces=True)

    def vocab(self) -> list[str]:
        inv = {i: t for t, i in self.tok.get_vocab().items()}
        return [inv.get(i, "") for i in range(self.vocab_size)]


def _read_cached_ids(path: Path, n: int, max_length: int):
    """The cached encoding at `path`, or None when absent or unreadable (a damaged cache entry is recomputed
    and rewritten, never trusted)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            ids = f["ids"]
    except Exception:  # noqa: BLE001 - zip, numpy and OS errors: all mean "compute it again"
        return None
    return ids if ids.dtype == np.int64 and ids.shape == (n, max_length) else None


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer from a local model directory (no network), with a clear error for a missing file."""
    return Tokenizer(open_tokenizer(path), str(Path(path).expanduser()))


def open_tokenizer(path: str | Path):
    """The transformers fast tokenizer in a local model directory; a missing file is named."""
    from transformers import AutoTokenizer

    path = Path(path).expanduser()
    if not path.is_dir():
        raise KdxError(f"tokenizer: {path} is not a directory; pass a folder written by save_pretrained "
                       "(tokenizer.json, or vocab.txt, ...), or tokenizer='' to train a WordPiece vocabulary here")
    have = {p.name for p in path.iterdir()}
    complete = [s for s in TOKENIZER_FILES if all(f in have for f in s)]
    if not complete:
        partial = [s for s in TOKENIZER_FILES if any(f in have for f in s)]
        missing = [f for s in partial for f in s if f not in have]
        want = " or ".join("+".join(s) for s in TOKENIZER_FILES)
        raise KdxError(f"tokenizer: {path} is missing {', '.join(missing) if missing else 'its vocabulary'} "
                       f"(it holds: {', '.join(sorted(have)) or 'nothing'}); a tokenizer directory needs {want}")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError ... for bad folders
        raise KdxError(f"tokenizer: cannot load {path} (it holds {', '.join(sorted(have))}): {type(e).__name__}: "
                       f"{first_line(e)}") from None
    return tok


def train_tokenizer(texts: list[str], vocab_size: int = 8000, lowercase: bool = True, min_frequency: int = 2) -> Tokenizer:
    """A WordPiece vocabulary trained on `texts` (BERT's normaliser and pre-tokeniser), cached by a hash of
    the texts and settings: the same texts give the same ids in every process."""
    from tokenizers import Tokenizer as RawTokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    h = hashlib.sha256(json.dumps({"v": vocab_size, "lower": lowercase, "min": min_frequency,
                                   "format": TOKENIZER_FORMAT}).encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    folder = cache_dir() / "tokenizers" / h.hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    # Training is not deterministic (ties between equally frequent pieces), so one process trains and every
    # other reads its file, under a lock; the file's name carries its content's hash, so damage is noticed.
    with FileLock(str(folder / ".lock")):
        found = sorted(folder.glob("tokenizer-*.json"))
        if found:
            file = found[0]
            text = file.read_bytes()
            if file.name != f"tokenizer-{hashlib.sha256(text).hexdigest()[:16]}.json":
                raise KdxError(f"the cached tokenizer {file} is damaged (its content does not match the hash in its "
                               f"name); delete {folder} to train the vocabulary again, and the teachers cached for "
                               "this data with it (their token ids came from the old one)")
            raw = RawTokenizer.from_str(text.decode())
        else:
            raw = RawTokenizer(models.WordPiece(unk_token="[UNK]"))
            raw.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
            raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            raw.decoder = decoders.WordPiece()
            trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIALS)
            raw.train_from_iterator(texts, trainer)
            text = raw.to_str().encode()
            file = folder / f"tokenizer-{hashlib.sha256(text).hexdigest()[:16]}.json"
            write_text(file, text.decode())
    from tokenizers.processors import TemplateProcessing

    cls, sep = raw.token_to_id("[CLS]"), raw.token_to_id("[SEP]")
    raw.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    return Tokenizer(tok, str(file))


def text_dataset(name: str, train_texts: list[str], y_train, test_texts: list[str], y_test, classes: list[str], *,
                 tokenizer: str = "", vocab_size: int = 8000, max_length: int = 64, lowercase: bool = True,
                 extra_texts: dict[str, tuple[list[str], list[int] | None]] | None = None,
                 heldout: list[str] | None = None) -> Dataset:
    """Tokenise train/test (and extra sets: e.g. `domain`, a domain-shifted test set) into a text Dataset."""
    if max_length < 4:
        raise KdxError(f"{name}: max_length must be at least 4 tokens, got {max_length}")
    tok = load_tokenizer(tokenizer) if tokenizer else train_tokenizer(train_texts, vocab_size, lowercase)
    x_train, x_test = tok.encode(train_texts, max_length), tok.encode(test_texts, max_length)
    extra, texts = {}, {"train": list(train_texts), "test": list(test_texts)}
    for key, (tx, ty) in (extra_texts or {}).items():
        extra[key] = (tok.encode(tx, max_length), None if ty is None else torch.as_tensor(ty, dtype=torch.long))
        texts[key] = list(tx)
    default = list(heldout or TEXT_HELDOUT)
    if "domain" in extra and "domain" not in default:
        default.append("domain")
    return Dataset(name, x_train, torch.as_tensor(y_train, dtype=torch.long), x_test,
                   torch.as_tensor(y_test, dtype=torch.long), list(classes), default_heldout=default, modality="text",
                   vocab_size=tok.vocab_size, pad_id=tok.pad_id, special_ids=tok.special_ids, tokenizer=tok,
                   extra=extra, texts=texts)


ANCHOR_FORMAT = 1  # bump when the anchor's recipe changes


def tfidf_logreg(train_texts, y_train, test_sets: dict, max_features: int = 50_000, C: float = 5.0, seed: int = 0):
    """TF-IDF (words and word pairs, sublinear tf, min_df 2) + logistic regression (saga) fit on the train
    texts: ({name: predicted labels (numpy)} for each list of texts in `test_sets`, number of features)."""
    from sklearn.exceptions import ConvergenceWarning

    model = tfidf_logreg_pipeline(max_features, C, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # saga at 300 epochs is within 0.1 pt of lbfgs
        model.fit(list(train_texts), np.asarray(y_train))
    n_features = len(model.named_steps["tfidf"].vocabulary_)
    return {k: model.predict(list(v)) for k, v in test_sets.items()}, n_features


def tfidf_logreg_pipeline(max_features: int = 50_000, C: float = 5.0, seed: int = 0):
    """The anchor's recipe, unfitted: TF-IDF (words and word pairs, sublinear tf, min_df 2) + logistic
    regression (saga); also the `tfidf_logreg` teacher (kdx.models.blackbox)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    return Pipeline([("tfidf", TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2), max_features=max_features)),
                     ("logreg", LogisticRegression(C=C, solver="saga", max_iter=300, random_state=seed))])


def anchor_accuracy(data: Dataset) -> float | None:
    """The TF-IDF + logistic-regression anchor's test accuracy on this text Dataset's raw train/test texts
    (the linear floor a text teacher is read against), computed once and cached under $KDX_CACHE/anchors
    by a hash of the texts, labels and recipe. None for data without raw texts (or not text)."""
    if not data.is_text or "train" not in data.texts or "test" not in data.texts:
        return None
    h = hashlib.sha256(f"tfidf-logreg:{ANCHOR_FORMAT}".encode())
    for split, y in (("train", data.y_train), ("test", data.y_test)):
        for t in data.texts[split]:
            h.update(t.encode())
            h.update(b"\0")
        h.update(y.cpu().numpy().astype("int64").tobytes())
    path = cache_dir() / "anchors" / f"{h.hexdigest()[:24]}.json"
    if path.exists():
        try:
            return float(json.loads(path.read_text())["test_acc"])
        except (OSError, ValueError, KeyError, TypeError):  # a damaged cache entry: compute it again
            pass
    preds, n_features = tfidf_logreg(data.texts["train"], data.y_train.numpy(), {"test": data.texts["test"]})
    acc = float((preds["test"] == data.y_test.numpy()).mean())
    write_json(path, {"test_acc": acc, "n_train": len(data.texts["train"]), "n_test": len(data.texts["test"]),
                      "n_features": n_features, "recipe": "tfidf(1-2 grams, sublinear, min_df 2, 50k) + logreg(C=5, saga)"})
    return acc

