"""A user's own module under kdx's model contract: any `nn.Module` mapping inputs to (N, classes) logits
(a tensor, or an output with `.logits` like transformers' models), with penultimate features taken from
a named layer by a forward hook, so probes work on models kdx did not build."""
from __future__ import annotations

import torch
from torch import nn

from kdx.data.base import Dataset, model_input
from kdx.errors import KdxError, first_line
from kdx.models.base import call_capturing


def _logits(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


class ModuleClassifier(nn.Module):
    """`module(x)` gives logits; `features` names the layer whose output (or, for the default, the input
    of the last nn.Linear, the head) is the penultimate feature vector."""

    def __init__(self, module: nn.Module, features: str | None = None, where: str = "model"):
        super().__init__()
        self.module, self.where = module, where
        layers = dict(module.named_modules())
        if features is not None:
            if features not in layers or features == "":
                names = [n for n in layers if n]
                raise KdxError(f"{where}: no layer named '{features}' for features; its layers are: "
                               f"{', '.join(names[:40])}{' ...' if len(names) > 40 else ''}")
            self.feature_layer, self.feature_is_input = layers[features], False
        else:
            linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
            self.feature_layer, self.feature_is_input = (linears[-1], True) if linears else (None, False)
        self.features_name = features

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if not return_features:
            return _logits(self.module(x))
        if self.feature_layer is None:
            raise KdxError(f"{self.where}: probes need penultimate features and this module has no nn.Linear head; "
                           "name the layer that gives them (features='avgpool', for example)")
        return call_capturing(self.feature_layer, lambda: _logits(self.module(x)), self.feature_is_input, self.where)


def wrap_model(module: nn.Module, data: Dataset, features: str | None = None, where: str = "model") -> nn.Module:
    """kdx's own models pass through; any other module is wrapped and checked on two of the data's inputs:
    it must accept them and return (N, data.num_classes) logits."""
    if hasattr(module, "head") and hasattr(module, "body") and features is None:  # a kdx Classifier
        model = module
    else:
        model = ModuleClassifier(module, features, where)
    x = model_input(data.x_train[:2]).to(next(module.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
            if features is not None:
                model(x, return_features=True)
    except KdxError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the user's forward raises on these inputs
        raise KdxError(f"{where} ({type(module).__name__}) fails on the data's inputs, shape {tuple(x.shape)} "
                       f"{x.dtype} in [{float(x.min()):.3g}, {float(x.max()):.3g}]: {type(e).__name__}: "
                       f"{first_line(e)}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.shape != (2, data.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise KdxError(f"{where} ({type(module).__name__}) must map inputs to logits of shape (N, {data.num_classes}) "
                       f"for the data's {data.num_classes} classes; on 2 inputs it gave {shape}")
    return model
