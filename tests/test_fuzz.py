"""Every loader and file reader, fuzzed: given broken, empty, truncated, oversized, wrongly typed or wrongly
encoded content, each loads correctly or raises a KdxError naming the file and the fix, never another
exception, and leaves nothing written half-way. The generators live in tests/fuzzing.py."""
from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import (FASHION_FILES, TEXT_ROWS, VALID_RUN_YAML, Broken, arrays, assert_named, bad_yaml, broken_text_or_bytes, check_dataset,
                     cifar10_batch, cifar10_dir, corrupted, fashion_mnist_dir, files_under, fuzz, hf_image_dict, hf_png_set, huge_png,
                     idx_bytes, image_folder_dir, junk_values, leftovers, loads_or_named, png_bytes,
                     TABLE_ROWS, estimator_bytes, table_files_dir, text_files_dir, weights_bytes)
from conftest import build_data
from kdx.data.idx import read_idx
from kdx.errors import KdxError


pytestmark = pytest.mark.usefixtures("no_real_data")


def scratch():
    """A fresh folder per hypothesis example (pytest's tmp_path is shared by all examples of a test)."""
    return tempfile.TemporaryDirectory(prefix="kdx-fuzz-")


# ------------------------------------------------------------------------------------ IDX (Fashion-MNIST)


@st.composite
def idx_headers(draw):
    """An IDX file whose header may lie: any dtype code, ndim, dims (negative, zero, huge) and payload length."""
    code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0x07, 0xFF]))
    dims = tuple(draw(st.lists(st.one_of(st.integers(0, 6), st.sampled_from([-1, 2**31 - 1, 2**16])), max_size=4)))
    payload = draw(st.binary(max_size=200))
    return Broken(f"header code={code:#x} dims={dims}", idx_bytes(np.frombuffer(payload, np.uint8), code=code, dims=dims))


@fuzz(60)
@given(broken=st.one_of(idx_headers(), corrupted(idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4)))),
       gz=st.booleans())
def test_read_idx_fuzzed(broken, gz):
    with scratch() as d:
        path = Path(d) / ("f-idx3-ubyte" + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(broken.data, mtime=0) if gz else broken.data)
        out, _ = loads_or_named(lambda: read_idx(path), path)
        if out is not None:  # what loaded is what the header says
            assert out.ndim == broken.data[3] and out.numel() * out.element_size() == len(broken.data) - 4 - 4 * out.ndim


@fuzz(60)
@given(which=st.sampled_from(FASHION_FILES), gz=st.booleans(), data=st.data())
def test_fashion_mnist_files_fuzzed(which, gz, data):
    with scratch() as d:
        files = fashion_mnist_dir(Path(d), gz=gz)
        raw = gzip.decompress(files[which].read_bytes()) if gz else files[which].read_bytes()
        layer = data.draw(st.sampled_from(["file", "content"]) if gz else st.just("file"))
        if layer == "file":  # the bytes on disk (for .gz: the compressed stream)
            broken = data.draw(corrupted(files[which].read_bytes()))
            files[which].write_bytes(broken.data)
        else:  # a valid gzip of broken IDX content
            broken = data.draw(st.one_of(corrupted(raw), idx_headers()))
            files[which].write_bytes(gzip.compress(broken.data, mtime=0))
        ds, _ = loads_or_named(lambda: build_data({"name": "fashion_mnist", "root": d}), files[which])
        if ds is not None:
            check_dataset(ds)
            assert ds.x_train.shape[1:] == (1, 28, 28)


IDX_DTYPES = ["uint8", "int8", "int16", "int32", "float32", "float64"]
idx_arrays = arrays(max_dims=4, max_side=4, dtypes=IDX_DTYPES)


@fuzz(30)
@given(labels=idx_arrays, images=st.one_of(st.none(), idx_arrays))
def test_fashion_mnist_wrong_dtypes_and_shapes(labels, images):
    """IDX files holding the wrong dtype or shape for Fashion-MNIST's labels (and maybe its images)."""
    with scratch() as d:
        files = fashion_mnist_dir(Path(d), gz=False)
        targets = [files["train-labels-idx1-ubyte"]]
        targets[0].write_bytes(idx_bytes(labels))
        if images is not None:
            targets.append(files["train-images-idx3-ubyte"])
            targets[1].write_bytes(idx_bytes(images))
        ds, _ = loads_or_named(lambda: build_data({"name": "fashion_mnist", "root": d}), *targets)
        if ds is not None:
            check_dataset(ds)


