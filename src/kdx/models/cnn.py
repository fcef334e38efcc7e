"""Small CNN and MLP families sized by config; the CNN is 2-D for images and 1-D for signals."""
from __future__ import annotations

import math

from torch import nn

from kdx.data.base import CONTINUOUS, Dataset
from kdx.data.tabular import one_hot, one_hot_width
from kdx.models.base import TEXT_MODELS, Classifier
from kdx.registry import MODELS


@MODELS.register(context=("data",))
def cnn(data: Dataset, channels: list[int] = [32, 64, 128], convs_per_block: int = 1, hidden: int = 1200,
        dropout: float = 0.0) -> Classifier:
    """VGG-style CNN: blocks of conv-BN-ReLU then 2x max-pool, a hidden layer, a linear head (2-D or 1-D by data)."""
    data.require(("image", "signal"), "model 'cnn'", "'mlp'" if data.modality == "tabular" else TEXT_MODELS)
    one_d = not data.is_image
    conv, bn, pool = (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d) if one_d else (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d)
    layers, c_in = [], data.input_shape[0]
    spatial = list(data.input_shape[1:])
    for c in channels:
        for _ in range(convs_per_block):
            layers += [conv(c_in, c, 3, padding=1, bias=False), bn(c), nn.ReLU(inplace=True)]
            c_in = c
        layers.append(pool(2))
        spatial = [s // 2 for s in spatial]
    flat = c_in * math.prod(spatial)
    layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(flat, hidden), nn.ReLU(inplace=True)]
    return Classifier(nn.Sequential(*layers), hidden, data.num_classes, data.mean, data.std)


class OneHot(nn.Module):
    """A table's categorical codes one-hot (kdx.data.tabular.one_hot), the continuous features as they are."""

    def __init__(self, categories: dict[int, list[str]]):
        super().__init__()
        self.categories = categories

    def forward(self, x):
        return one_hot(x, self.categories)


@MODELS.register(context=("data",))
def mlp(data: Dataset, hidden: list[int] = [512, 256]) -> Classifier:
    """Multi-layer perceptron on flattened inputs (tables: categorical columns one-hot), ReLU between layers."""
    data.require(CONTINUOUS, "model 'mlp'", TEXT_MODELS)
    layers, d = [nn.Flatten()], math.prod(data.input_shape)
    if data.modality == "tabular" and data.categories:
        layers, d = [OneHot(data.categories)], one_hot_width(d, data.categories)
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU(inplace=True)]
        d = h
    return Classifier(nn.Sequential(*layers), d, data.num_classes, data.mean, data.std)
