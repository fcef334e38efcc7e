"""Datasets from a user's own tensors or torch Datasets, as the same `Dataset` the registry gives."""
from __future__ import annotations

import torch

from kdx.data.base import Dataset
from kdx.data.tabular import TABULAR_HELDOUT
from kdx.errors import KdxError


def _check(name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int | None) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise KdxError(f"{name}: inputs and labels must be torch tensors, got {type(x).__name__}, {type(y).__name__}")
    if x.ndim not in (2, 3, 4) or (x.ndim == 2 and not x.dtype.is_floating_point):
        raise KdxError(f"{name}: inputs must be (N, D) float features, (N, C, L) signals or (N, C, H, W) images, got "
                       f"{x.dtype} {tuple(x.shape)}; add a channel axis with x.unsqueeze(1), or x.float() for features")
    if len(x) != len(y) or y.ndim != 1:
        raise KdxError(f"{name}: {len(x)} inputs but labels of shape {tuple(y.shape)}; give one integer label per input")
    if x.dtype != torch.uint8 and not torch.isfinite(x).all():
        row = int((~torch.isfinite(x)).flatten(1).any(1).nonzero()[0])
        raise KdxError(f"{name}: inputs hold NaN or inf (row {row} is the first)")
    if y.dtype.is_floating_point:
        raise KdxError(f"{name}: labels must be integers (class indices), got {y.dtype}")
    if num_classes is not None and len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise KdxError(f"{name}: labels must lie in 0..{num_classes - 1} for {num_classes} classes, "
                       f"got {int(y.min())}..{int(y.max())}")


def from_tensors(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                 classes: list[str] | int | None = None, lo: float | torch.Tensor | None = None,
                 hi: float | torch.Tensor | None = None, name: str = "tensors",
                 heldout: list[str] | None = None, categories: dict[int, list[str]] | None = None) -> Dataset:
    """A Dataset from tensors: uint8 images in [0, 255] (models see [0, 1]) or float inputs as they are; (N, D)
    float features are a table (kdx.data.tabular's held-out shifts; not standardised here: the models
    normalise with the train moments). `classes`: names, or their number (default: max label + 1). `lo`/`hi`:
    the input box the noise and synthesis sources sample in (default: the train set's per-channel (per-feature)
    range), a number or one per channel. `categories` (tables): {column: category names} for columns holding
    integer codes (one-hot for the models)."""
    n_classes = len(classes) if isinstance(classes, list) else classes
    if n_classes is None:
        n_classes = int(max(int(y_train.max()), int(y_test.max()))) + 1 if len(y_train) else 0
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        _check(f"{name} ({split})", x, y, n_classes)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise KdxError(f"{name}: train inputs {tuple(x_train.shape[1:])} and test inputs {tuple(x_test.shape[1:])} differ")
    names = classes if isinstance(classes, list) else [str(i) for i in range(n_classes)]
    table = x_train.ndim == 2
    if categories and not table:
        raise KdxError(f"{name}: categories are for (N, D) tables; images and signals have none")
    data = Dataset(name, x_train, y_train, x_test, y_test, [str(c) for c in names],
                   default_heldout=heldout or (list(TABULAR_HELDOUT) if table else
                                               ["test", "train_subset", "gaussian_noise-2", "uniform_noise"]),
                   categories=dict(categories or {}))
    channels = x_train.shape[1]
    for attr, value in (("lo", lo), ("hi", hi)):
        if value is not None:
            v = torch.as_tensor(value, dtype=torch.float32).flatten()
            if len(v) not in (1, channels):
                raise KdxError(f"{name}: {attr} must be a number or one per channel ({channels}), got {len(v)} values")
            setattr(data, attr, v.expand(channels).clone())
    if (data.lo > data.hi).any():
        raise KdxError(f"{name}: the input box is empty: lo {data.lo.tolist()} > hi {data.hi.tolist()}")
    return data


def from_dataset(train: torch.utils.data.Dataset, test: torch.utils.data.Dataset, **kwargs) -> Dataset:
    """A Dataset from two torch Datasets of (input tensor, int label) pairs, read once into memory (kdx keeps
    data resident on the device); the keyword arguments are from_tensors's."""
    def stack(ds, split):
        try:
            pairs = [ds[i] for i in range(len(ds))]
            return torch.stack([torch.as_tensor(p[0]) for p in pairs]), torch.as_tensor([int(p[1]) for p in pairs])
        except Exception as e:  # noqa: BLE001 - whatever the user's __getitem__ raises
            raise KdxError(f"the {split} Dataset must yield (input tensor, int label) pairs of one shape: "
                           f"{type(e).__name__}: {e}") from None

    return from_tensors(*stack(train, "train"), *stack(test, "test"), **kwargs)