# ------------------------------------------------------------------------------------------ image folder


IMAGE_VARIANTS = ["png", "jpeg-as-png", "bmp", "grey", "rgba", "palette", "16-bit", "1-bit", "cmyk-jpeg", "huge",
                  "text", "one-pixel"]


@st.composite
def image_files(draw):
    """An image file's bytes: another format or mode than the others, a decompression bomb, text, or broken PNG."""
    rng = np.random.default_rng(draw(st.integers(0, 99)))
    rgb = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    kind = draw(st.sampled_from(IMAGE_VARIANTS + ["broken"] * 4))
    if kind == "broken":
        return draw(corrupted(png_bytes(rgb)))
    data = {"png": lambda: png_bytes(rgb), "jpeg-as-png": lambda: png_bytes(rgb, "JPEG"), "bmp": lambda: png_bytes(rgb, "BMP"),
            "grey": lambda: png_bytes(rgb, mode="L"), "rgba": lambda: png_bytes(rgb, mode="RGBA"),
            "palette": lambda: png_bytes(rgb, mode="P"), "16-bit": lambda: png_bytes(rgb[..., 0].astype(np.uint16) * 257),
            "1-bit": lambda: png_bytes(rgb, mode="1"), "cmyk-jpeg": lambda: png_bytes(rgb, "JPEG", mode="CMYK"),
            "huge": huge_png, "text": lambda: b"not an image\n", "one-pixel": lambda: png_bytes(rgb[:1, :1])}[kind]()
    return Broken(kind, data)


@fuzz(50)
@given(image=image_files(), which=st.integers(0, 5), grayscale=st.booleans())
def test_image_folder_fuzzed(image, which, grayscale):
    with scratch() as d:
        files = image_folder_dir(Path(d) / "imgs")
        files[which].write_bytes(image.data)
        ds, _ = loads_or_named(lambda: build_data({"name": "image_folder", "root": f"{d}/imgs", "size": 6,
                                              "grayscale": grayscale}), files[which])
        if ds is not None:
            check_dataset(ds)
            assert ds.x_train.shape == (4, 1 if grayscale else 3, 6, 6) and ds.x_train.dtype == torch.uint8


# ------------------------------------------------------------------------------------------------ CIFAR


