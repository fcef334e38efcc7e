"""A transformers ViTForImageClassification built from a config (no hub weights)."""
from __future__ import annotations

from torch import nn

from kdx.data.base import Dataset
from kdx.errors import KdxError
from kdx.models.base import Classifier, require_image
from kdx.registry import MODELS


class _ViTBody(nn.Module):
    """The ViT encoder up to the [CLS] token after the final layer norm: the classifier's input."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, x):
        return self.vit(pixel_values=x).last_hidden_state[:, 0]


@MODELS.register(context=("data",))
def vit(data: Dataset, patch_size: int = 4, hidden_size: int = 128, layers: int = 4, heads: int = 4,
        mlp_size: int = 256) -> Classifier:
    """transformers ViT from ViTConfig (random init), patch size and depth by config."""
    from transformers import ViTConfig, ViTForImageClassification

    require_image(data, "model 'vit'")
    c, h, w = data.input_shape
    if h != w or h % patch_size:
        raise KdxError(f"model 'vit': image {h}x{w} must be square and divisible by patch_size={patch_size}")
    cfg = ViTConfig(image_size=h, patch_size=patch_size, num_channels=c, hidden_size=hidden_size,
                    num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp_size,
                    num_labels=data.num_classes)
    model = ViTForImageClassification(cfg)
    return Classifier(_ViTBody(model.vit), hidden_size, data.num_classes, data.mean, data.std)
