"""The registered text-classification datasets read from files: `debian_descriptions` (kdx.data.debian's
offline corpus) and `hf_text` (any text-classification DatasetDict saved to disk, or json/csv/parquet
files read with `datasets`). Each checks what it reads, naming the file, row and fix, then tokenises
through kdx.data.text.text_dataset."""
from __future__ import annotations

import contextlib
from pathlib import Path

from kdx.data.base import Dataset, index_labels
from kdx.data.hf import check_arrow_files, read_column, splits
from kdx.data.text import text_dataset
from kdx.errors import KdxError, first_line
from kdx.registry import DATASETS


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
                       f"{first_line(e, 200)}); rebuild or re-save it") from None
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
    if "unlabeled" in dd:  # the masked-LM pretraining texts (model bert's pretrain), also a downstream pool
        extra["unlabeled"] = (_texts(_column(dd["unlabeled"], "unlabeled", "text", where), f"{where}: split 'unlabeled'"), None)
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


def _open_text(path: str, train_split: str, test_split: str, *more_splits: str):
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
    for split in (train_split, test_split, *more_splits):
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
            vocab_size: int = 8000, lowercase: bool = True, unlabeled_split: str = "") -> Dataset:
    """Any text-classification set: a save_to_disk DatasetDict or train/test json/csv/parquet files in data.path.
    `unlabeled_split` names a split of texts without labels (its text_column only): extra["unlabeled"], the
    corpus a `bert` model's `pretrain` learns from, and a downstream pool (source downstream split=unlabeled)."""
    import datasets

    dd = _open_text(path, train_split, test_split, *([unlabeled_split] if unlabeled_split else []))
    columns = {"text_column": text_column, "label_column": label_column,
               **({"domain_column": domain_column} if domain_column else {})}
    train, test = splits(dd, "hf_text", path, train_split, test_split, columns)
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
    if unlabeled_split:
        if unlabeled_split not in dd:
            raise KdxError(f"{where}: no split '{unlabeled_split}' (data.unlabeled_split); it has {', '.join(dd)}")
        if text_column not in dd[unlabeled_split].column_names:
            raise KdxError(f"{where}: split '{unlabeled_split}' has no column '{text_column}' (data.text_column); "
                           f"it has {', '.join(dd[unlabeled_split].column_names)}")
        extra["unlabeled"] = (_texts(col(dd[unlabeled_split], unlabeled_split, text_column),
                                     f"{where}: split '{unlabeled_split}', column '{text_column}'"), None)
    return text_dataset("hf_text", texts[0], ys[0], texts[1], ys[1], classes, tokenizer=tokenizer,
                        vocab_size=vocab_size, max_length=max_length, lowercase=lowercase, extra_texts=extra)
