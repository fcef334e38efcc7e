"""Generators for fuzzing kdx's file readers, in one place every loader's test reuses.

* `fuzz(n)`: the hypothesis settings every fuzz test runs under: n examples, derandomized (the same
  examples on every machine and every run, so CI is reproducible), no example database, no deadline.
* Strategies for broken content: `corrupted(valid)` (truncated, emptied, bit-flipped, spliced, padded,
  oversized or replaced bytes of a valid file), `wrong_encodings(text)` (UTF-16, Latin-1, a BOM, NUL
  bytes, invalid UTF-8), `bad_yaml()` (syntax errors, non-mappings, python tags, wrong types),
  `junk_values()` (any JSON-like value, NaN and inf included), `arrays()` (numpy arrays of any dtype
  and shape, for wrong dtypes and shapes).
* Builders of small valid files in the real formats: IDX (`idx_bytes`), a Fashion-MNIST folder, CIFAR
  pickles, PNGs and an image folder, HF save_to_disk image sets, json/jsonl/csv/parquet text files,
  apt's list files, weights files (torch and safetensors), a kdx pool.
* `assert_named(err, path)`: the check every fuzz test makes of the error it gets: a KdxError naming
  the file (or a folder holding it) and saying what to do; `leftovers(folder)`: temporary or
  half-written files a failed load left behind.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from kdx.errors import KdxError


def fuzz(n: int = 40):
    """Settings for one fuzz test: `n` examples, the same ones everywhere (derandomize), no database.
    KDX_FUZZ_SCALE=10 runs ten times as many (a deeper search before a release; still reproducible)."""
    return settings(max_examples=max(1, round(n * float(os.environ.get("KDX_FUZZ_SCALE", "1")))), deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


# ---------------------------------------------------------------------------------------- broken bytes


class Broken:
    """Broken content and how it was made (a plain class: hypothesis prints its short repr, not the whole file)."""

    def __init__(self, how: str, data: bytes):
        self.how, self.data = how, data

    def __repr__(self) -> str:
        return f"Broken({self.how}, {len(self.data)} bytes, starts {self.data[:24]!r})"


MUTATIONS = ("empty", "truncate", "flip", "splice", "pad", "oversize", "random", "zero_head", "repeat")


@st.composite
def corrupted(draw, valid: bytes, mutations: tuple[str, ...] = MUTATIONS) -> Broken:
    """`valid` broken one way: cut short, emptied, bytes flipped, junk spliced in or appended, made far
    larger than it should be, replaced by random bytes, its header zeroed, or repeated."""
    how = draw(st.sampled_from(mutations))
    n = len(valid)
    if how == "empty":
        data = b""
    elif how == "truncate":
        data = valid[:draw(st.integers(0, max(n - 1, 0)))]
    elif how == "flip":
        data = bytearray(valid)
        for i in draw(st.lists(st.integers(0, max(n - 1, 0)), min_size=1, max_size=8, unique=True)):  # unique: no flip undone
            if data:
                data[i] ^= draw(st.integers(1, 255))
        data = bytes(data)
    elif how == "splice":
        at = draw(st.integers(0, n))
        data = valid[:at] + draw(st.binary(min_size=1, max_size=64)) + valid[at:]
    elif how == "pad":
        data = valid + draw(st.binary(min_size=1, max_size=64))
    elif how == "oversize":  # far more bytes than the header announces (a file glued onto another)
        data = valid + bytes([draw(st.integers(0, 255))]) * draw(st.sampled_from([4096, 1 << 20]))
    elif how == "random":
        data = draw(st.binary(min_size=1, max_size=max(n, 64)))
    elif how == "zero_head":
        k = draw(st.integers(1, min(max(n, 1), 64)))
        data = bytes(k) + valid[k:]
    else:  # repeat: the file twice, as an interrupted append would leave it
        data = valid * 2
    return Broken(how, data)


@st.composite
def wrong_encodings(draw, text: str) -> Broken:
    """`text` in an encoding kdx does not read (UTF-16, UTF-32, Latin-1 with non-ASCII), with a BOM, NUL
    bytes or invalid UTF-8 sequences."""
    how = draw(st.sampled_from(["utf-16", "utf-32", "latin-1", "bom", "nul", "invalid-utf8", "cp1252"]))
    if how in ("utf-16", "utf-32"):
        data = text.encode(how)
    elif how in ("latin-1", "cp1252"):
        data = (text + " caf\u00e9 \u00bd").encode(how)
    elif how == "bom":
        data = b"\xef\xbb\xbf" + text.encode()
    elif how == "nul":
        at = draw(st.integers(0, len(text)))
        data = text[:at].encode() + b"\0" * draw(st.integers(1, 4)) + text[at:].encode()
    else:
        at = draw(st.integers(0, len(text)))
        data = text[:at].encode() + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80\x80"])) + text[at:].encode()
    return Broken(how, data)


def broken_text_or_bytes(valid: bytes) -> st.SearchStrategy[Broken]:
    """Byte-level breakage or a wrong encoding of a valid text file."""
    return st.one_of(corrupted(valid), wrong_encodings(valid.decode("utf-8", "replace")))


# ---------------------------------------------------------------------------------------- wrong values


def junk_values(max_leaves: int = 6) -> st.SearchStrategy:
    """Any JSON-like value (None, bools, ints of any size, floats with NaN and inf, text with any code
    point, lists, dicts): what a hand-edited or mis-exported file holds where a number or name belongs."""
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=12), st.sampled_from(["", " ", "\ud800", "1e999", "nan", "-1", "\x00"]))
    return st.recursive(leaf, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=5), c, max_size=3)),
                        max_leaves=max_leaves)


DTYPES = ["uint8", "int8", "int16", "int32", "int64", "uint16", "float16", "float32", "float64", "bool",
          "complex64", "U3", "S3", "O"]


@st.composite
def arrays(draw, max_dims: int = 4, max_side: int = 5, dtypes: list[str] = DTYPES) -> np.ndarray:
    """A numpy array of any of `dtypes` (default: numbers, strings, bytes, objects) and shape (0-d to
    max_dims, sides 0..max_side), floats sometimes NaN or inf."""
    dtype = draw(st.sampled_from(dtypes))
    shape = tuple(draw(st.lists(st.integers(0, max_side), max_size=max_dims)))
    size = int(np.prod(shape)) if shape else 1
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if dtype in ("U3", "S3", "O"):
        a = np.array([str(v) for v in rng.integers(0, 1000, size)], dtype=dtype)
    elif dtype == "bool":
        a = rng.integers(0, 2, size).astype(bool)
    elif dtype.startswith(("float", "complex")):
        with np.errstate(over="ignore"):  # 1e30 overflows float16/float32 to inf on purpose
            a = (rng.standard_normal(size) * draw(st.sampled_from([1.0, 255.0, 1e30]))).astype(dtype)
        if size and draw(st.booleans()):
            a[0] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    else:
        info = np.iinfo(dtype)
        a = rng.integers(info.min, int(info.max) + 1, size, dtype=dtype)
    return a.reshape(shape)


# ------------------------------------------------------------------------------------------- YAML


VALID_RUN_YAML = "data:\n  name: digits\nsource:\n  name: train\ndistill:\n  samples: 1000\n  lr: 0.05\nseed: 0\n"

YAML_BREAKS = [
    "data: [digits\n", "data:\n  name: digits\n source: x\n", "\tdata: digits\n", "data: {name: digits\n",
    "data: &a\n  name: *b\n", "- data\n- source\n", "just a sentence\n", "42\n", "~\n", "[]\n",
    "data: !!python/object/apply:os.system ['echo pwned']\n", "data:\n  name: digits\ndata:\n  name: cifar10\n",
    "? [a, b]\n: c\n", "1: 2\n", "distill: 5\n", "distill:\n  samples: many\n", "distill:\n  samples: 1e400\n",
    "distill:\n  lr: .nan\n", "distill:\n  samples: [1, 2]\n", "seed: 99999999999999999999999999\n",
    "teacher: {train: {epochs: -1}}\n", "nonsense_key: 1\n", "data: null\n", "source: []\n", "eval: {n: '}'}\n",
    "distill:\n  batch_size: 0\n", "'unclosed: 1\n", "data:\n  name: digits\n  ? x\n", "%YAML 9.9\n---\ndata: {}\n",
    "--- a\n--- b\n", "data: {name: digits}\n...\n---\nseed: 1\n",
]


@st.composite
def bad_yaml(draw, valid: str = VALID_RUN_YAML, breaks: list[str] = YAML_BREAKS) -> Broken:
    """A YAML config that is broken: one of the usual syntax and type mistakes appended to or replacing a
    valid one, a random mapping of junk values, or the valid file's bytes corrupted or re-encoded."""
    how = draw(st.sampled_from(["replace", "append", "junk_mapping", "bytes", "encoding", "deep"]))
    if how == "replace":
        text = draw(st.sampled_from(breaks))
    elif how == "append":
        text = valid + draw(st.sampled_from(breaks))
    elif how == "junk_mapping":
        keys = st.sampled_from(["data", "source", "distill", "teacher", "student", "eval", "seed", "cache_dir", "x"])
        text = json.dumps(draw(st.dictionaries(keys, junk_values(), max_size=4)), allow_nan=True) + "\n"
    elif how == "deep":
        depth = draw(st.sampled_from([50, 2000]))
        text = "data: " + "[" * depth + "]" * depth + "\n"
    else:
        b = draw(corrupted(valid.encode()) if how == "bytes" else wrong_encodings(valid))
        return Broken(f"yaml-{b.how}", b.data)
    return Broken(f"yaml-{how}", text.encode("utf-8", "surrogatepass"))


