"""CIFAR-10 and CIFAR-100 from torchvision's on-disk pickles, read directly (no md5 checks, no download)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from kdx.data.base import Dataset, data_root
from kdx.data.fashion_mnist import CORRUPTIONS
from kdx.errors import KdxError
from kdx.registry import DATASETS

HELDOUT = ["test", "train_subset", *CORRUPTIONS, "uniform_noise"]


def _unpickle(path: Path) -> dict:
    # The official files are Python 2 pickles; latin1 is how torchvision decodes them. Keys and
    # names may still come back as bytes (files written with bytes keys), so normalise both.
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")  # noqa: S301 - a local dataset file the user chose
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise KdxError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}); delete it and re-download the dataset") from None
    if not isinstance(d, dict):
        raise KdxError(f"{path} holds a {type(d).__name__}, not a CIFAR batch (a dict); re-download the dataset")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _names(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


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

    def split(parts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batches = [_unpickle(found / p) for p in parts]
        try:
            x = np.concatenate([np.asarray(b["data"], np.uint8).reshape(-1, 3, 32, 32) for b in batches])
            y = np.concatenate([np.asarray(b[label_key], np.int64) for b in batches])
        except (KeyError, ValueError) as e:
            raise KdxError(f"{name}: {found} holds malformed batches ({e}); re-download the dataset") from None
        return torch.from_numpy(x), torch.from_numpy(y)

    xtr, ytr = split(train)
    xte, yte = split([test])
    classes = _names(_unpickle(found / meta)[names_key])
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
