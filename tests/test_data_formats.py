"""Each dataset loader reads tiny files written in the real on-disk format, and values round-trip exactly."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from kdx.data.idx import write_idx
from kdx.errors import KdxError
from kdx.registry import DATASETS


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Keep the real machine's data out (no $KDX_DATA, an empty HOME); offline so a stray hub call fails fast."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KDX_DATA", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def build(spec):
    return DATASETS.build(spec, "data")


def rng_images(seed, shape):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ---------------------------------------------------------------- Fashion-MNIST (gzipped IDX)

def test_fashion_mnist_idx(tmp_path):
    d = tmp_path / "fashion-mnist"
    d.mkdir()
    xtr, xte = rng_images(0, (6, 28, 28)), rng_images(1, (4, 28, 28))
    ytr, yte = np.array([0, 1, 2, 3, 4, 9], np.uint8), np.array([5, 6, 7, 8], np.uint8)
    for prefix, x, y in (("train", xtr, ytr), ("t10k", xte, yte)):
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", y)
    ds = build({"name": "fashion_mnist", "root": str(tmp_path)})
    assert ds.x_train.shape == (6, 1, 28, 28) and ds.x_test.shape == (4, 1, 28, 28)
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    assert torch.equal(ds.x_train[:, 0], torch.from_numpy(xtr))
    assert torch.equal(ds.x_test[:, 0], torch.from_numpy(xte))
    assert ds.y_train.tolist() == ytr.tolist() and ds.y_test.tolist() == yte.tolist()
    assert ds.num_classes == 10 and ds.classes[9] == "Ankle boot"


def test_fashion_mnist_missing(tmp_path, monkeypatch):
    monkeypatch.setattr("kdx.data.fashion_mnist.DEBIAN_DIR", tmp_path / "no-debian")
    with pytest.raises(KdxError) as e:
        build({"name": "fashion_mnist", "root": str(tmp_path / "nowhere")})
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "data.root" in msg
    assert str(tmp_path / "nowhere") in msg


# ---------------------------------------------------------------- CIFAR (torchvision's pickles)

def dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def test_cifar10(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    batches = [rng_images(i, (2, 3 * 32 * 32)) for i in range(6)]  # five train batches, then test
    labels = [[i, 9 - i] for i in range(6)]
    for i in range(5):
        dump(d / f"data_batch_{i + 1}", {"data": batches[i], "labels": labels[i], "batch_label": "x"})
    # The real test batch has bytes keys when unpickled by Python 3 with encoding='bytes'; accept both.
    dump(d / "test_batch", {b"data": batches[5], b"labels": labels[5]})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    dump(d / "batches.meta", {"label_names": names, "num_cases_per_batch": 2})

    ds = build({"name": "cifar10", "root": str(tmp_path)})
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (2, 3, 32, 32)
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    # CIFAR rows are 1024 red, then 1024 green, then 1024 blue values, row-major.
    expect = torch.from_numpy(np.concatenate(batches[:5]).reshape(10, 3, 32, 32))
    assert torch.equal(ds.x_train, expect)
    assert ds.x_train[3, 1, 0, 5].item() == batches[1][1, 1024 + 5]
    assert torch.equal(ds.x_test, torch.from_numpy(batches[5].reshape(2, 3, 32, 32)))
    assert ds.y_train.tolist() == sum(labels[:5], []) and ds.y_test.tolist() == labels[5]
    assert ds.classes == names
    assert "test" in ds.default_heldout and "blur-2" in ds.default_heldout and "uniform_noise" in ds.default_heldout
    assert len(ds.default_heldout) == 21


def test_cifar100(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    xtr, xte = rng_images(10, (3, 3072)), rng_images(11, (2, 3072))
    dump(d / "train", {"data": xtr, "fine_labels": [0, 57, 99], "coarse_labels": [4, 1, 2]})
    dump(d / "test", {"data": xte, "fine_labels": [42, 1], "coarse_labels": [0, 0]})
    fine = [f"class{i}" for i in range(100)]
    dump(d / "meta", {"fine_label_names": fine, "coarse_label_names": [f"super{i}" for i in range(20)]})

    ds = build({"name": "cifar100", "root": str(tmp_path)})
    assert torch.equal(ds.x_train, torch.from_numpy(xtr.reshape(3, 3, 32, 32)))
    assert torch.equal(ds.x_test, torch.from_numpy(xte.reshape(2, 3, 32, 32)))
    assert ds.y_train.tolist() == [0, 57, 99] and ds.y_test.tolist() == [42, 1]  # fine, not coarse
    assert ds.classes == fine and ds.num_classes == 100


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_missing(tmp_path, name, folder):
    with pytest.raises(KdxError) as e:
        build({"name": name, "root": str(tmp_path / "nowhere")})
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / folder) in msg
    assert "download=True" in msg and "data.root" in msg


def test_cifar_partial(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    dump(d / "data_batch_1", {"data": rng_images(0, (1, 3072)), "labels": [0]})
    with pytest.raises(KdxError, match="data_batch_2"):
        build({"name": "cifar10", "root": str(tmp_path)})


# ---------------------------------------------------------------- Hugging Face save_to_disk

def hf_dict(tmp_path, mode="RGB"):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    ch = 3 if mode == "RGB" else 1
    arrays = {"train": rng_images(20, (4, 8, 8, ch)), "test": rng_images(21, (2, 8, 8, ch))}
    labels = {"train": [0, 2, 1, 2], "test": [1, 0]}
    features = datasets.Features({"img": datasets.Image(), "fine": datasets.ClassLabel(names=["cat", "dog", "emu"])})
    dd = datasets.DatasetDict({
        k: datasets.Dataset.from_dict(
            {"img": [Image.fromarray(a.squeeze(-1) if ch == 1 else a) for a in arrays[k]], "fine": labels[k]},
            features=features)
        for k in arrays
    })
    path = tmp_path / "hfset"
    dd.save_to_disk(str(path))
    return path, arrays, labels


def test_hf_save_to_disk_rgb(tmp_path):
    path, arrays, labels = hf_dict(tmp_path)
    ds = build({"name": "hf", "path": str(path), "image_column": "img", "label_column": "fine"})
    assert ds.x_train.shape == (4, 3, 8, 8) and ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    assert torch.equal(ds.x_train, torch.from_numpy(arrays["train"]).permute(0, 3, 1, 2))
    assert torch.equal(ds.x_test, torch.from_numpy(arrays["test"]).permute(0, 3, 1, 2))
    assert ds.y_train.tolist() == labels["train"] and ds.y_test.tolist() == labels["test"]
    assert ds.classes == ["cat", "dog", "emu"]


def test_hf_grey_and_resize(tmp_path):
    path, arrays, _ = hf_dict(tmp_path, mode="L")
    ds = build({"name": "hf", "path": str(path), "image_column": "img", "label_column": "fine"})
    assert ds.x_train.shape == (4, 1, 8, 8)
    assert torch.equal(ds.x_train[:, 0], torch.from_numpy(arrays["train"][..., 0]))
    small = build({"name": "hf", "path": str(path), "image_column": "img", "label_column": "fine", "size": 4})
    assert small.x_train.shape == (4, 1, 4, 4) and small.x_test.shape == (2, 1, 4, 4)


def test_hf_plain_labels(tmp_path):
    datasets = pytest.importorskip("datasets")
    x = rng_images(30, (3, 5, 5, 3))
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"image": [a.tolist() for a in x], "label": ["b", "a", "c"]}),
        "test": datasets.Dataset.from_dict({"image": [x[0].tolist()], "label": ["c"]}),
    })
    dd.save_to_disk(str(tmp_path / "plain"))
    ds = build({"name": "hf", "path": str(tmp_path / "plain")})
    assert ds.classes == ["a", "b", "c"]
    assert ds.y_train.tolist() == [1, 0, 2] and ds.y_test.tolist() == [2]
    assert torch.equal(ds.x_train, torch.from_numpy(x).permute(0, 3, 1, 2))


def test_hf_bad_inputs(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    path, _, _ = hf_dict(tmp_path)
    with pytest.raises(KdxError, match="no column 'image'.*img, fine"):
        build({"name": "hf", "path": str(path)})
    with pytest.raises(KdxError, match="no split 'validation'.*train, test"):
        build({"name": "hf", "path": str(path), "image_column": "img", "label_column": "fine", "test_split": "validation"})
    with pytest.raises(KdxError, match="does not exist"):
        build({"name": "hf", "path": str(tmp_path / "missing")})
    with pytest.raises(KdxError, match="data.path"):
        build({"name": "hf"})

    # A hub name that cannot be fetched (offline): the message says how to bring it over.
    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(KdxError) as e:
        build({"name": "hf", "path": "someone/some-set"})
    assert "save_to_disk" in str(e.value) and "data.path" in str(e.value) and "no network" in str(e.value)


# ---------------------------------------------------------------- image folder of PNGs

def make_folder(root, arrays):
    from PIL import Image

    for split, by_class in arrays.items():
        for cls, imgs in by_class.items():
            (root / split / cls).mkdir(parents=True)
            for i, a in enumerate(imgs):
                Image.fromarray(a).save(root / split / cls / f"{i}.png")


def test_image_folder(tmp_path):
    r = rng_images(40, (5, 6, 6, 3))
    arrays = {"train": {"zebra": [r[0], r[1]], "ant": [r[2]]}, "test": {"ant": [r[3]], "zebra": [r[4]]}}
    make_folder(tmp_path / "imgs", arrays)
    (tmp_path / "imgs" / "train" / "ant" / "notes.txt").write_text("not an image")
    ds = build({"name": "image_folder", "root": str(tmp_path / "imgs"), "size": 6})
    assert ds.classes == ["ant", "zebra"]  # sorted by folder name
    assert ds.x_train.shape == (3, 3, 6, 6) and ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    chw = lambda idx: torch.from_numpy(r[idx]).permute(0, 3, 1, 2)  # noqa: E731
    assert torch.equal(ds.x_train, chw([2, 0, 1])) and ds.y_train.tolist() == [0, 1, 1]
    assert torch.equal(ds.x_test, chw([3, 4])) and ds.y_test.tolist() == [0, 1]

    resized = build({"name": "image_folder", "root": str(tmp_path / "imgs"), "size": 4, "grayscale": True})
    assert resized.x_train.shape == (3, 1, 4, 4) and resized.x_test.shape == (2, 1, 4, 4)


def test_image_folder_grey_exact(tmp_path):
    g = rng_images(41, (2, 5, 5))
    make_folder(tmp_path / "g", {"train": {"a": [g[0]]}, "test": {"a": [g[1]]}})
    ds = build({"name": "image_folder", "root": str(tmp_path / "g"), "size": 5, "grayscale": True})
    assert torch.equal(ds.x_train[0, 0], torch.from_numpy(g[0])) and torch.equal(ds.x_test[0, 0], torch.from_numpy(g[1]))


def test_image_folder_bad_inputs(tmp_path):
    with pytest.raises(KdxError, match="data.root"):
        build({"name": "image_folder"})
    with pytest.raises(KdxError, match="does not exist"):
        build({"name": "image_folder", "root": str(tmp_path / "nowhere")})
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "test" / "a").mkdir(parents=True)
    with pytest.raises(KdxError, match="no .*images under"):
        build({"name": "image_folder", "root": str(tmp_path / "empty")})
    make_folder(tmp_path / "odd", {"train": {"a": [rng_images(0, (4, 4, 3))]},
                                   "test": {"a": [rng_images(1, (4, 4, 3))], "b": [rng_images(2, (4, 4, 3))]}})
    with pytest.raises(KdxError, match="train/ lacks"):
        build({"name": "image_folder", "root": str(tmp_path / "odd")})