# ------------------------------------------------------------------------------------------ checks


FIX_WORDS = ("delete", "re-", "rebuild", "fix", "pass", "set", "give", "save", "point", "use", "drop", "run",
             "check", "build", "write", "replace", "remove", "convert", "pick", "encode", "rename", "move", "keep",
             "must be", "e.g.")  # "must be >= 1", "of the form key=value (e.g. ...)": the fix is the allowed value


def assert_named(err: BaseException, *paths) -> str:
    """`err` is a KdxError naming one of `paths` (or a folder above it) and saying what to do: the
    message is one line and holds one of the fix verbs. Returns the message."""
    assert isinstance(err, KdxError), f"{type(err).__name__} instead of a KdxError: {err}"
    msg = str(err)
    names = set()
    for p in paths:
        p = Path(p)
        names.update(str(q) for q in (p, *p.parents) if len(q.parts) > 2)
    assert any(n in msg for n in names), f"the message does not name {paths[0]}: {msg}"
    assert "\n" not in msg.strip(), f"not one line: {msg!r}"
    assert any(w in msg.lower() for w in FIX_WORDS), f"the message says no fix: {msg}"
    return msg


def loads_or_named(call, *paths):
    """call() -> (result, None), or (None, message) when it raised a KdxError naming one of `paths`;
    any other exception fails the test (with its traceback)."""
    try:
        return call(), None
    except KdxError as e:
        return None, assert_named(e, *paths)


