"""CIFAR-10 and CIFAR-100 from torchvision's on-disk pickles, read directly (no md5 checks, no download)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from kdx.data.base import Dataset, data_root
from kdx.data.fashion_mnist import CORRUPTIONS
from kdx.errors import KdxError, first_line
from kdx.registry import DATASETS

HELDOUT = ["test", "train_subset", *CORRUPTIONS, "uniform_noise"]


# What torchvision's CIFAR pickles reference: numpy arrays (either numpy's module layout) and bytes.
# Anything else (os.system, eval, a class's constructor) is refused, never run.
SAFE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
REDOWNLOAD = "delete it and re-download the dataset"


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which a CIFAR batch never does "
                                         "(a pickle that runs code is refused)")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    # The official files are Python 2 pickles; latin1 is how torchvision decodes them. Keys and
    # names may still come back as bytes (files written with bytes keys), so normalise both.
    try:
        with open(path, "rb") as f:
            d = _ArraysOnly(f, encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 - a broken pickle raises nearly any type (EOF, Unicode, Index, Overflow ...)
        raise KdxError(f"{path} is truncated or corrupt ({type(e).__name__}: {first_line(e)}); {REDOWNLOAD}") from None
    if not isinstance(d, dict):
        raise KdxError(f"{path} holds a {type(d).__name__}, not a CIFAR batch (a dict); {REDOWNLOAD}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def _names(path: Path, meta: dict, key: str) -> list[str]:
    values = meta.get(key)
    if not isinstance(values, (list, tuple, np.ndarray)) or len(values) == 0 \
            or not all(isinstance(v, (str, bytes, np.str_, np.bytes_)) for v in values):
        raise KdxError(f"{path} has no list of class names under '{key}' (it holds {type(values).__name__}); {REDOWNLOAD}")
    return [v.decode("latin1") if isinstance(v, bytes) else str(v) for v in values]


def _batch(path: Path, b: dict, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch's images (N, 3, 32, 32) uint8 and labels (N,) int64, refused unless they are that."""
    if "data" not in b or label_key not in b:
        raise KdxError(f"{path} lacks '{'data' if 'data' not in b else label_key}' (it holds {', '.join(repr(k) for k in b)[:200]}); {REDOWNLOAD}")
    try:
        x, y = np.asarray(b["data"]), np.asarray(b[label_key])
    except (ValueError, TypeError) as e:  # ragged lists
        raise KdxError(f"{path}: 'data' or '{label_key}' is not an array ({e}); {REDOWNLOAD}") from None
    if x.dtype.kind in "iu" and x.size and 0 <= x.min() and x.max() <= 255:  # e.g. a list of ints
        x = x.astype(np.uint8)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(x) == 0:
        raise KdxError(f"{path}: 'data' is {x.dtype} {x.shape}, not CIFAR's uint8 (N, 3072) rows; {REDOWNLOAD}")
    if y.dtype.kind not in "iu" or y.shape != (len(x),) or y.min() < 0 or y.max() >= num_classes:
        shown = f"{y.min()}..{y.max()}" if y.dtype.kind in "iu" and y.size else str(y.dtype)
        raise KdxError(f"{path}: '{label_key}' must be {len(x)} class indices in 0..{num_classes - 1}, "
                       f"got {shown} of shape {y.shape}; {REDOWNLOAD}")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _load(root: str | None, folder: str, train: list[str], test: str, meta: str, label_key: str, names_key: str,
          name: str) -> Dataset:
    files = [*train, test, meta]
    dirs = data_root(root, folder)
    found = next((d for d in dirs if all((d / f).is_file() for f in files)), None)
    if found is None:
        where = ""
        if root:  # a root the user names is authoritative: no fallback to $KDX_DATA or the cache
            where = f"data.root={root} {'does not exist' if not Path(root).expanduser().is_dir() else 'does not hold them'}; "
        raise KdxError(
            f"{name}: {where}files {', '.join(files)} not found (looked in: {', '.join(map(str, dirs))}). Download CIFAR "
            f"on a machine with network, e.g. `torchvision.datasets.{name.upper()}(DIR, download=True)`, which "
            f"creates DIR/{folder}, then pass `data.root=DIR` (or set $KDX_DATA)."
        )
    classes = _names(found / meta, _unpickle(found / meta), names_key)

    def split(parts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batches = [_batch(found / p, _unpickle(found / p), label_key, len(classes)) for p in parts]
        return torch.from_numpy(np.concatenate([b[0] for b in batches])), torch.from_numpy(np.concatenate([b[1] for b in batches]))

    xtr, ytr = split(train)
    xte, yte = split([test])
    return Dataset(name, xtr, ytr, xte, yte, classes, default_heldout=list(HELDOUT))


@DATASETS.register()
def cifar10(root: str | None = None) -> Dataset:
    """CIFAR-10 32x32 colour photos, 10 classes, 50k/10k (torchvision's cifar-10-batches-py at data.root)."""
    return _load(root, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                 "batches.meta", "labels", "label_names", "cifar10")


@DATASETS.register()
def cifar100(root: str | None = None) -> Dataset:
    """CIFAR-100 32x32 colour photos, 100 fine classes, 50k/10k (torchvision's cifar-100-python at data.root)."""
    return _load(root, "cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names", "cifar100")
