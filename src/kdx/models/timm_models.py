"""timm image models: `{name: timm, arch: resnet50, checkpoint_file: FILE, num_classes: 10}` (pip install 'kdx[timm]').

`timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": FILE})` loads the weights from
the local file only (nothing is downloaded; the file is first read with weights_only=True, so a pickle
that holds code is refused). The network takes the data's channels (timm adapts a 3-channel first
convolution to 1), inputs are resized and normalised inside the model from timm's data config (its
input size, unless `image_size`, its mean and std), so kdx keeps feeding raw [0, 1] images. The
penultimate features are timm's own: `forward_head(forward_features(x), pre_logits=True)`. A checkpoint
whose classifier has the dataset's classes arrives trained (a teacher used as it is); one with another
head (e.g. ImageNet's) keeps its backbone and gets a new head of num_classes, trained by kdx; without a
checkpoint the network starts untrained.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from kdx.data.base import Dataset
from kdx.errors import KdxError, first_line
from kdx.models.base import read_state_dict
from kdx.models.pretrained import PretrainedClassifier, Preprocess, files_digest, require_image
from kdx.registry import MODELS


class TimmClassifier(PretrainedClassifier):
    """A timm network: logits and features from one forward_features pass."""

    def forward(self, x: torch.Tensor, return_features: bool = False):
        z = self.net.forward_features(self.preprocess(x))
        logits = self.net.forward_head(z)
        return (logits, self.net.forward_head(z, pre_logits=True)) if return_features else logits


def _import_timm():
    try:
        import timm
    except ImportError:
        raise KdxError("model 'timm' needs the timm package: pip install 'kdx[timm]'") from None
    return timm


def _checkpoint_classes(path: Path, classifier: str) -> Optional[int]:
    """How many classes the checkpoint's classifier has (None: it holds no classifier)."""
    state = read_state_dict(path, "model 'timm': checkpoint_file")  # weights_only=True: never runs code
    weight = state.get(f"{classifier}.weight")
    return None if weight is None else int(weight.shape[0])


@MODELS.register(name="timm", context=("data",))
def timm_model(data: Dataset, arch: str, checkpoint_file: Optional[str] = None, num_classes: Optional[int] = None,
               image_size: Optional[int] = None) -> TimmClassifier:
    """A timm model (arch) with weights from a local checkpoint_file; resized and normalised inside."""
    timm = _import_timm()
    require_image(data, "model 'timm'")
    num_classes = num_classes or data.num_classes
    if num_classes != data.num_classes:
        raise KdxError(f"model 'timm': num_classes={num_classes}, but dataset '{data.name}' has {data.num_classes} "
                       "classes; kdx needs the model's outputs in the dataset's class order (leave num_classes out)")
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:6]
        raise KdxError(f"model 'timm': unknown arch '{arch}'" + (f"; did you mean {', '.join(close)}?" if close else "")
                       + " (timm.list_models() lists them)")
    channels = data.input_shape[0]
    digest, kwargs = None, {}
    if checkpoint_file:
        path = Path(checkpoint_file).expanduser()
        pretrained_cfg = timm.models.get_pretrained_cfg(arch)
        classifier = pretrained_cfg.classifier if pretrained_cfg is not None else "head"
        trained_classes = _checkpoint_classes(path, classifier)
        # the overlay points timm at the file (never the hub); its num_classes tells timm whether to keep the head
        kwargs = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path),
                                                                 "num_classes": trained_classes or 0}}
        if trained_classes == num_classes:
            digest = files_digest([path])  # the whole network is trained: it arrives trained
    try:
        net = timm.create_model(arch, num_classes=num_classes, in_chans=channels, **kwargs)
    except (RuntimeError, KeyError, ValueError) as e:
        raise KdxError(f"model 'timm': {checkpoint_file} does not fit {arch} ({type(e).__name__}: "
                       f"{first_line(e, 300, 'no message')}); give a state dict of the same architecture") from None
    cfg = timm.data.resolve_model_data_config(net)
    size = image_size or int(cfg["input_size"][-1])
    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    if channels == 1:  # one grey channel: the mean of the RGB statistics
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    interpolation = cfg.get("interpolation") if cfg.get("interpolation") in ("nearest", "bilinear", "bicubic") else "bilinear"
    prep = Preprocess(channels=channels, resize=("exact", size, size), interpolation=interpolation, mean=mean, std=std)
    return TimmClassifier(net.eval() if digest else net, prep, channels, None, "", None, "timm", digest)
