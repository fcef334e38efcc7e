"""Registered models, and the helpers every stage uses on them; importing this package registers them all."""
from kdx.models import (blackbox, cnn, ensemble, gpt, hf, text, timm_models, torchvision_models,  # noqa: F401
                        torchvision_pretrained, vit)
from kdx.models.base import Classifier, build_model, load_weights, num_params, predict, read_state_dict

__all__ = ["Classifier", "build_model", "load_weights", "num_params", "predict", "read_state_dict"]
