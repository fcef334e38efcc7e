"""Registered models; importing this module registers them all."""
from kdx.models import cnn, hf, torchvision_models, torchvision_pretrained, vit  # noqa: F401
from kdx.models.base import Classifier, num_params

__all__ = ["Classifier", "num_params"]
