"""Registered models, and the helpers every stage uses on them; importing this package registers them all."""
from kdx.models import cnn, gpt, hf, text, timm_models, torchvision_models, torchvision_pretrained, vit  # noqa: F401
from kdx.models.base import Classifier, build_model, load_weights, num_params, predict, read_state_dict

__all__ = ["Classifier", "build_model", "load_weights", "num_params", "predict", "read_state_dict"]
