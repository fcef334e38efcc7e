"""Fashion-MNIST and two downstream sets built from it (a domain shift and a class subset)."""
from __future__ import annotations

from pathlib import Path

import torch

import kdx.data  # for load_dataset's per-process cache, read when called (kdx.data imports this module first)
from kdx.data.base import Dataset, model_input, data_root
from kdx.data.idx import find_idx_split, read_idx
from kdx.data.transforms import gaussian_blur, rotate
from kdx.errors import KdxError
from kdx.registry import DATASETS

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
UPPER_BODY = [0, 2, 4, 6]  # T-shirt, Pullover, Coat, Shirt: the classes teachers confuse most
IDX_FILES = [f"{p}-{k}-idx{n}-ubyte.gz" for p in ("train", "t10k") for k, n in (("images", 3), ("labels", 1))]
CORRUPTIONS = [f"{c}-{s}" for c in ("gaussian_noise", "blur", "contrast", "rotation", "translation", "negative") for s in (1, 2, 3)]


def _load_fashion_mnist(root: str | None, download: bool) -> tuple[torch.Tensor, ...]:
    dirs = []
    for base in data_root(root, "fashion-mnist"):
        dirs += [base, base / "FashionMNIST" / "raw"]
    if not root:  # a root the user names is authoritative: no fallback to Debian's copy
        dirs.append(DEBIAN_DIR)
    train, test = find_idx_split(dirs, "train"), find_idx_split(dirs, "t10k")
    if (train is None or test is None) and download:
        from torchvision.datasets import FashionMNIST

        target = Path(root) if root else data_root(None)[-1] / "fashion-mnist"
        FashionMNIST(str(target), train=True, download=True)
        return _load_fashion_mnist(str(target), download=False)
    if (train is None or test is None) and root:
        state = "does not exist" if not Path(root).expanduser().is_dir() else "does not hold them"
        raise KdxError(
            f"Fashion-MNIST: data.root={root} {state}: looked for {', '.join(IDX_FILES)} (or the same without "
            f".gz) in " + ", ".join(str(d) for d in dirs) + ". Point `data.root=DIR` at the folder holding the "
            "four IDX files, or drop data.root to use $KDX_DATA, ~/.cache/kdx/data or Debian's copy "
            "(`sudo apt-get install dataset-fashion-mnist`)."
        )
    if train is None or test is None:
        raise KdxError(
            "Fashion-MNIST not found (looked in: " + ", ".join(str(d) for d in dirs) + "). Get it with "
            "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or let torchvision download it "
            "with `data.download=true` when online, or point `data.root=DIR` (or $KDX_DATA) at a folder "
            "holding the four IDX files (train-images-idx3-ubyte.gz, ...)."
        )
    return (*_checked_split(*train), *_checked_split(*test))


def _checked_split(images: Path, labels: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One split's IDX files, refused unless they hold what Fashion-MNIST's do: uint8 (N, 28, 28)
    images and N uint8 labels in 0..9."""
    x, y = read_idx(images), read_idx(labels)
    fix = "delete the file and re-fetch Fashion-MNIST (or point data.root at an intact copy)"
    if x.dtype != torch.uint8 or x.ndim != 3 or tuple(x.shape[1:]) != (28, 28) or len(x) == 0:
        raise KdxError(f"{images} holds {x.dtype} {tuple(x.shape)}, not Fashion-MNIST's uint8 (N, 28, 28) images; {fix}")
    if y.dtype != torch.uint8 or y.ndim != 1 or len(y) != len(x):
        raise KdxError(f"{labels} holds {y.dtype} {tuple(y.shape)}, not the {len(x)} uint8 labels of {images.name}; {fix}")
    if int(y.max()) >= len(CLASSES):
        raise KdxError(f"{labels} holds label {int(y.max())}; Fashion-MNIST's are 0..{len(CLASSES) - 1}: {fix}")
    return x, y.long()


@DATASETS.register()
def fashion_mnist(root: str | None = None, download: bool = False) -> Dataset:
    """Fashion-MNIST 28x28 grey clothes, 60k/10k (Debian package, a torchvision root, or download)."""
    xtr, ytr, xte, yte = _load_fashion_mnist(root, download)
    return Dataset("fashion_mnist", xtr.unsqueeze(1), ytr, xte.unsqueeze(1), yte, CLASSES,
                   default_heldout=["test", "train_subset", *CORRUPTIONS, "downstream:fashion_mnist_shifted",
                                    "downstream:fashion_mnist_upper", "uniform_noise"])


def _base(root: str | None) -> Dataset:
    return kdx.data.load_dataset({"name": "fashion_mnist", "root": root})  # Fashion-MNIST is read once


@DATASETS.register()
def fashion_mnist_shifted(root: str | None = None, max_degrees: float = 30.0, blur_sigma: float = 1.0, seed: int = 0) -> Dataset:
    """Downstream domain shift: Fashion-MNIST rotated up to +-max_degrees and Gaussian-blurred."""
    base = _base(root)
    gen = torch.Generator().manual_seed(seed)

    def shift(x):
        y = gaussian_blur(rotate(model_input(x), max_degrees, gen), blur_sigma)
        return (y.clamp(0, 1) * 255).round().to(torch.uint8)

    return Dataset("fashion_mnist_shifted", shift(base.x_train), base.y_train, shift(base.x_test), base.y_test, CLASSES)


@DATASETS.register()
def fashion_mnist_upper(root: str | None = None) -> Dataset:
    """Downstream class subset: only the four upper-body garments (T-shirt, Pullover, Coat, Shirt), 10-way labels kept."""
    base = _base(root)
    tr = torch.isin(base.y_train, torch.tensor(UPPER_BODY))
    te = torch.isin(base.y_test, torch.tensor(UPPER_BODY))
    return Dataset("fashion_mnist_upper", base.x_train[tr], base.y_train[tr], base.x_test[te], base.y_test[te], CLASSES)