class _Runs:
    """A pickle that calls os.system when loaded: a dataset file must never run code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@st.composite
def cifar_batches(draw):
    """A CIFAR batch dict with wrongly typed parts: data and labels of any dtype and shape, keys missing
    or of another type, or not a dict at all."""
    batch = cifar10_batch(n=2)
    how = draw(st.sampled_from(["data", "labels", "drop", "junk", "not_dict", "mismatch"]))
    if how == "data":
        batch["data"] = draw(st.one_of(arrays(max_dims=3, max_side=4), junk_values()))
    elif how == "labels":
        batch["labels"] = draw(st.one_of(arrays(max_dims=2, max_side=3), junk_values(),
                                         st.lists(st.integers(-2**40, 2**40), min_size=2, max_size=2)))
    elif how == "drop":
        del batch[draw(st.sampled_from(["data", "labels"]))]
    elif how == "junk":
        return draw(st.dictionaries(st.one_of(st.text(max_size=6), st.binary(max_size=6), st.integers()), junk_values(), max_size=3))
    elif how == "not_dict":
        return draw(junk_values())
    else:  # three images, two labels
        batch["data"] = np.zeros((3, 3072), np.uint8)
    return batch


@fuzz(60)
@given(which=st.sampled_from(["data_batch_2", "test_batch", "batches.meta"]), data=st.data())
def test_cifar_files_fuzzed(which, data):
    with scratch() as d:
        files = cifar10_dir(Path(d) / "cifar-10-batches-py")
        how = data.draw(st.sampled_from(["bytes", "content", "code"]))
        if how == "bytes":
            broken = data.draw(corrupted(files[which].read_bytes()))
            files[which].write_bytes(broken.data)
        elif how == "content":
            obj = data.draw(cifar_batches() if which != "batches.meta" else
                            st.one_of(junk_values(), st.fixed_dictionaries({"label_names": junk_values()})))
            files[which].write_bytes(pickle.dumps(obj, protocol=data.draw(st.sampled_from([2, 4]))))
        else:
            files[which].write_bytes(pickle.dumps({"data": _Runs(Path(d) / "ran"), "labels": [0, 1]}))
        ds, _ = loads_or_named(lambda: build_data({"name": "cifar10", "root": d}), files[which])
        assert not (Path(d) / "ran").exists(), "loading a CIFAR file ran code from it"
        if ds is not None:
            check_dataset(ds)
            assert ds.x_train.shape[1:] == (3, 32, 32) and ds.num_classes == 10


# --------------------------------------------------------------------------- Hugging Face image sets


def _pil(mode, seed):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)).convert(mode)


pil_images = st.builds(_pil, st.sampled_from(["RGB", "L", "RGBA", "P", "1", "I", "F", "CMYK", "LA", "I;16"]), st.integers(0, 9))


@st.composite
def image_cells(draw):
    """What an image column may hold: arrays of any dtype and shape, nested lists, junk values, PIL images of any mode."""
    return draw(st.one_of(arrays(max_dims=4, max_side=4).map(lambda a: a.tolist() if a.dtype.kind in "biuf" else a),
                          junk_values(), pil_images))


@fuzz(50)
@given(data=st.data(), column=st.sampled_from(["image", "label"]))
def test_hf_image_set_wrongly_typed_columns(data, column):
    """A save_to_disk image set whose image or label cells hold wrongly typed values."""
    from hypothesis import assume

    rng = np.random.default_rng(0)
    good = {"image": [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8).tolist() for _ in range(3)], "label": [0, 1, 0]}
    cells = data.draw(st.lists(image_cells() if column == "image" else st.one_of(junk_values(), arrays(max_dims=1)),
                               min_size=1, max_size=3))
    train = {**good, column: (cells * 3)[:3]}
    with scratch() as d:
        try:
            hf_image_dict(Path(d) / "set", train, {k: v[:2] for k, v in good.items()})
        except Exception:  # noqa: BLE001 - datasets itself cannot store these cells: not a file kdx could meet
            assume(False)
        ds, _ = loads_or_named(lambda: build_data({"name": "hf", "path": f"{d}/set", "size": 4}), Path(d) / "set")
        if ds is not None:
            check_dataset(ds)
            assert ds.x_train.dtype == torch.uint8 and ds.x_train.shape[2:] == (4, 4)


def _arrow_errors():
    import pyarrow as pa

    return (pa.ArrowException,)


@fuzz(50)
@given(data=st.data())
def test_hf_image_set_files_fuzzed(data):
    """One file of a save_to_disk image set (the arrow data, dataset_info.json, state.json, dataset_dict.json) broken."""
    with scratch() as d:
        path = hf_png_set(Path(d) / "set")
        target = data.draw(st.sampled_from(files_under(path)))
        broken = data.draw(broken_text_or_bytes(target.read_bytes()) if target.suffix == ".json" else corrupted(target.read_bytes()))
        target.write_bytes(broken.data)
        ds, _ = loads_or_named(lambda: build_data({"name": "hf", "path": str(path)}), target)
        if ds is not None:
            check_dataset(ds)


# ------------------------------------------------------------------------------------------------ pools


@fuzz(30)
@given(data=st.data())
def test_pool_files_fuzzed(data):
    """A pool written by `kdx synth` (kdx.pool.save_pool) with one of its files broken, read back by the
    `downstream` source as a user does (source.dataset=hf source.args.path=POOL)."""
    from fuzzing import pool_dir, tiny_image_data

    from kdx.registry import SOURCES

    teacher_data = tiny_image_data()
    with scratch() as d:
        pool = pool_dir(Path(d) / "pool", teacher_data)
        assert not leftovers(d), leftovers(d)
        target = data.draw(st.sampled_from([f for f in files_under(pool) if f.name != "synth.json"]))
        broken = data.draw(broken_text_or_bytes(target.read_bytes()) if target.suffix == ".json" else corrupted(target.read_bytes()))
        target.write_bytes(broken.data)
        source, _ = loads_or_named(lambda: SOURCES.build({"name": "downstream", "dataset": "hf", "args": {"path": str(pool)}},
                                                         "source", data=teacher_data, seed=0), target)
        if source is not None:
            assert source.x.shape[1:] == teacher_data.input_shape


# ---------------------------------------------------------------------- text sets (hf_text, debian_descriptions)


TEXT_ARGS = {"max_length": 8, "vocab_size": 60}


@pytest.fixture
def text_cache(tmp_path, monkeypatch):
    """A kdx cache of its own (tokenizers, encoded splits), to check that nothing half-written is left in it."""
    monkeypatch.setenv("KDX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@fuzz(40)
@given(fmt=st.sampled_from(["jsonl", "json", "csv", "parquet"]), split=st.sampled_from(["train", "test"]), data=st.data())
def test_text_files_fuzzed(text_cache, fmt, split, data):
    """train/test .jsonl/.json/.csv/.parquet files broken at the byte level or wrongly encoded."""
    with scratch() as d:
        files = text_files_dir(Path(d), fmt)
        valid = files[split].read_bytes()
        broken = data.draw(corrupted(valid) if fmt == "parquet" else broken_text_or_bytes(valid))
        files[split].write_bytes(broken.data)
        ds, _ = loads_or_named(lambda: build_data({"name": "hf_text", "path": d, **TEXT_ARGS}), files[split])
        if ds is not None:
            check_dataset(ds)
        assert not leftovers(text_cache, Path(d)), leftovers(text_cache, Path(d))


text_cells = st.one_of(junk_values(), st.text(max_size=30), st.sampled_from(["\ud800 lone surrogate", "", "  ", "\x00\x01", "é" * 500]))


@fuzz(40)
@given(fmt=st.sampled_from(["jsonl", "json", "csv", "parquet"]), column=st.sampled_from(["text", "label"]), data=st.data())
def test_text_files_wrongly_typed(text_cache, fmt, column, data):
    """Rows whose text or label holds a wrongly typed value (None, numbers, lists, dicts, NaN, a lone surrogate)."""
    from hypothesis import assume

    cells = data.draw(st.lists(text_cells, min_size=1, max_size=4))
    rows = [{**r, column: cells[i % len(cells)]} for i, r in enumerate(TEXT_ROWS)]
    with scratch() as d:
        try:
            files = text_files_dir(Path(d), fmt, train=rows)
        except (TypeError, ValueError, OverflowError, UnicodeEncodeError) + _arrow_errors():
            assume(False)  # pandas/pyarrow cannot write these rows in this format: not a file kdx could meet
        ds, _ = loads_or_named(lambda: build_data({"name": "hf_text", "path": d, **TEXT_ARGS}), files["train"])
        if ds is not None:
            check_dataset(ds)
            assert ds.x_train.shape == (len(rows), TEXT_ARGS["max_length"])
        assert not leftovers(text_cache, Path(d)), leftovers(text_cache, Path(d))


@fuzz(30)
@given(name=st.sampled_from(["hf_text", "debian_descriptions"]), data=st.data())
def test_text_dataset_dict_files_fuzzed(text_cache, name, data):
    """One file of a save_to_disk text DatasetDict (what `kdx data build debian-descriptions` writes) broken."""
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["money", "pets"]),
                                  "short": datasets.Value("string")})
    col = lambda rows: {"text": [r["text"] for r in rows], "label": [int(r["label"] == "pets") for r in rows],  # noqa: E731
                        "short": [r["text"][:9] for r in rows]}
    with scratch() as d:
        path = hf_image_dict(Path(d) / "set", col(TEXT_ROWS), col(TEXT_ROWS[:2]), features)
        target = data.draw(st.sampled_from(files_under(path)))
        broken = data.draw(broken_text_or_bytes(target.read_bytes()) if target.suffix == ".json" else corrupted(target.read_bytes()))
        target.write_bytes(broken.data)
        ds, _ = loads_or_named(lambda: build_data({"name": name, "path": str(path), **TEXT_ARGS}), target)
        if ds is not None:
            check_dataset(ds)
        assert not leftovers(text_cache), leftovers(text_cache)


# ------------------------------------------------------------------------------ Debian apt lists


APT_SUFFIXES = ["", ".gz", ".xz", ".bz2", ".lzma", ".lz4", ".zst"]


@fuzz(60)
@given(suffix=st.sampled_from(APT_SUFFIXES), decompress=st.sampled_from(["python", "apt-helper"]), data=st.data())
def test_apt_list_files_fuzzed(suffix, decompress, data):
    """A list file apt stored, broken (compressed stream or content, any encoding): read_list_file returns
    text or names the file."""
    from fuzzing import APT_PREFIX, APT_TRANSLATION, compress

    from kdx.data import apt_lists

    if decompress == "apt-helper" and apt_lists.apt_helper() is None:
        decompress = "python"
    with scratch() as d:
        path = Path(d) / f"{APT_PREFIX}i18n_Translation-en{suffix}"
        layer = data.draw(st.sampled_from(["file", "content"]))
        raw = compress(APT_TRANSLATION.encode(), suffix)
        broken = data.draw(corrupted(raw) if layer == "file" else broken_text_or_bytes(APT_TRANSLATION.encode()))
        path.write_bytes(broken.data if layer == "file" else compress(broken.data, suffix))
        text, _ = loads_or_named(lambda: apt_lists.read_list_file(path, decompress), path)
        if text is not None:
            if layer == "file" and suffix not in ("", ".lzma"):  # a checksummed stream: intact, or refused
                intact = [APT_TRANSLATION] + [APT_TRANSLATION * 2] * (broken.how == "repeat")  # two streams are legal
                assert text in intact, f"{broken.how} {suffix} read as {len(text)} characters, not refused"
            apt_lists.parse_translation(text), apt_lists.parse_packages(text)  # parsing any text never raises


@fuzz(60)
@given(text=st.one_of(st.text(max_size=300), st.lists(st.sampled_from(
    ["Package: p", "Package:", ": x", "Description-en: s", " continued", " .", "\t tab", "", "#c", "Section: a/b/c",
     "Source: (1)", "Source: s (", "Description-md5:", "Description-en:", "  verbatim", "\x00", "\ud800"]), max_size=25).map("\n".join)))
def test_apt_parsers_take_any_text(text):
    from kdx.data import apt_lists

    for d in apt_lists.parse_translation(text):
        assert d.package and isinstance(d.long, str)
    for p in apt_lists.parse_packages(text):
        assert p.package and p.source and "/" not in p.section


@fuzz(25)
@given(which=st.sampled_from(["translation", "packages"]), data=st.data())
def test_debian_build_fuzzed(which, data):
    """`kdx data build debian-descriptions` over a lists folder with one file broken: a complete build or a
    KdxError naming the file, and no half-written output folder either way (an earlier build survives a failed one)."""
    from fuzzing import APT_PACKAGES, APT_TRANSLATION, apt_lists_dir

    from kdx.data import debian

    with scratch() as d:
        lists = apt_lists_dir(Path(d) / "lists", data.draw(st.sampled_from(["", ".gz", ".xz"])))
        out = Path(d) / "out"
        debian.build_debian_descriptions(out, lists["translation"].parent, sections=["python", "net"], min_chars=5,
                                         decompress="python")
        before = sorted(p.name for p in out.iterdir())
        valid = (APT_TRANSLATION if which == "translation" else APT_PACKAGES).encode()
        broken = data.draw(st.one_of(corrupted(lists[which].read_bytes()), broken_text_or_bytes(valid)))
        lists[which].write_bytes(broken.data)
        dsd, msg = loads_or_named(lambda: debian.build_debian_descriptions(out, lists[which].parent, sections=["python", "net"],
                                                                           min_chars=5, decompress="python"), lists[which])
        assert sorted(p.name for p in out.iterdir()) == before  # complete, old or new
        assert not leftovers(d), leftovers(d)
        if dsd is not None:
            assert set(dsd) == {"train", "test", "unlabeled"}


# ---------------------------------------------------------------------------------------- weights files


def _tiny_model():
    from kdx.models import build_model
    from fuzzing import tiny_image_data

    return build_model({"name": "mlp", "hidden": [4]}, tiny_image_data(size=3, channels=1), "student.model", 0)


@st.composite
def state_dicts(draw, model):
    """What a weights file may hold instead of the model's state dict: junk, wrong keys, wrong dtypes and shapes,
    non-tensor values, nested or wrapped dicts, non-string keys."""
    good = {k: v.clone() for k, v in model.state_dict().items()}
    how = draw(st.sampled_from(["good", "wrapped", "ddp", "junk", "int_keys", "dtype", "shape", "drop", "extra", "non_tensor", "nan"]))
    key = draw(st.sampled_from(sorted(good)))
    if how == "wrapped":
        return {draw(st.sampled_from(["model", "state_dict"])): good}
    if how == "ddp":
        return {f"module.{k}": v for k, v in good.items()}
    if how == "junk":
        return draw(junk_values())
    if how == "int_keys":
        return {i: v for i, v in enumerate(good.values())}
    if how == "dtype":
        good[key] = good[key].to(draw(st.sampled_from([torch.int64, torch.bool, torch.complex64, torch.float16, torch.uint8])))
    elif how == "shape":
        good[key] = torch.zeros(draw(st.lists(st.integers(0, 3), max_size=3)))
    elif how == "drop":
        del good[key]
    elif how == "extra":
        good["extra.weight"] = torch.zeros(2)
    elif how == "non_tensor":
        good[key] = draw(junk_values())
    elif how == "nan":
        good[key] = torch.full_like(good[key], float("nan")) if good[key].is_floating_point() else good[key]
    return good


@fuzz(60)
@given(fmt=st.sampled_from(["pt", "safetensors"]), data=st.data())
def test_weights_files_fuzzed(fmt, data):
    """`student.init` / `teacher.checkpoint` files: broken bytes, or a file holding something other than the model's
    state dict. load_weights loads the model or names the file."""
    from kdx.models.base import load_weights

    model = _tiny_model()
    with scratch() as d:
        path = Path(d) / f"w.{fmt}"
        if data.draw(st.booleans()):
            broken = data.draw(corrupted(weights_bytes(model.state_dict(), fmt)))
            path.write_bytes(broken.data)
        else:
            state = data.draw(state_dicts(model))
            try:
                path.write_bytes(weights_bytes(state, fmt))
            except Exception:  # noqa: BLE001 - safetensors stores only flat dicts of tensors
                from hypothesis import assume

                assume(False)
        loaded, _ = loads_or_named(lambda: load_weights(_tiny_model(), path, "student.init"), path)
        if loaded is not None:
            for k, v in loaded.state_dict().items():
                assert v.dtype == model.state_dict()[k].dtype and torch.isfinite(v).all()


# ---------------------------------------------------------------------------------- tables and black boxes


def check_table(ds, rows: int) -> None:
    check_dataset(ds)
    assert ds.modality == "tabular" and len(ds.x_train) + len(ds.x_test) == rows
    assert torch.isfinite(ds.x_train).all() and torch.isfinite(ds.x_test).all()
    for c, cats in ds.categories.items():  # codes index their categories
        assert set(ds.x_train[:, c].tolist()) <= set(map(float, range(len(cats))))


@fuzz(50)
@given(fmt=st.sampled_from(["csv", "parquet"]), data=st.data())
def test_table_files_fuzzed(fmt, data):
    """`table_file` .csv/.parquet tables broken at the byte level or wrongly encoded."""
    with scratch() as d:
        path = table_files_dir(Path(d), fmt)
        valid = path.read_bytes()
        broken = data.draw(corrupted(valid) if fmt == "parquet" else broken_text_or_bytes(valid))
        path.write_bytes(broken.data)
        ds, _ = loads_or_named(lambda: build_data({"name": "table_file", "path": str(path), "target": "label"}), path)
        if ds is not None:
            check_dataset(ds)
        assert not leftovers(Path(d))


@fuzz(50)
@given(fmt=st.sampled_from(["csv", "parquet"]), column=st.sampled_from(["a", "colour", "label"]), data=st.data())
def test_table_files_wrongly_typed(fmt, column, data):
    """Rows whose feature or label cells hold wrongly typed values (None, NaN, inf, huge ints, lists, dicts, text)."""
    from hypothesis import assume

    cells = data.draw(st.lists(text_cells, min_size=1, max_size=4))
    rows = [{**r, column: cells[i % len(cells)]} for i, r in enumerate(TABLE_ROWS)]
    with scratch() as d:
        try:
            path = table_files_dir(Path(d), fmt, rows)
        except (TypeError, ValueError, OverflowError, UnicodeEncodeError) + _arrow_errors():
            assume(False)  # pandas/pyarrow cannot write these rows in this format
        ds, _ = loads_or_named(lambda: build_data({"name": "table_file", "path": str(path), "target": "label"}), path)
        if ds is not None:
            check_table(ds, len(rows))


@fuzz(40)
@given(fmt=st.sampled_from(["skops", "pkl"]), data=st.data())
def test_fitted_model_files_fuzzed(fmt, data):
    """`sklearn_file` teachers: broken .skops files and (trusted) pickles load as a fitted classifier or are named."""
    from kdx.models.blackbox import sklearn_file

    table = build_data({"name": "generated_table", "n_samples": 40, "n_features": 3, "n_informative": 2,
                        "n_redundant": 0, "n_classes": 2, "n_clusters_per_class": 1})
    with scratch() as d:
        path = Path(d) / f"model.{fmt}"
        path.write_bytes(data.draw(corrupted(estimator_bytes(fmt))).data)
        model, _ = loads_or_named(lambda: sklearn_file(table, str(path), trust_file=fmt == "pkl"), path)
        if model is not None:
            out = model(table.x_test)
            assert out.shape == (len(table.x_test), 2) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------ config and study files


@fuzz(60)
@given(broken=bad_yaml())
def test_config_files_fuzzed(broken):
    """A run config (YAML) broken: syntax, non-mappings, python tags, wrong types, bad encodings. load_config and
    the checks `kdx run` makes before any work load it or name the file."""
    from kdx import config as kconfig
    from kdx.run import validate

    with scratch() as d:
        path = Path(d) / "run.yaml"
        path.write_bytes(broken.data)
        cfg, _ = loads_or_named(lambda: kconfig.load_config(path), path)
        if cfg is not None:
            assert isinstance(cfg, kconfig.RunConfig)
            try:
                validate(cfg)  # a bad value is a KdxError (naming the key, not necessarily the file), nothing else
            except KdxError:
                pass


VALID_STUDY = {"name": "fuzz", "base": "base.yaml", "seeds": [0], "sources": [{"name": "train"}]}
STUDY_FIELDS = ["name", "base", "overrides", "sources", "seeds", "samples", "loss", "temperature", "switch_at", "student",
                "probe", "probe_on", "probe_source_n", "report_distributions"]


@st.composite
def study_files(draw):
    """A study file with one field wrongly typed (any junk, or a list of specs with junk values), or broken YAML."""
    import json

    if draw(st.integers(0, 3)) == 0:
        return draw(bad_yaml(valid=json.dumps(VALID_STUDY) + "\n"))
    study = dict(VALID_STUDY)
    field = draw(st.sampled_from(STUDY_FIELDS))
    spec_junk = st.dictionaries(st.sampled_from(["name", "label", "samples_scale", "loss", "augment", "kind", "dataset", "x"]),
                                junk_values(), max_size=3)
    study[field] = draw(st.one_of(junk_values(), st.lists(spec_junk, min_size=1, max_size=2),
                                  st.lists(st.sampled_from(["a=b", "=", "distill.samples=-1", "x", "source.name=nope"]), max_size=2)))
    return Broken(f"study-{field}", (json.dumps(study, allow_nan=True) + "\n").encode("utf-8", "surrogatepass"))


@fuzz(60)
@given(broken=study_files())
def test_study_files_fuzzed(broken):
    """`kdx study`'s planner on a study file broken or wrongly typed: it plans the runs or names the file."""
    from kdx.study.plan import plan

    with scratch() as d:
        (Path(d) / "base.yaml").write_text(VALID_RUN_YAML)
        path = Path(d) / "study.yaml"
        path.write_bytes(broken.data)
        planned, _ = loads_or_named(lambda: plan(path), path, Path(d) / "base.yaml")
        if planned is not None:
            study, runs = planned
            assert runs and len({r.name for r in runs}) == len(runs)


