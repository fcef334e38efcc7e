"""The in-memory dataset every source, model and eval reads: tensors, so the loop can keep them on the device."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from kdx.errors import KdxError


@dataclasses.dataclass
class Dataset:
    """Images are uint8 (N, C, H, W) in [0, 255]; signals are float32 (N, C, L). Labels int64.

    Models see `as_float(x)`: images in [0, 1]. `mean`/`std` (per channel, in that float space) are
    what models normalise with; `lo`/`hi` is the per-channel input box measured on the train set,
    over which the noise sources sample and inside which synthesis stays.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    default_heldout: list[str] = dataclasses.field(default_factory=lambda: ["test", "train_subset"])
    mean: torch.Tensor = dataclasses.field(init=False)
    std: torch.Tensor = dataclasses.field(init=False)
    lo: torch.Tensor = dataclasses.field(init=False)
    hi: torch.Tensor = dataclasses.field(init=False)

    def __post_init__(self):
        if self.x_train.ndim not in (3, 4):
            raise KdxError(f"dataset '{self.name}': inputs must be (N, C, L) or (N, C, H, W), got {tuple(self.x_train.shape)}")
        self.y_train = self.y_train.long()
        self.y_test = self.y_test.long()
        x = as_float(self.x_train)
        dims = [0] + list(range(2, x.ndim))
        self.mean, self.std = x.mean(dims), x.std(dims).clamp_min(1e-6)
        self.lo, self.hi = x.amin(dims), x.amax(dims)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.x_train.ndim == 4

    def channel_view(self, v: torch.Tensor) -> torch.Tensor:
        """Reshape a per-channel vector to broadcast against a batch."""
        return v.view(1, -1, *([1] * (self.x_train.ndim - 2)))

    def box(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel input box (lo, hi), shaped to broadcast against a batch, on `device`."""
        return self.channel_view(self.lo).to(device), self.channel_view(self.hi).to(device)

    def clip_to_box(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.box(x.device)
        return torch.maximum(torch.minimum(x, hi), lo)

    def uniform_in_box(self, n: int, g: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
        """n inputs uniform over the box: the integral over the whole input space."""
        lo, hi = self.box(device)
        return lo + (hi - lo) * torch.rand((n, *self.input_shape), generator=g, device=device)


def as_float(x: torch.Tensor) -> torch.Tensor:
    """The one conversion from stored inputs to model inputs: uint8 images to [0, 1] floats."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def data_root(root: str | None, *subdirs: str) -> list[Path]:
    """Where to look for a dataset's files: the given root alone (a root the user names is
    authoritative: no silent fallback to another copy), else $KDX_DATA, then ~/.cache/kdx/data."""
    if root:
        bases = [Path(root).expanduser()]
    else:
        bases = [Path(os.environ["KDX_DATA"])] if os.environ.get("KDX_DATA") else []
        bases.append(Path.home() / ".cache" / "kdx" / "data")
    return [b.joinpath(*subdirs) for b in bases] + bases
