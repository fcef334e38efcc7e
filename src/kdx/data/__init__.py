"""Registered datasets; importing this module registers them all."""
import json

from kdx.data import difficulty
from kdx.data import cifar, digits, fashion_mnist, hf, image_folder, lm_text, mnist1d, tabular, text, text_sets  # noqa: F401
from kdx.data.base import Dataset, model_input
from kdx.data.tensors import from_dataset, from_tensors
from kdx.registry import DATASETS


_LOADED: dict[str, Dataset] = {}


def load_dataset(spec: dict, where: str = "data") -> Dataset:
    """Build the dataset a `{name: ..., **args}` config section names; once per process (the
    source, the held-out sets and the teacher all ask for the same ones). `train_size`, `label_noise` and
    `noise_seed` are any classification dataset's (kdx.data.difficulty)."""
    key = json.dumps(spec, sort_keys=True, default=str)
    if key not in _LOADED:
        own, hard = difficulty.split_spec(spec)  # train_size, label_noise: any classification dataset takes them
        data = DATASETS.build(own, where)
        _LOADED[key] = difficulty.apply(data, **hard) if hard else data
    return _LOADED[key]


__all__ = ["Dataset", "from_dataset", "from_tensors", "load_dataset", "model_input"]