# ------------------------------------------------------------------------------------- the way a user goes


def kdx_cli(*args, home: Path):
    """`python -m kdx ARGS` in a fresh process (this checkout's src first), offline, with an empty HOME."""
    env = {**os.environ, "HOME": str(home), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("KDX_DATA", None)
    return subprocess.run([sys.executable, "-m", "kdx", *args], env=env, capture_output=True, text=True, timeout=300)


def assert_one_line_error(done, *paths):
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in done.stderr and len(lines) == 1 and lines[0].startswith("kdx: error: "), done.stderr[-2000:]
    return assert_named(KdxError(lines[0][len("kdx: error: "):]), *paths)


def test_kdx_data_names_a_broken_data_file(tmp_path):
    """`kdx data` on Fashion-MNIST whose labels file was cut off mid-download, on an image folder holding a
    text file named .png, and on a jsonl text set in UTF-16: exit 2, one line naming the file and the fix."""
    files = fashion_mnist_dir(tmp_path / "fm")
    lab = files["train-labels-idx1-ubyte"]
    lab.write_bytes(lab.read_bytes()[:-6])
    msg = assert_one_line_error(kdx_cli("data", "data.name=fashion_mnist", f"data.root={tmp_path / 'fm'}", home=tmp_path), lab)
    assert "truncated or corrupt" in msg and "re-fetch" in msg

    images = image_folder_dir(tmp_path / "imgs")
    images[3].write_bytes(b"not an image\n")
    msg = assert_one_line_error(kdx_cli("data", "data.name=image_folder", f"data.root={tmp_path / 'imgs'}", "data.size=6",
                                        home=tmp_path), images[3])
    assert "not an image PIL can read" in msg

    texts = text_files_dir(tmp_path / "texts", "jsonl")
    texts["train"].write_bytes(texts["train"].read_text().encode("utf-16"))
    msg = assert_one_line_error(kdx_cli("data", "data.name=hf_text", f"data.path={tmp_path / 'texts'}", home=tmp_path),
                                texts["train"])
    assert "UTF-8" in msg


def test_kdx_run_names_a_broken_config_or_weights_file(tmp_path):
    """`kdx run` on a config saved as UTF-16, and with student.init a weights file cut in half: refused before any
    work (no run directory), one line naming the file."""
    cfg = tmp_path / "run.yaml"
    cfg.write_bytes(VALID_RUN_YAML.encode("utf-16"))
    msg = assert_one_line_error(kdx_cli("run", str(cfg), "--runs-dir", str(tmp_path / "runs"), home=tmp_path), cfg)
    assert "save the file as UTF-8" in msg

    cfg.write_text(VALID_RUN_YAML)
    weights = tmp_path / "init.pt"
    weights.write_bytes(weights_bytes({"w": torch.zeros(3, 3)}, "pt")[:300])
    msg = assert_one_line_error(kdx_cli("run", str(cfg), f"student.init={weights}", "--runs-dir", str(tmp_path / "runs"),
                                        home=tmp_path), weights)
    assert "not a weights file kdx can read" in msg
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@fuzz(30)
@given(data=st.data())
def test_hf_model_folders_fuzzed(data):
    """A save_pretrained teacher folder (`teacher.model={name: hf, path: DIR}`) with config.json, the weights or
    preprocessor_config.json broken: the model builds or the error names the folder."""
    from fuzzing import hf_model_dir, tiny_image_data

    from kdx.registry import MODELS

    images = tiny_image_data(size=8)
    with scratch() as d:
        path = hf_model_dir(Path(d) / "vit", images.classes)
        target = data.draw(st.sampled_from(files_under(path)))
        broken = data.draw(broken_text_or_bytes(target.read_bytes()) if target.suffix == ".json" else corrupted(target.read_bytes()))
        target.write_bytes(broken.data)
        model, _ = loads_or_named(lambda: MODELS.build({"name": "hf", "path": str(path)}, "teacher.model", data=images), target)
        if model is not None:
            assert model(torch.rand(2, 3, 8, 8)).shape == (2, 2)


@fuzz(30)
@given(data=st.data())
def test_text_caches_fuzzed(data):
    """kdx's own cache files for text damaged (a disk error, a copy cut short): the encoded splits and the TF-IDF
    anchor are recomputed (the same dataset again); the trained tokenizer, whose training is not deterministic,
    is refused naming the file (retraining could give other token ids than the cached teachers saw)."""
    from kdx.data.text import anchor_accuracy

    session_cache = os.environ.get("KDX_CACHE")
    with scratch() as d:
        os.environ["KDX_CACHE"] = cache = f"{d}/cache"  # one cache per example
        try:
            rows = [{"text": f"{r['text']} number {i}", "label": r["label"]} for i, r in enumerate(TEXT_ROWS * 250)]
            text_files_dir(Path(d) / "set", "parquet", train=rows)  # 1000 rows: the encoded split is cached
            spec = {"name": "hf_text", "path": f"{d}/set", **TEXT_ARGS}
            first = build_data(spec)
            acc = anchor_accuracy(first)
            target = data.draw(st.sampled_from([f for f in files_under(Path(cache)) if f.name != ".lock"]))
            target.write_bytes(data.draw(corrupted(target.read_bytes())).data)
            again, _ = loads_or_named(lambda: build_data(spec), target)
            if target.parent.parent.name == "tokenizers":  # training again could give other ids: refused, never retrained
                assert again is None
            else:  # the encoded splits and the anchor are recomputed, the same
                assert torch.equal(again.x_train, first.x_train) and torch.equal(again.x_test, first.x_test)
                assert anchor_accuracy(again) == acc
            assert not leftovers(cache), leftovers(cache)
        finally:
            os.environ.pop("KDX_CACHE")
            if session_cache is not None:
                os.environ["KDX_CACHE"] = session_cache
