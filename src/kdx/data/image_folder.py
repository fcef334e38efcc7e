"""A folder of image files, one subfolder per class, split into train/ and test/ (torchvision ImageFolder layout)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from kdx.data.base import Dataset
from kdx.data.fashion_mnist import CORRUPTIONS
from kdx.errors import KdxError
from kdx.registry import DATASETS

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp"}


def _read_split(folder: Path, classes: list[str] | None, size: int, grayscale: bool):
    if not folder.is_dir():
        raise KdxError(f"image_folder: {folder} does not exist; expected ROOT/train/<class>/*.png and "
                       f"ROOT/test/<class>/*.png, with `data.root=ROOT`")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir())
    classes = classes if classes is not None else found
    extra = sorted(set(found) - set(classes))
    if extra:
        raise KdxError(f"image_folder: {folder} has classes {extra} that train/ lacks; give both splits the same class folders")
    xs, ys = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in (folder / name).glob("*") if f.suffix.lower() in EXTENSIONS) if name in found else []
        for f in files:
            a = _read_image(f, size, grayscale)
            xs.append(a[None] if grayscale else a.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise KdxError(f"image_folder: no {'/'.join(sorted(EXTENSIONS))} images under {folder}/<class>/")
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.int64), classes


def _read_image(f: Path, size: int, grayscale: bool) -> np.ndarray:
    """One image file as uint8 (size, size) or (size, size, 3); a file PIL cannot decode, or one larger
    than PIL's decompression-bomb limit, is refused naming it."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f) as img:
                img = img.convert("L" if grayscale else "RGB")
                if img.size != (size, size):
                    img = img.resize((size, size), Image.BILINEAR)
                return np.asarray(img, np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise KdxError(f"image_folder: {f} is too large to decode ({e}); resize it or remove it") from None
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError ... for a broken file
        raise KdxError(f"image_folder: {f} is not an image PIL can read ({type(e).__name__}: {e}); "
                       "replace or remove the file") from None


@DATASETS.register()
def image_folder(root: str = "", size: int = 32, grayscale: bool = False) -> Dataset:
    """Your own images: data.root/{train,test}/<class>/*.png|jpg|bmp, resized to size x size."""
    if not root:
        raise KdxError("image_folder: set `data.root` to a folder holding train/<class>/ and test/<class>/ image folders")
    if size <= 0:
        raise KdxError(f"image_folder: data.size must be positive, got {size}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise KdxError(f"image_folder: data.root={root} does not exist; expected {base}/train/<class>/*.png and "
                       f"{base}/test/<class>/*.png ({', '.join(sorted(EXTENSIONS))} files)")
    xtr, ytr, classes = _read_split(base / "train", None, size, grayscale)
    xte, yte, _ = _read_split(base / "test", classes, size, grayscale)
    return Dataset("image_folder", xtr, ytr, xte, yte, classes,
                   default_heldout=["test", "train_subset", *CORRUPTIONS, "uniform_noise"])