TEMP_MARKS = (".tmp", ".incomplete", ".partial")


def leftovers(*folders) -> list[str]:
    """Temporary or half-written files and folders under `folders` (kdx.io's .NAME.*.tmp, `.tmpPID`,
    datasets' .incomplete): what a failed load or write must not leave behind."""
    out = []
    for folder in folders:
        folder = Path(folder)
        if folder.exists():
            out += [str(p) for p in folder.rglob("*") if any(m in p.name for m in TEMP_MARKS)]
    return out


def check_dataset(ds) -> None:
    """What a Dataset that loaded must be: labels in range, one per input, the same input shape in both
    splits, no empty split."""
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        assert len(x) == len(y) > 0, (split, x.shape, y.shape)
        assert y.ndim == 1 and int(y.min()) >= 0 and int(y.max()) < ds.num_classes, (split, y.min(), y.max())
    assert ds.x_train.shape[1:] == ds.x_test.shape[1:]


# ----------------------------------------------------------------------------------- valid builders


IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
             np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(array: np.ndarray, *, code: int | None = None, dims: tuple[int, ...] | None = None) -> bytes:
    """An IDX file's bytes (the MNIST format): magic 0 0 dtype-code ndim, big-endian int32 dims, data.
    `code` and `dims` override the header (to lie about the dtype or the shape)."""
    a = np.asarray(array)
    if a.dtype.kind in "iuf" and a.dtype.itemsize > 1:
        a = a.astype(a.dtype.newbyteorder(">"))
    dims = a.shape if dims is None else dims
    code = IDX_CODES[a.dtype] if code is None else code
    return bytes([0, 0, code, len(dims) % 256]) + b"".join(struct.pack(">i", d) for d in dims) + a.tobytes()


FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def fashion_mnist_dir(d: Path, gz: bool = True, n_train: int = 3, n_test: int = 2) -> dict[str, Path]:
    """The four Fashion-MNIST IDX files (tiny), gzipped or not: {name: path}."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {FASHION_FILES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              FASHION_FILES[1]: (np.arange(n_train) % 10).astype(np.uint8),
              FASHION_FILES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              FASHION_FILES[3]: (np.arange(n_test) % 10).astype(np.uint8)}
    out = {}
    for name, a in arrays.items():
        raw = idx_bytes(a)
        path = d / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
        out[name] = path
    return out


CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


def cifar10_batch(n: int = 2, seed: int = 0, bytes_keys: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    d = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": [int(v) for v in rng.integers(0, 10, n)],
         "batch_label": "training batch"}
    return {k.encode(): v for k, v in d.items()} if bytes_keys else d


def cifar10_dir(d: Path) -> dict[str, Path]:
    """torchvision's cifar-10-batches-py, tiny: five train batches, a test batch (bytes keys, as the
    official Python 2 pickles decode) and batches.meta."""
    d.mkdir(parents=True, exist_ok=True)
    objs = {f"data_batch_{i}": cifar10_batch(seed=i) for i in range(1, 6)}
    objs["test_batch"] = cifar10_batch(seed=9, bytes_keys=True)
    objs["batches.meta"] = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                            "ship", "truck"], "num_cases_per_batch": 2}
    for name, obj in objs.items():
        (d / name).write_bytes(pickle.dumps(obj, protocol=2))
    return {name: d / name for name in objs}


def png_bytes(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    from PIL import Image

    img = Image.fromarray(array)
    if mode is not None:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def huge_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A few hundred bytes of valid PNG whose header announces width x height pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + _chunk(b"IEND", b"")


def image_folder_dir(root: Path, size: int = 6) -> list[Path]:
    """ROOT/{train,test}/{ant,bee}/N.png (RGB, size x size): the image files."""
    rng = np.random.default_rng(0)
    files = []
    for split, n in (("train", 2), ("test", 1)):
        for cls in ("ant", "bee"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                f = root / split / cls / f"{i}.png"
                f.write_bytes(png_bytes(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
                files.append(f)
    return files


def hf_image_dict(path: Path, train: dict, test: dict, features=None) -> Path:
    """A DatasetDict written by save_to_disk from plain columns."""
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict(train, features=features),
                          "test": datasets.Dataset.from_dict(test, features=features)}).save_to_disk(str(path))
    return path


def hf_png_set(path: Path, n_train: int = 3, n_test: int = 2, size: int = 5) -> Path:
    """A small image-classification DatasetDict (PIL images, ClassLabel) on disk."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(1)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    cols = lambda n: {"image": [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)],  # noqa: E731
                      "label": [i % 2 for i in range(n)]}
    return hf_image_dict(path, cols(n_train), cols(n_test), features)


TEXT_ROWS = [{"text": "the cat sat on the mat", "label": "pets"}, {"text": "stocks fell sharply today", "label": "money"},
             {"text": "a dog chased the ball", "label": "pets"}, {"text": "the bank raised its rates", "label": "money"}]


def text_file_bytes(rows: list[dict], fmt: str) -> bytes:
    """Rows as the bytes of a .jsonl, .json, .csv or .parquet file."""
    import pandas as pd

    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows).encode()
    if fmt == "json":
        return json.dumps(rows).encode()
    df = pd.DataFrame(rows)
    if fmt == "csv":
        return df.to_csv(index=False).encode()
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def text_files_dir(d: Path, fmt: str, train: list[dict] = TEXT_ROWS, test: list[dict] = TEXT_ROWS[:2]) -> dict[str, Path]:
    """DIR/train.FMT and DIR/test.FMT (what `hf_text` reads with data.path=DIR)."""
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, rows in (("train", train), ("test", test)):
        out[split] = d / f"{split}.{fmt}"
        out[split].write_bytes(text_file_bytes(rows, fmt))
    return out


