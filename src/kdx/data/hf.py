"""Any Hugging Face `datasets` image-classification set: a save_to_disk folder, or a hub name when online."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kdx.data.base import Dataset
from kdx.data.fashion_mnist import CORRUPTIONS
from kdx.errors import KdxError
from kdx.registry import DATASETS

GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _open(path: str):
    import datasets

    if not path:
        raise KdxError("hf: set `data.path` to a folder written by DatasetDict.save_to_disk (or a hub name when online)")
    if Path(path).expanduser().is_dir():
        try:
            return datasets.load_from_disk(str(Path(path).expanduser()))
        except Exception as e:  # noqa: BLE001 - datasets raises several types for a bad folder
            raise KdxError(f"hf: {path} is not a folder written by save_to_disk ({e})") from None
    if path.startswith(("/", ".", "~")):  # clearly a local path: don't ask the hub about it
        raise KdxError(f"hf: folder {path} does not exist; pass `data.path` a folder written by save_to_disk")
    try:
        return datasets.load_dataset(path)
    except Exception as e:  # noqa: BLE001 - offline, unknown name, gated repo...: all fixed the same way
        raise KdxError(
            f"hf: could not load '{path}' from the Hugging Face hub ({type(e).__name__}: {e}). On a machine with "
            f"network run `datasets.load_dataset('{path}').save_to_disk(DIR)`, copy DIR here and pass `data.path=DIR`."
        ) from None


def _to_pil(img, where: str = "an image"):
    from PIL import Image

    if isinstance(img, Image.Image):
        if img.mode.startswith(("F", "I")) and not np.isfinite(np.asarray(img)).all():
            raise KdxError(f"hf: {where} holds NaN or infinite pixel values; fix or drop that row before save_to_disk")
        return img
    a = np.asarray(img)
    if a.dtype.kind not in "biuf":
        raise KdxError(f"hf: {where} is a {a.dtype} array of shape {a.shape}, not an image (numbers)")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise KdxError(f"hf: {where} holds NaN or infinite values ({int((~np.isfinite(a)).sum())} of {a.size}); "
                       "fix or drop that row before save_to_disk")
    if a.dtype != np.uint8:  # floats in [0, 1] are the usual non-uint8 case; anything else is clipped
        a = a * 255.0 if a.dtype.kind == "f" and a.max() <= 1.0 else a
        a = np.clip(np.round(a), 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3, 4):  # CHW -> HWC
        a = a.transpose(1, 2, 0)
    return Image.fromarray(a.squeeze(-1) if a.ndim == 3 and a.shape[-1] == 1 else a)


def _images(column: list, size: int, grey: bool, where: str) -> torch.Tensor:
    from PIL import Image

    out = []
    for img in column:
        img = img.convert("L" if grey else "RGB")
        if size > 0 and img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        a = np.asarray(img, np.uint8)
        out.append(a[None] if grey else a.transpose(2, 0, 1))
    shapes = {a.shape for a in out}
    if len(shapes) > 1:
        raise KdxError(f"hf: {where} images have different sizes ({sorted(shapes)[:3]}...); pass `data.size=N` to resize")
    return torch.from_numpy(np.stack(out))


@DATASETS.register()
def hf(path: str = "", image_column: str = "image", label_column: str = "label", train_split: str = "train",
       test_split: str = "test", size: int = 0) -> Dataset:
    """A Hugging Face image dataset: a save_to_disk folder at data.path (or a hub name when online)."""
    import datasets

    dd = _open(path)
    if not isinstance(dd, datasets.DatasetDict):
        raise KdxError(f"hf: {path} holds a single Dataset; save a DatasetDict with '{train_split}' and '{test_split}' splits")
    for split in (train_split, test_split):
        if split not in dd:
            raise KdxError(f"hf: {path} has no split '{split}'; it has {', '.join(dd)} (set data.train_split / data.test_split)")
        for col, arg in ((image_column, "image_column"), (label_column, "label_column")):
            if col not in dd[split].column_names:
                raise KdxError(f"hf: split '{split}' has no column '{col}'; it has {', '.join(dd[split].column_names)} "
                               f"(set data.{arg})")
    train, test = dd[train_split], dd[test_split]
    if len(train) == 0 or len(test) == 0:
        raise KdxError(f"hf: split '{train_split if len(train) == 0 else test_split}' of {path} is empty")
    pil = {k: [_to_pil(im, f"split '{split}', column '{image_column}', row {i}") for i, im in enumerate(s[image_column])]
           for k, split, s in (("train", train_split, train), ("test", test_split, test))}
    # One channel layout for the whole set: grey only if every image is grey.
    grey = all(im.mode in GREY_MODES for col in pil.values() for im in col)
    x = {k: _images(v, size, grey, k) for k, v in pil.items()}
    if x["train"].shape[1:] != x["test"].shape[1:]:
        raise KdxError(f"hf: train images are {tuple(x['train'].shape[1:])}, test {tuple(x['test'].shape[1:])}; pass `data.size=N`")

    feature = train.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        classes = list(feature.names)
        y = {"train": torch.tensor(train[label_column]), "test": torch.tensor(test[label_column])}
        for split, v in zip((train_split, test_split), y.values()):
            if (v < 0).any():  # ClassLabel's -1 marks unlabelled rows (many hub test splits)
                raise KdxError(f"hf: split '{split}' has unlabelled rows (label -1); pick labelled splits via data.train_split/test_split")
    else:  # plain values: classes are the sorted distinct values seen in either split
        values = sorted(set(train[label_column]) | set(test[label_column]))
        index = {v: i for i, v in enumerate(values)}
        classes = [str(v) for v in values]
        y = {k: torch.tensor([index[v] for v in s[label_column]]) for k, s in (("train", train), ("test", test))}
    return Dataset("hf", x["train"], y["train"].long(), x["test"], y["test"].long(), classes,
                   default_heldout=["test", "train_subset", *CORRUPTIONS, "uniform_noise"])
