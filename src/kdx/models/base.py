"""The model contract: inputs in data space, logits out, penultimate features from the same pass."""
from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """`body` maps normalised inputs to a feature vector, `head` maps features to logits.

    Normalisation lives in the model (buffers from the dataset), so every source, corruption and
    synthesis method works in the raw input box and teacher and student can't disagree about it.
    """

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes)
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("std", std.detach().clone().float())

    def _shape(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return v.view(1, -1, *([1] * (x.ndim - 2)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self._shape(self.mean, x)) / self._shape(self.std, x))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        f = self.features(x)
        logits = self.head(f)
        return (logits, f) if return_features else logits


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