TABLE_ROWS = [{"a": 0.5 * i - 2.0, "colour": ["red", "green", "blue"][i % 3], "b": float(i % 4), "label": ["no", "yes"][(i // 2) % 2]}
              for i in range(12)]


def table_files_dir(d: Path, fmt: str, rows: list[dict] = TABLE_ROWS) -> Path:
    """DIR/table.FMT (.csv or .parquet: what `table_file` reads with data.path=FILE)."""
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"table.{fmt}"
    path.write_bytes(text_file_bytes(rows, fmt))
    return path


def estimator_bytes(fmt: str) -> bytes:
    """A fitted scikit-learn classifier (2 classes, 3 features) as a .skops file's or a pickle's bytes."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = np.arange(24, dtype=float).reshape(8, 3)
    est = LogisticRegression().fit(x, np.arange(8) % 2)
    if fmt == "skops":
        import skops.io as sio

        return sio.dumps(est)
    return pickle.dumps(est)


def weights_bytes(state, fmt: str) -> bytes:
    """A state dict as torch.save's zip (fmt "pt") or safetensors bytes."""
    import torch

    if fmt == "pt":
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()
    from safetensors.torch import save

    return save(state)


def tiny_image_data(n: int = 6, size: int = 5, channels: int = 3):
    """A from_tensors image Dataset of n random uint8 images, 2 classes."""
    import torch

    from kdx.data import from_tensors

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    return from_tensors(x, torch.arange(n) % 2, x[:2], torch.arange(2) % 2, classes=["a", "b"], name="tiny")


def pool_dir(out: Path, data=None, n: int = 4) -> Path:
    """A synthesis pool as `kdx synth` writes it (kdx.pool.save_pool), from a tiny untrained teacher."""
    import torch

    from kdx.models import build_model
    from kdx.pool import save_pool

    data = data or tiny_image_data()
    teacher = build_model({"name": "mlp", "hidden": [8]}, data, "teacher.model", 0)
    x = torch.rand((n, *data.input_shape), generator=torch.Generator().manual_seed(1))
    save_pool(out, data, x, teacher, {"method": "fuzz", "n": n})
    return out


def files_under(folder: Path) -> list[Path]:
    """Every file under `folder`, sorted (the parts of a save_to_disk set: arrow data, json metadata)."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


APT_TRANSLATION = """\
Package: python3-foo
Description-md5: aaaa0000aaaa0000aaaa0000aaaa0000
Description-en: Python 3 module for frobbing foo widgets
 Foo is a library that frobs widgets and ships bindings for every widget kind.
 .
 This package contains the module for Python 3.

Package: netthing
Description-md5: cccc0000cccc0000cccc0000cccc0000
Description-en: daemon that forwards network packets
 netthing listens on a socket and forwards every packet it receives to the
 interfaces named in its configuration, keeping statistics per route.
"""

APT_PACKAGES = """\
Package: python3-foo
Source: foo (1.2-3)
Description-md5: aaaa0000aaaa0000aaaa0000aaaa0000
Section: python

Package: netthing
Description-md5: cccc0000cccc0000cccc0000cccc0000
Section: net
"""

APT_PREFIX = "deb.debian.org_debian_dists_bookworm_main_"


def compress(data: bytes, suffix: str) -> bytes:
    """`data` as apt stores it under /var/lib/apt/lists with this suffix ("", .gz, .xz, .bz2, .lzma, .lz4, .zst)."""
    import bz2
    import lzma
    import subprocess

    if suffix in (".lz4", ".zst"):
        return subprocess.run(["lz4" if suffix == ".lz4" else "zstd", "-c"], input=data, check=True, capture_output=True).stdout
    return {"": lambda b: b, ".gz": lambda b: gzip.compress(b, mtime=0), ".xz": lzma.compress, ".bz2": bz2.compress,
            ".lzma": lambda b: lzma.compress(b, format=lzma.FORMAT_ALONE)}[suffix](data)


def apt_lists_dir(d: Path, suffix: str = ".gz") -> dict[str, Path]:
    """apt's lists folder with one English Translation file and one Packages list (file names as apt writes them)."""
    d.mkdir(parents=True, exist_ok=True)
    out = {"translation": d / f"{APT_PREFIX}i18n_Translation-en{suffix}", "packages": d / f"{APT_PREFIX}binary-amd64_Packages{suffix}"}
    out["translation"].write_bytes(compress(APT_TRANSLATION.encode(), suffix))
    out["packages"].write_bytes(compress(APT_PACKAGES.encode(), suffix))
    return out


def hf_model_dir(path: Path, labels: list[str], size: int = 8) -> Path:
    """A tiny ViT image classifier and its processor as save_pretrained writes them (config.json,
    model.safetensors, preprocessor_config.json): what `teacher.model={name: hf, path: DIR}` reads."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=size, patch_size=4, num_channels=3, hidden_size=8, num_hidden_layers=1,
                                 num_attention_heads=1, intermediate_size=8, num_labels=len(labels),
                                 id2label=dict(enumerate(labels)), label2id={v: i for i, v in enumerate(labels)})
    transformers.ViTForImageClassification(cfg).save_pretrained(path)
    transformers.ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(path)
    return path
