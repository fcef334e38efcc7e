"""Registered datasets; importing this module registers them all."""
from kdx.data import cifar, digits, fashion_mnist, hf, image_folder, mnist1d  # noqa: F401
from kdx.data.base import Dataset, as_float
from kdx.registry import DATASETS


def load(spec: dict, where: str = "data") -> Dataset:
    """Build the dataset a `{name: ..., **args}` config section names."""
    return DATASETS.build(spec, where)


__all__ = ["Dataset", "as_float", "load"]
