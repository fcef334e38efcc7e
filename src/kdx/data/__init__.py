"""Registered datasets; importing this module registers them all."""
import json

from kdx.data import cifar, digits, fashion_mnist, hf, image_folder, lm_text, mnist1d, tabular, text, text_sets  # noqa: F401
from kdx.data.base import Dataset, model_input
from kdx.data.tensors import from_dataset, from_tensors
from kdx.registry import DATASETS


_LOADED: dict[str, Dataset] = {}


def load_dataset(spec: dict, where: str = "data") -> Dataset:
    """Build the dataset a `{name: ..., **args}` config section names; once per process (the
    source, the held-out sets and the teacher all ask for the same ones)."""
    key = json.dumps(spec, sort_keys=True, default=str)
    if key not in _LOADED:
        _LOADED[key] = DATASETS.build(spec, where)
    return _LOADED[key]


__all__ = ["Dataset", "from_dataset", "from_tensors", "load_dataset", "model_input"]
