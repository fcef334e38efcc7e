"""The model contract: inputs in data space, logits out, penultimate features from the same pass."""
from __future__ import annotations

import torch
from torch import nn

from kdx.data.base import Dataset, as_float
from kdx.device import autocast
from kdx.registry import MODELS


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


def build_model(spec: dict, data: Dataset, where: str, seed: int) -> Classifier:
    torch.manual_seed(seed)  # the init is a function of the seed alone
    return MODELS.build(spec, where, data=data)


@torch.no_grad()
def predict(model: torch.nn.Module, x_stored: torch.Tensor, batch_size: int = 1024, features: bool = False):
    """Logits (and penultimate features) of a model in eval mode, in large batches, on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits, feats = [], []
    for i in range(0, len(x_stored), batch_size):
        x = as_float(x_stored[i:i + batch_size].to(device))
        if x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            out = model(x, return_features=features)
        lg, ft = out if features else (out, None)
        logits.append(lg.float())
        if features:
            feats.append(ft.float())
    model.train(was_training)
    return (torch.cat(logits), torch.cat(feats)) if features else torch.cat(logits)
