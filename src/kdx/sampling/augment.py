"""Image and signal views (kdx.sampling.view), batched on the device: crops and flips, mixup, cutmix.

Mixing makes soft labels (N, K) from int labels; unlabeled pools (y None) stay unlabeled.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdx.data.base import Dataset
from kdx.registry import VIEWS
from kdx.sampling.view import View


def _soft(y: torch.Tensor | None, k: int) -> torch.Tensor | None:
    if y is None or y.ndim == 2:
        return y
    return F.one_hot(y, k).float()


@VIEWS["image"].register(context=("data",))
@VIEWS["signal"].register(context=("data",))
def flip_crop(data: Dataset) -> View:
    """Random crop after 4-pixel zero padding (1-D: shift); horizontal flip for images."""
    return View(crop_and_flip)


@VIEWS["image"].register(context=("data",))
@VIEWS["signal"].register(context=("data",))
def mixup(data: Dataset, *, mixup_alpha: float) -> View:
    """Mixup with one Beta(mixup_alpha, mixup_alpha) weight per batch against a permutation of the batch."""
    return View(lambda x, y, g: mix(x, y, g, data.num_classes, mixup_alpha))


@VIEWS["image"].register(context=("data",))
@VIEWS["signal"].register(context=("data",))
def cutmix(data: Dataset, *, mixup_alpha: float) -> View:
    """CutMix: paste a random box (weight Beta(mixup_alpha, mixup_alpha)) from a permuted batch; labels mixed by area."""
    return View(lambda x, y, g: cut_and_paste(x, y, g, data.num_classes, mixup_alpha))


def crop_and_flip(x, y, g):
    pad = 4
    n = x.shape[0]
    if x.ndim == 4:
        h, w = x.shape[-2:]
        flip = torch.rand(n, generator=g, device=g.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
        xp = F.pad(x, (pad, pad, pad, pad))
        dy, dx = (torch.randint(0, 2 * pad + 1, (2, n), generator=g, device=g.device)).to(x.device)
        rows = (dy.view(-1, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * pad)
        xp = torch.gather(xp, 2, rows)
        cols = (dx.view(-1, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
        return torch.gather(xp, 3, cols), y
    length = x.shape[-1]
    xp = F.pad(x, (pad, pad))
    d = torch.randint(0, 2 * pad + 1, (n,), generator=g, device=g.device).to(x.device)
    cols = (d.view(-1, 1) + torch.arange(length, device=x.device)).view(n, 1, length).expand(n, x.shape[1], length)
    return torch.gather(xp, 2, cols), y


def mix(x, y, g, k, alpha):
    lam = _beta(alpha, g)
    perm = torch.randperm(x.shape[0], generator=g, device=g.device).to(x.device)
    ys = _soft(y, k)
    return lam * x + (1 - lam) * x[perm], (lam * ys + (1 - lam) * ys[perm]) if ys is not None else None


def cut_and_paste(x, y, g, k, alpha):
    lam = _beta(alpha, g)
    perm = torch.randperm(x.shape[0], generator=g, device=g.device).to(x.device)
    size = x.shape[2:]
    cut = [max(1, int(round(s * (1 - lam) ** (1 / len(size))))) for s in size]
    start = [int(torch.randint(0, s - c + 1, (1,), generator=g, device=g.device)) for s, c in zip(size, cut)]
    mask = torch.zeros(size, device=x.device, dtype=torch.bool)
    mask[tuple(slice(a, a + c) for a, c in zip(start, cut))] = True
    area = mask.float().mean()
    out = torch.where(mask, x[perm], x)
    ys = _soft(y, k)
    return out, ((1 - area) * ys + area * ys[perm]) if ys is not None else None


def _beta(alpha: float, g: torch.Generator) -> float:
    # torch's Beta sampler takes no generator; the inverse CDF of a generator-drawn uniform keeps
    # the draw a function of (seed, step), so a resumed run mixes exactly as an uninterrupted one.
    from scipy.stats import beta  # here: scipy.stats takes seconds to import, and only mixing needs it

    return float(beta.ppf(float(torch.rand(1, generator=g, device=g.device)), alpha, alpha))
