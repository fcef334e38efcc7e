"""Any Hugging Face `datasets` image-classification set: a save_to_disk folder, or a hub name when online."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kdx.data.base import Dataset, index_labels
from kdx.data.fashion_mnist import CORRUPTIONS
from kdx.errors import KdxError
from kdx.registry import DATASETS

GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def check_arrow_files(folder: Path, what: str) -> None:
    """Read and validate every .arrow file of a save_to_disk folder in full. datasets memory-maps them
    unchecked, and reading a damaged one can crash the whole process (a segfault in pyarrow) instead of
    raising; checked first, it is named."""
    import pyarrow as pa

    for f in sorted(folder.rglob("*.arrow")):
        try:
            with pa.memory_map(str(f)) as source:
                pa.ipc.open_stream(source).read_all().validate(full=True)
        except Exception as e:  # noqa: BLE001 - pyarrow's ArrowInvalid, OSError, ...
            raise KdxError(f"{what}: {f} is damaged ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                           "re-save the set with save_to_disk (or rebuild it)") from None


def _open(path: str):
    import datasets

    if not path:
        raise KdxError("hf: set `data.path` to a folder written by DatasetDict.save_to_disk (or a hub name when online)")
    if Path(path).expanduser().is_dir():
        check_arrow_files(Path(path).expanduser(), "hf")
        try:
            return datasets.load_from_disk(str(Path(path).expanduser()))
        except Exception as e:  # noqa: BLE001 - datasets raises several types for a bad folder
            raise KdxError(f"hf: {path} is not a folder written by save_to_disk ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:300]}); re-save the set with save_to_disk") from None
    if path.startswith(("/", ".", "~")):  # clearly a local path: don't ask the hub about it
        raise KdxError(f"hf: folder {path} does not exist; pass `data.path` a folder written by save_to_disk")
    try:
        return datasets.load_dataset(path)
    except Exception as e:  # noqa: BLE001 - offline, unknown name, gated repo...: all fixed the same way
        raise KdxError(
            f"hf: could not load '{path}' from the Hugging Face hub ({type(e).__name__}: {e}). On a machine with "
            f"network run `datasets.load_dataset('{path}').save_to_disk(DIR)`, copy DIR here and pass `data.path=DIR`."
        ) from None


RESAVE = "fix or drop the row, or re-save the set with save_to_disk"


def _to_pil(img, where: str):
    """One image cell (a PIL image, or an array of numbers (H, W), (H, W, C) or (C, H, W)) as a PIL image."""
    from PIL import Image

    if isinstance(img, Image.Image):
        if img.mode.startswith(("F", "I")) and not np.isfinite(np.asarray(img)).all():
            raise KdxError(f"hf: {where} holds NaN or infinite pixel values; {RESAVE}")
        return img
    try:
        a = np.asarray(img)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise KdxError(f"hf: {where} is not an image: {e}; {RESAVE}") from None
    if a.dtype.kind not in "biuf":
        raise KdxError(f"hf: {where} is a {a.dtype} array of shape {a.shape}, not an image (numbers); {RESAVE}")
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3, 4):  # CHW -> HWC
        a = a.transpose(1, 2, 0)
    if a.size == 0 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3, 4))):
        raise KdxError(f"hf: {where} is an array of shape {a.shape}, not an image (H, W), (H, W, C) or (C, H, W) "
                       f"with 1, 3 or 4 channels; {RESAVE}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise KdxError(f"hf: {where} holds NaN or infinite values ({int((~np.isfinite(a)).sum())} of {a.size}); {RESAVE}")
    if a.dtype != np.uint8:  # floats in [0, 1] are the usual non-uint8 case; anything else is clipped
        a = a.astype(np.float64) * (255.0 if a.dtype.kind == "f" and a.max() <= 1.0 else 1.0)
        a = np.clip(np.round(a), 0, 255).astype(np.uint8)
    return Image.fromarray(a.squeeze(-1) if a.ndim == 3 and a.shape[-1] == 1 else a)


def _images(column: list, size: int, grey: bool, where: str) -> torch.Tensor:
    from PIL import Image

    out = []
    for i, img in enumerate(column):
        try:
            img = img.convert("L" if grey else "RGB")
        except (ValueError, OSError) as e:  # a mode PIL cannot convert
            raise KdxError(f"hf: {where} row {i}: a {img.mode} image PIL cannot convert ({e}); {RESAVE}") from None
        if size > 0 and img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        a = np.asarray(img, np.uint8)
        out.append(a[None] if grey else a.transpose(2, 0, 1))
    shapes = {a.shape for a in out}
    if len(shapes) > 1:
        raise KdxError(f"hf: {where} images have different sizes ({sorted(shapes)[:3]}...); pass `data.size=N` to resize")
    return torch.from_numpy(np.stack(out))


def splits(dd, what: str, path, train_split: str, test_split: str, columns: dict[str, str]):
    """(train, test) of a DatasetDict, each split present with every column (`{data.ARG: column}`) and rows."""
    for split in (train_split, test_split):
        if split not in dd:
            raise KdxError(f"{what}: {path} has no split '{split}'; it has {', '.join(dd)} (set data.train_split / "
                           "data.test_split)")
        for arg, col in columns.items():
            if col not in dd[split].column_names:
                raise KdxError(f"{what}: split '{split}' of {path} has no column '{col}'; it has "
                               f"{', '.join(dd[split].column_names)} (set data.{arg})")
    train, test = dd[train_split], dd[test_split]
    if len(train) == 0 or len(test) == 0:
        raise KdxError(f"{what}: split '{train_split if len(train) == 0 else test_split}' of {path} is empty; "
                       "give both splits rows")
    return train, test


def read_column(split, column: str, where: str,
                fix: str = "the saved files are damaged: re-save the set with save_to_disk") -> list:
    """A column of a loaded split as a list: damaged arrow data or image bytes that cannot be decoded
    (datasets reads lazily, so this is where they surface) are refused naming the set."""
    try:
        return list(split[column])  # datasets 4 returns a lazy Column: decode every row here
    except Exception as e:  # noqa: BLE001 - pyarrow, PIL and datasets each raise their own types
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise KdxError(f"{where}: cannot read column '{column}' ({type(e).__name__}: {first}); {fix}") from None


@DATASETS.register()
def hf(path: str = "", image_column: str = "image", label_column: str = "label", train_split: str = "train",
       test_split: str = "test", size: int = 0) -> Dataset:
    """A Hugging Face image dataset: a save_to_disk folder at data.path (or a hub name when online)."""
    import datasets

    dd = _open(path)
    if not isinstance(dd, datasets.DatasetDict):
        raise KdxError(f"hf: {path} holds a single Dataset; save a DatasetDict with '{train_split}' and '{test_split}' splits")
    train, test = splits(dd, "hf", path, train_split, test_split, {"image_column": image_column, "label_column": label_column})
    cells = {k: (split, read_column(s, image_column, f"hf: split '{split}' of {path}"))
             for k, split, s in (("train", train_split, train), ("test", test_split, test))}
    pil = {k: [_to_pil(im, f"{path}: split '{split}', column '{image_column}', row {i}") for i, im in enumerate(col)]
           for k, (split, col) in cells.items()}
    # One channel layout for the whole set: grey only if every image is grey.
    grey = all(im.mode in GREY_MODES for col in pil.values() for im in col)
    x = {k: _images(v, size, grey, f"{path}: split '{cells[k][0]}'") for k, v in pil.items()}
    if x["train"].shape[1:] != x["test"].shape[1:]:
        raise KdxError(f"hf: {path}: train images are {tuple(x['train'].shape[1:])}, test {tuple(x['test'].shape[1:])}; "
                       "pass `data.size=N`")

    feature = train.features[label_column]
    labels = [read_column(s, label_column, f"hf: split '{split}' of {path}") for split, s in ((train_split, train), (test_split, test))]
    if isinstance(feature, datasets.ClassLabel):
        classes = list(feature.names)
        y = {"train": torch.tensor(labels[0], dtype=torch.long), "test": torch.tensor(labels[1], dtype=torch.long)}
        for split, v in zip((train_split, test_split), y.values()):
            if (v < 0).any():  # ClassLabel's -1 marks unlabelled rows (many hub test splits)
                raise KdxError(f"hf: split '{split}' of {path} has unlabelled rows (label -1); pick labelled splits "
                               "via data.train_split/test_split")
    else:  # plain values: classes are the distinct values seen in either split
        classes, ytr, yte = index_labels(labels[0], labels[1], f"hf: {path}, column '{label_column}'")
        y = {"train": torch.tensor(ytr, dtype=torch.long), "test": torch.tensor(yte, dtype=torch.long)}
    return Dataset("hf", x["train"], y["train"], x["test"], y["test"], classes,
                   default_heldout=["test", "train_subset", *CORRUPTIONS, "uniform_noise"])
