"""Broken or misplaced dataset files are refused with a KdxError naming the file or folder, never
read silently from elsewhere or turned into garbage."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from conftest import build_data
from kdx.data.idx import write_idx
from kdx.errors import KdxError

IDX = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


pytestmark = pytest.mark.usefixtures("no_real_data")


def fashion_files(d, n_train=6, n_test=4):
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return d


# ---------------------------------------------------------------- 4a: a truncated .gz IDX file

def test_truncated_gz_idx_is_named(tmp_path):
    d = fashion_files(tmp_path / "fm")
    f = d / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])  # a cut-off download
    with pytest.raises(KdxError) as e:
        build_data({"name": "fashion_mnist", "root": str(d)})
    assert str(f) in str(e.value) and "truncated or corrupt" in str(e.value)


def test_garbage_gz_idx_is_named(tmp_path):
    d = fashion_files(tmp_path / "fm")
    f = d / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)  # gzip magic, then garbage
    with pytest.raises(KdxError) as e:
        build_data({"name": "fashion_mnist", "root": str(d)})
    assert str(f) in str(e.value) and "truncated or corrupt" in str(e.value)


# ---------------------------------------------------------------- 4b: data.root is authoritative

def test_fashion_root_missing_does_not_fall_back(tmp_path, monkeypatch):
    monkeypatch.setattr("kdx.data.fashion_mnist.DEBIAN_DIR", fashion_files(tmp_path / "debian"))
    monkeypatch.setenv("KDX_DATA", str(fashion_files(tmp_path / "kdxdata" / "fashion-mnist").parent))
    nowhere = tmp_path / "nowhere"
    with pytest.raises(KdxError) as e:
        build_data({"name": "fashion_mnist", "root": str(nowhere)})
    msg = str(e.value)
    assert f"data.root={nowhere} does not exist" in msg
    assert all(f in msg for f in IDX)
    assert str(tmp_path / "debian") not in msg and str(tmp_path / "kdxdata") not in msg

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KdxError, match=f"data.root={empty} does not hold them"):
        build_data({"name": "fashion_mnist", "root": str(empty)})


def test_fashion_without_root_still_falls_back(tmp_path, monkeypatch):
    monkeypatch.setattr("kdx.data.fashion_mnist.DEBIAN_DIR", fashion_files(tmp_path / "debian", n_train=5))
    assert build_data({"name": "fashion_mnist"}).x_train.shape == (5, 1, 28, 28)
    monkeypatch.setenv("KDX_DATA", str(tmp_path / "kd"))
    fashion_files(tmp_path / "kd" / "fashion-mnist", n_train=3)
    assert build_data({"name": "fashion_mnist"}).x_train.shape == (3, 1, 28, 28)  # $KDX_DATA before Debian's copy


def cifar10_files(d):
    d.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d / name, "wb") as f:
            pickle.dump({"data": np.zeros((1, 3072), np.uint8), "labels": [0]}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return d


def test_cifar_root_does_not_fall_back(tmp_path, monkeypatch):
    monkeypatch.setenv("KDX_DATA", str(tmp_path / "kd"))
    cifar10_files(tmp_path / "kd" / "cifar-10-batches-py")
    assert build_data({"name": "cifar10"}).x_train.shape == (5, 3, 32, 32)  # no root: $KDX_DATA is used
    for root, state in ((tmp_path / "nowhere", "does not exist"), (tmp_path, "does not hold them")):
        with pytest.raises(KdxError) as e:
            build_data({"name": "cifar10", "root": str(root)})
        msg = str(e.value)
        assert f"data.root={root} {state}" in msg and "data_batch_1" in msg and "batches.meta" in msg
        assert str(tmp_path / "kd") not in msg


def test_cifar_truncated_batch_is_named(tmp_path):
    d = cifar10_files(tmp_path / "cifar-10-batches-py")
    f = d / "data_batch_3"
    f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(KdxError) as e:
        build_data({"name": "cifar10", "root": str(tmp_path)})
    assert str(f) in str(e.value) and "truncated or corrupt" in str(e.value)


def test_image_folder_root_missing_is_named(tmp_path):
    with pytest.raises(KdxError) as e:
        build_data({"name": "image_folder", "root": str(tmp_path / "mine")})
    assert f"data.root={tmp_path / 'mine'} does not exist" in str(e.value) and "train/<class>" in str(e.value)


def test_hf_missing_folder_is_named(tmp_path):
    pytest.importorskip("datasets")
    with pytest.raises(KdxError, match=f"{tmp_path / 'set'} does not exist"):
        build_data({"name": "hf", "path": str(tmp_path / "set")})


# ---------------------------------------------------------------- 4c: NaN in a float image column

def test_hf_nan_floats_are_refused(tmp_path):
    datasets = pytest.importorskip("datasets")
    x = np.random.default_rng(1).random((3, 4, 4, 3))  # float images in [0, 1]
    x[2, 1, 1, 0] = np.nan
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"pixels": [a.tolist() for a in x], "label": [0, 1, 0]}),
        "test": datasets.Dataset.from_dict({"pixels": [x[0].tolist()], "label": [1]}),
    })
    dd.save_to_disk(str(tmp_path / "nan"))
    with pytest.raises(KdxError) as e:
        build_data({"name": "hf", "path": str(tmp_path / "nan"), "image_column": "pixels"})
    msg = str(e.value)
    assert "column 'pixels'" in msg and "row 2" in msg and "split 'train'" in msg and "NaN" in msg

    x[2, 1, 1, 0] = 0.5  # the same set without the NaN loads, values kept
    dd["train"] = datasets.Dataset.from_dict({"pixels": [a.tolist() for a in x], "label": [0, 1, 0]})
    dd.save_to_disk(str(tmp_path / "clean"))
    ds = build_data({"name": "hf", "path": str(tmp_path / "clean"), "image_column": "pixels"})
    assert torch.equal(ds.x_train, torch.from_numpy(np.round(x * 255).astype(np.uint8)).permute(0, 3, 1, 2))
