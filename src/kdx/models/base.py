"""The model contract: inputs in data space, logits out, penultimate features from the same pass."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kdx.data.base import Dataset, model_input
from kdx.device import autocast
from kdx.errors import KdxError, first_line
from kdx.registry import MODELS


TEXT_MODELS = "a text model: bert, bag_of_embeddings or text_cnn"  # where image and signal models point text users


def require_image(data: Dataset, what: str) -> None:
    """An image-only part refuses signals (cnn and mlp take them) and text (the text models take it)."""
    data.require("image", what, {"signal": "'cnn' or 'mlp'", "tabular": "'mlp'"}.get(data.modality, TEXT_MODELS))


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
        x = model_input(x_stored[i:i + batch_size].to(device))
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


def read_state_dict(path: str | Path, where: str) -> dict[str, torch.Tensor]:
    """A state dict from a user's file: safetensors, or torch.save'd tensors loaded with weights_only=True
    (a pickle that holds code is refused, never run). {"model": ...} and {"state_dict": ...} are unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise KdxError(f"{where}: {path} does not exist (or is not a file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and safetensors each raise their own types
        raise KdxError(f"{where}: {path} is not a weights file kdx can read ({type(e).__name__}: "
                       f"{first_line(e, 200, 'unreadable')}); give a state dict saved with "
                       "torch.save(model.state_dict(), path) or a .safetensors file") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                            for k, v in state.items()):
        what = type(state).__name__ if not isinstance(state, dict) or not state else "dict with non-tensor values or non-name keys"
        raise KdxError(f"{where}: {path} holds a {what}, not a state dict of tensors; save one "
                       "with torch.save(model.state_dict(), path)")
    bad = next((k for k, v in state.items() if (v.is_floating_point() or v.is_complex()) and not torch.isfinite(v).all()), None)
    if bad is not None:  # a diverged training's weights: every output would be NaN
        raise KdxError(f"{where}: {path} holds NaN or infinite values in '{bad}' (the training that wrote it "
                       "diverged?); give weights with finite values")
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | Path, where: str) -> nn.Module:
    """Load a user's weights file into `model`, naming the file and the mismatch when they do not fit."""
    try:
        model.load_state_dict(read_state_dict(path, where))
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        model_key = "teacher.model" if where.startswith("teacher") else "student.model"
        raise KdxError(f"{where}: {path} does not fit the configured model: {' '.join(lines[:3])[:400]}; give weights "
                       f"saved from the same model, or set {model_key} to the model they were saved from") from None
    return model


def call_capturing(layer: nn.Module, call, layer_input: bool = True, where: str = "model"):
    """`call()` with `layer`'s input (or output) caught by a forward hook: (call's result, that tensor
    flattened to (N, -1)). How models kdx did not build give penultimate features from the same pass."""
    captured: list = []
    handle = layer.register_forward_hook(lambda m, inputs, out: captured.append(inputs[0] if layer_input else out))
    try:
        result = call()
    finally:
        handle.remove()
    if not captured:
        raise KdxError(f"{where}: the features layer did not run in the forward pass")
    feats = captured[-1]
    feats = feats if isinstance(feats, torch.Tensor) else getattr(feats, "logits", feats[0])
    return result, feats.flatten(1)
