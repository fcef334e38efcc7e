"""Text classification data: token ids (N, L) int64 padded with the tokenizer's pad id.

Tokenizer: a model directory's (AutoTokenizer, local files only), or a WordPiece vocabulary trained
here with the `tokenizers` library on the training texts and cached under $KDX_CACHE/tokenizers by a
hash of the texts and settings. Every row is [CLS] tokens [SEP], truncated to `max_length`.

Registered datasets: `debian_descriptions` (kdx.data.debian's offline corpus) and `hf_text` (any
text-classification DatasetDict saved to disk, or json/csv/parquet files read with `datasets`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from kdx.data.base import Dataset, index_labels
from kdx.data.hf import check_arrow_files, read_column
from kdx.errors import KdxError
from kdx.io import save_arrays, write_json, write_text
from kdx.registry import DATASETS

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
                       f"{str(e).splitlines()[0][:300] if str(e) else ''}") from None
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


def _subset(ds, n: int, seed: int):
    if n and n < len(ds):
        return ds.shuffle(seed=seed).select(range(n))
    return ds


def _load_from_disk(p: Path, what: str):
    """A save_to_disk DatasetDict, refused naming the folder when its files are damaged."""
    import datasets

    check_arrow_files(p, what)
    try:
        dd = datasets.load_from_disk(str(p))
    except Exception as e:  # noqa: BLE001 - datasets raises several types for a damaged folder
        raise KdxError(f"{what}: {p} is not a readable save_to_disk folder ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:200] if str(e) else ''}); rebuild or re-save it") from None
    if not isinstance(dd, datasets.DatasetDict):
        raise KdxError(f"{what}: {p} holds a single Dataset; save a DatasetDict with train and test splits")
    return dd


def _column(split, name: str, column: str, where: str) -> list:
    return read_column(split, column, f"{where}: split '{name}'", "re-save the set with save_to_disk, or write its "
                       "files as UTF-8 text")


def _texts(values: list, where: str) -> list[str]:
    """A text column as strings: numbers are written out, a lone surrogate (from a JSON escape) becomes
    U+FFFD; a missing (None, NaN) or structured (list, dict) text is refused naming its row."""
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (str, int, float)) or (isinstance(v, float) and v != v):
            raise KdxError(f"{where} row {i} has text {v!r} ({type(v).__name__}), not a string; fix or drop that row")
        out.append(str(v).encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
    return out


@DATASETS.register()
def debian_descriptions(path: str = "", max_length: int = 64, tokenizer: str = "", vocab_size: int = 8000,
                        lowercase: bool = True, max_train: int = 0, max_test: int = 0) -> Dataset:
    """Debian package descriptions -> Section (12 classes), built offline by `kdx data build debian-descriptions`."""
    import datasets

    p = Path(path).expanduser() if path else None
    rebuild = ("build the corpus with `kdx data build debian-descriptions --out DIR` (or `make demo-text`) and "
               "pass data.path=DIR")
    if p is None or not (p / "dataset_dict.json").exists():
        raise KdxError(f"debian_descriptions: {'no data.path given' if p is None else f'{p} holds no build'}; {rebuild}")
    dd = _load_from_disk(p, "debian_descriptions")
    for split in ("train", "test"):
        missing = [c for c in ("text", "label", "short") if split in dd and c not in dd[split].column_names]
        if split not in dd or missing or not isinstance(dd[split].features["label"], datasets.ClassLabel):
            raise KdxError(f"debian_descriptions: {p} is not a debian-descriptions build (split '{split}' "
                           f"{'is missing' if split not in dd else 'lacks ' + ', '.join(missing or ['a ClassLabel label'])}); {rebuild}")
    train, test = _subset(dd["train"], max_train, 0), _subset(dd["test"], max_test, 0)
    where = f"debian_descriptions: {p}"
    cols = {(s, c): _column(split, s, c, where) for s, split in (("train", train), ("test", test))
            for c in ("text", "label", "short")}
    # the domain shift: the one-line synopses of the test packages; `short_train`, the train packages'
    # synopses, is an unlabeled downstream pool (source downstream dataset=self split=short_train)
    short = {s: _texts(cols[s, "short"], f"{where}: split '{s}', column 'short'") for s in ("train", "test")}
    te_short = [(s, y) for s, y in zip(short["test"], cols["test", "label"]) if s.strip()]
    extra = {"domain": ([s for s, _ in te_short], [y for _, y in te_short]),
             "short_train": ([s for s in short["train"] if s.strip()], None)}
    names = train.features["label"].names
    for s in ("train", "test"):
        _check_class_indices(cols[s, "label"], len(names), f"{where}: split '{s}'")
    return text_dataset("debian_descriptions", _texts(cols["train", "text"], f"{where}: split 'train', column 'text'"),
                        cols["train", "label"], _texts(cols["test", "text"], f"{where}: split 'test', column 'text'"),
                        cols["test", "label"], names, tokenizer=tokenizer, vocab_size=vocab_size,
                        max_length=max_length, lowercase=lowercase, extra_texts=extra)


def _check_class_indices(labels: list, num_classes: int, where: str) -> None:
    bad = next((i for i, v in enumerate(labels) if not isinstance(v, int) or not 0 <= v < num_classes), None)
    if bad is not None:
        raise KdxError(f"{where} row {bad} has label {labels[bad]!r}, not a class index in 0..{num_classes - 1} "
                       "(ClassLabel -1 marks an unlabelled row); fix or drop that row")


TEXT_FORMATS = ("jsonl", "json", "csv", "parquet")


@contextlib.contextmanager
def _quiet_datasets():
    """datasets' progress bars and its logged errors off: a file it cannot read becomes one KdxError line."""
    import datasets
    from datasets.utils import logging as ds_logging

    level, bars = ds_logging.get_verbosity(), not datasets.are_progress_bars_disabled()
    ds_logging.set_verbosity(ds_logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
        if bars:
            datasets.enable_progress_bars()


def _open_text(path: str, train_split: str, test_split: str):
    import datasets

    p = Path(path).expanduser()
    if not path:
        raise KdxError("hf_text: set data.path to a DatasetDict folder (save_to_disk) or a folder with "
                       "train/test .jsonl, .json, .csv or .parquet files")
    if (p / "dataset_dict.json").exists():
        return _load_from_disk(p, "hf_text")
    if not p.is_dir():
        raise KdxError(f"hf_text: {p} is not a folder; pass a DatasetDict folder or a folder with train/test files")
    files = {}
    for split in (train_split, test_split):
        found = [f for ext in TEXT_FORMATS for f in sorted(p.glob(f"{split}*.{ext}"))]
        if not found:
            raise KdxError(f"hf_text: {p} has no dataset_dict.json and no {split}.jsonl/.json/.csv/.parquet file; "
                           "pass data.path a folder holding both splits' files")
        files[split] = [str(f) for f in found]
    formats = {"json" if f.endswith(".jsonl") else Path(f).suffix[1:] for fs in files.values() for f in fs}
    if len(formats) > 1:
        raise KdxError(f"hf_text: {p} mixes {', '.join(sorted(formats))} files; keep one format for both splits")
    fmt = formats.pop()
    try:
        with _quiet_datasets():
            return datasets.load_dataset(fmt, data_files=files)
    except Exception as e:  # noqa: BLE001 - datasets wraps pyarrow's and pandas' errors in several types
        cause = e.__cause__ or e.__context__ or e
        first = (str(cause).strip().splitlines() or [""])[0][:200]
        raise KdxError(f"hf_text: cannot read {', '.join(files[train_split] + files[test_split])} as {fmt} "
                       f"({type(cause).__name__}: {first}); fix the files (UTF-8 text; one JSON object per line for "
                       ".jsonl; a header row for .csv; the same columns in both splits)") from None


@DATASETS.register()
def hf_text(path: str = "", text_column: str = "text", label_column: str = "label", train_split: str = "train",
            test_split: str = "test", domain_column: str = "", max_length: int = 64, tokenizer: str = "",
            vocab_size: int = 8000, lowercase: bool = True) -> Dataset:
    """Any text-classification set: a save_to_disk DatasetDict or train/test json/csv/parquet files in data.path."""
    import datasets

    dd = _open_text(path, train_split, test_split)
    for split in (train_split, test_split):
        if split not in dd:
            raise KdxError(f"hf_text: {path} has no split '{split}'; it has {', '.join(dd)} (set data.train_split / "
                           "data.test_split)")
        for col, arg in ((text_column, "text_column"), (label_column, "label_column"),
                         *(((domain_column, "domain_column"),) if domain_column else ())):
            if col not in dd[split].column_names:
                raise KdxError(f"hf_text: split '{split}' of {path} has no column '{col}'; it has "
                               f"{', '.join(dd[split].column_names)} (set data.{arg})")
    train, test = dd[train_split], dd[test_split]
    if len(train) == 0 or len(test) == 0:
        raise KdxError(f"hf_text: split '{train_split if len(train) == 0 else test_split}' of {path} is empty; "
                       "give both splits rows")
    where = f"hf_text: {path}"
    col = lambda s, name, c: _column(s, name, c, where)  # noqa: E731
    labels = [col(train, train_split, label_column), col(test, test_split, label_column)]
    feature = train.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        classes, ys = list(feature.names), labels
        for split, y in zip((train_split, test_split), ys):
            _check_class_indices(y, len(classes), f"{where}: split '{split}'")
    else:
        classes, *ys = index_labels(labels[0], labels[1], f"{where}, column '{label_column}'")
    texts = [_texts(col(s, name, text_column), f"{where}: split '{name}', column '{text_column}'")
             for s, name in ((train, train_split), (test, test_split))]
    extra = {}
    if domain_column:
        dom = [[t if isinstance(t, str) else "" for t in col(s, name, domain_column)]
               for s, name in ((train, train_split), (test, test_split))]
        te = [(s, y) for s, y in zip(_texts(dom[1], where), ys[1]) if s.strip()]
        extra = {"domain": ([s for s, _ in te], [y for _, y in te]),
                 f"{domain_column}_train": ([s for s in _texts(dom[0], where) if s.strip()], None)}
    return text_dataset("hf_text", texts[0], ys[0], texts[1], ys[1], classes, tokenizer=tokenizer,
                        vocab_size=vocab_size, max_length=max_length, lowercase=lowercase, extra_texts=extra)


ANCHOR_FORMAT = 1  # bump when the anchor's recipe changes


def tfidf_logreg(train_texts, y_train, test_sets: dict, max_features: int = 50_000, C: float = 5.0, seed: int = 0):
    """TF-IDF (words and word pairs, sublinear tf, min_df 2) + logistic regression (saga) fit on the train
    texts: ({name: predicted labels (numpy)} for each list of texts in `test_sets`, number of features)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2), max_features=max_features)
    x_train = vec.fit_transform(list(train_texts))
    clf = LogisticRegression(C=C, solver="saga", max_iter=300, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # saga at 300 epochs is within 0.1 pt of lbfgs
        clf.fit(x_train, np.asarray(y_train))
    return {k: clf.predict(vec.transform(list(v))) for k, v in test_sets.items()}, int(x_train.shape[1])


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

