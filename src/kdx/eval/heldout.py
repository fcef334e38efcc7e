"""Held-out distributions, registered and named: `test`, `train_subset`, `blur-2` (corruption at
severity 2), `downstream:fashion_mnist_upper`, `uniform_noise`. Each returns a fixed set of
inputs (a function of the dataset and the eval seed) and labels where it has them."""
from __future__ import annotations

import dataclasses

import torch

from kdx.data import load_dataset
from kdx.data.base import Dataset, model_input
from kdx.data.transforms import gaussian_blur, rotate, translate
from kdx.errors import KdxError
from kdx.registry import HELDOUT

_CTX = ("data", "n", "seed")


@dataclasses.dataclass
class HeldOut:
    name: str
    x: torch.Tensor  # stored form: uint8 images where untouched, float otherwise
    y: torch.Tensor | None


def parse(name: str) -> dict:
    """`blur-2` -> {name: blur, severity: 2}; `downstream:X` -> {name: downstream, dataset: X}."""
    if ":" in name:
        base, arg = name.split(":", 1)
        return {"name": base, "dataset": arg}
    base, _, sev = name.rpartition("-")
    if base and sev.isdigit():
        return {"name": base, "severity": int(sev)}
    return {"name": name}


def load(name: str, data: Dataset, n: int, seed: int) -> HeldOut:
    x, y = HELDOUT.build(parse(name), f"eval.distributions: '{name}'", data=data, n=n, seed=seed)
    return HeldOut(name, x, y)


def _test_subset(data: Dataset, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_test), generator=g)[:n]
    return model_input(data.x_test[idx]), data.y_test[idx], g


def _severity(severity: int, levels: tuple) -> float:
    if severity not in (1, 2, 3):
        raise KdxError(f"corruption severity must be 1, 2 or 3, got {severity}")
    return levels[severity - 1]


@HELDOUT.register(context=_CTX)
def test(data: Dataset, n: int, seed: int):
    """The whole test set."""
    return data.x_test, data.y_test


@HELDOUT.register(context=_CTX)
def train_subset(data: Dataset, n: int, seed: int):
    """A fixed subset (5n inputs, at most the train set) of the distillation data: fidelity where the student trained."""
    idx = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed))[:5 * n]
    return data.x_train[idx], data.y_train[idx]


@HELDOUT.register(context=_CTX)
def gaussian_noise(data: Dataset, n: int, seed: int, severity: int = 2):
    """Test inputs plus Gaussian noise of 0.08/0.16/0.32 of the input range, clipped to the box."""
    x, y, g = _test_subset(data, n, seed)
    scale = data.channel_view(data.hi - data.lo) * _severity(severity, (0.08, 0.16, 0.32))
    return data.clip_to_box(x + scale * torch.randn(x.shape, generator=g)), y


@HELDOUT.register(context=_CTX)
def blur(data: Dataset, n: int, seed: int, severity: int = 2):
    """Test inputs with Gaussian blur of sigma 0.5/1/1.5 pixels (steps for signals)."""
    x, y, _ = _test_subset(data, n, seed)
    return gaussian_blur(x, _severity(severity, (0.5, 1.0, 1.5))), y


@HELDOUT.register(context=_CTX)
def contrast(data: Dataset, n: int, seed: int, severity: int = 2):
    """Test inputs with contrast cut to 0.6/0.4/0.2 around each input's mean."""
    x, y, _ = _test_subset(data, n, seed)
    m = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    return m + _severity(severity, (0.6, 0.4, 0.2)) * (x - m), y


@HELDOUT.register(context=_CTX)
def rotation(data: Dataset, n: int, seed: int, severity: int = 2):
    """Test images rotated by up to 15/30/45 degrees."""
    if not data.is_image:
        raise KdxError(f"held-out 'rotation' needs images; '{data.name}' holds signals")
    x, y, g = _test_subset(data, n, seed)
    return rotate(x, _severity(severity, (15, 30, 45)), g), y


@HELDOUT.register(context=_CTX)
def translation(data: Dataset, n: int, seed: int, severity: int = 2):
    """Test inputs shifted by up to 10/20/30% of their size."""
    x, y, g = _test_subset(data, n, seed)
    return translate(x, _severity(severity, (0.1, 0.2, 0.3)), g), y


@HELDOUT.register(context=_CTX)
def inversion(data: Dataset, n: int, seed: int, severity: int = 2):
    """Test inputs blended toward their inversion in the box, by 0.3/0.6/1.0."""
    x, y, _ = _test_subset(data, n, seed)
    a = _severity(severity, (0.3, 0.6, 1.0))
    return (1 - a) * x + a * (data.channel_view(data.lo + data.hi) - x), y


@HELDOUT.register(context=_CTX)
def downstream(data: Dataset, n: int, seed: int, dataset: str = ""):
    """The held-out (test) split of a registered downstream dataset, e.g. downstream:fashion_mnist_upper."""
    other = load_dataset({"name": dataset}, f"held-out downstream:{dataset}")
    if other.input_shape != data.input_shape:
        raise KdxError(f"held-out downstream:{dataset} has inputs {other.input_shape}, the teacher takes {data.input_shape}")
    idx = torch.randperm(len(other.x_test), generator=torch.Generator().manual_seed(seed))[:n]
    labels_fit = other.num_classes == data.num_classes
    return other.x_test[idx], other.y_test[idx] if labels_fit else None


@HELDOUT.register(context=_CTX)
def uniform_noise(data: Dataset, n: int, seed: int):
    """Uniform noise over the train set's per-channel input box (no labels)."""
    return data.uniform_in_box(n, torch.Generator().manual_seed(seed)), None
