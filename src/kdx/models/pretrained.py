"""Already-trained classifiers (Hugging Face, torchvision) behind kdx's model contract.

The wrapper takes raw inputs in the data's box ([0, 1] floats for images), adapts the channels
(grey repeated to RGB, RGB to luma for a 1-channel network), resizes and center-crops to what the
network expects, normalises, and returns logits in the dataset's class order; with
`return_features=True` also the input of the network's classification head (a forward hook), so
every source, corruption, synthesis method and probe works unchanged. All of it is torch ops,
differentiable (inversion and Langevin synthesis back-propagate through it).

`arrives_trained` and `weights_digest` tell the teacher cache that the network is not to be trained
and what identifies it (a hash of the weight files).
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from kdx.data.base import Dataset
from kdx.errors import KdxError
from kdx.models.base import Classifier, call_capturing, require_image

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, what PIL's convert("L") uses


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """What happens to raw inputs before the network, in this order.

    `mean`/`std` are in the raw input space (for a network fed x * scale, normalised by m, s:
    mean = m / scale, std = s / scale), so they keep the meaning of `Classifier.mean`/`std`.
    """

    channels: int  # the network's input channels
    resize: Optional[tuple[str, int, int]] = None  # ("exact", h, w) or ("shortest", edge, 0)
    crop: Optional[tuple[int, int]] = None  # center crop (h, w) after the resize
    interpolation: str = "bilinear"  # nearest | bilinear | bicubic
    flip_channels: bool = False  # RGB -> BGR (MobileViT's processors)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def describe(self) -> str:
        parts = []
        if self.resize:
            kind, a, b = self.resize
            parts.append(f"resize to {a}x{b}" if kind == "exact" else f"resize the short side to {a}")
            parts[-1] += f" ({self.interpolation})"
        if self.crop:
            parts.append(f"center crop {self.crop[0]}x{self.crop[1]}")
        parts.append(f"normalise with mean {[round(m, 4) for m in self.mean]}, std {[round(s, 4) for s in self.std]}")
        return ", ".join(parts)


def require_image_channels(data: Dataset, name: str, channels: int) -> None:
    """Images with `channels` channels, or with a count the model adapts (1 -> channels, 3 -> 1)."""
    require_image(data, f"model '{name}'")
    c = data.input_shape[0]
    if c != channels and c != 1 and not (c == 3 and channels == 1):
        raise KdxError(f"model '{name}' takes {channels}-channel images; dataset '{data.name}' has {c} channels "
                       f"(kdx adapts 1 -> {channels} and 3 -> 1 only)")


def files_digest(paths: Sequence[Path]) -> str:
    """sha256 over the files' names and bytes (streamed): what identifies a set of trained weights."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.name):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def shortest_edge_size(h: int, w: int, edge: int) -> tuple[int, int]:
    """The short side to `edge`, the long side scaled and truncated (transformers' rule)."""
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(edge * long / short)
    return (new_long, edge) if w <= h else (edge, new_long)


def center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Center crop (zero padding where the image is smaller), top/left offsets rounded down."""
    H, W = x.shape[-2:]
    if h > H or w > W:
        pw, ph = max(w - W, 0), max(h - H, 0)
        x = nn.functional.pad(x, (pw // 2, (pw + 1) // 2, ph // 2, (ph + 1) // 2))
        H, W = x.shape[-2:]
    top, left = int((H - h) / 2.0), int((W - w) / 2.0)
    return x[..., top:top + h, left:left + w]


class PretrainedClassifier(Classifier):
    """A trained network behind the Classifier contract (see the module docstring).

    `net` maps preprocessed inputs to logits in its own label order; `order[j]` is the logit that
    belongs to the dataset's class j (None: the same order). `head` names the module whose input
    are the penultimate features (None: not found; `hint` says why, raised when features are asked).
    """

    def __init__(self, net: nn.Module, prep: Preprocess, in_channels: int, head: Optional[str], hint: str = "",
                 order: Optional[Sequence[int]] = None, name: str = "", weights_digest: Optional[str] = None):
        nn.Module.__init__(self)  # not Classifier.__init__: the network brings its own head
        self.net = net
        self.prep, self.in_channels, self.head_name, self.hint, self.kind = prep, in_channels, head, hint, name
        self.register_buffer("mean", torch.tensor(prep.mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(prep.std, dtype=torch.float32))
        if order is not None and list(order) != list(range(len(order))):
            self.register_buffer("order", torch.tensor(list(order), dtype=torch.long))
        else:
            self.order = None
        self.arrives_trained = weights_digest is not None
        self.weights_digest = weights_digest

    # -- preprocessing
    def adapt_channels(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise KdxError(f"model '{self.kind}': expected images (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        c = self.prep.channels
        if self.in_channels == c:
            return x
        if self.in_channels == 1:
            return x.expand(-1, c, -1, -1)
        w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        p = self.prep
        if p.resize is not None:
            kind, a, b = p.resize
            size = (a, b) if kind == "exact" else shortest_edge_size(*x.shape[-2:], a)
            if tuple(x.shape[-2:]) != tuple(size):
                import torchvision.transforms.v2.functional as TF
                from torchvision.transforms import InterpolationMode

                mode = InterpolationMode(p.interpolation)
                x = TF.resize(x, list(size), interpolation=mode, antialias=mode != InterpolationMode.NEAREST)
        if p.crop is not None:
            x = center_crop(x, *p.crop)
        return x

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Raw inputs -> what the network takes (channels, size, normalisation)."""
        return self.resize_normalise(self.adapt_channels(x))

    def resize_normalise(self, x: torch.Tensor) -> torch.Tensor:
        """The rest, on inputs that have the network's channels already."""
        x = self.resize(x)
        x = (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
        return x.flip(1) if self.prep.flip_channels else x

    # -- the network
    def call_net(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z)
        return out if isinstance(out, torch.Tensor) else out.logits  # torchvision's Inception/GoogLeNet outputs

    def head_module(self) -> nn.Module:
        if self.head_name is None:
            raise KdxError(f"model '{self.kind}': cannot give penultimate features: {self.hint}")
        return self.net.get_submodule(self.head_name)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        z = self.preprocess(x)
        if not return_features:
            logits = self.call_net(z)
            return logits if self.order is None else logits[:, self.order]
        logits, feats = call_capturing(self.head_module(), lambda: self.call_net(z), True, f"model '{self.kind}'")
        return (logits if self.order is None else logits[:, self.order]), feats

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x, return_features=True)[1]
