"""Batched, device-side input transforms shared by downstream datasets and held-out corruptions.

All take and return float batches in model-input space ([0, 1] for images) and a torch.Generator,
so each transformed set is a fixed, reproducible function of (inputs, seed).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotate(x: torch.Tensor, max_degrees: float, gen: torch.Generator) -> torch.Tensor:
    """Rotate each image by an angle drawn uniformly from [-max_degrees, max_degrees]."""
    ang = (torch.rand(x.shape[0], generator=gen, device=gen.device) * 2 - 1) * math.radians(max_degrees)
    cos, sin, zero = ang.cos(), ang.sin(), torch.zeros_like(ang)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    return _affine(x, theta.to(x.device, x.dtype))


def translate(x: torch.Tensor, max_fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Shift each input by up to max_fraction of its size along every spatial axis (zero fill)."""
    if x.ndim == 3:  # signals: integer roll with zero fill
        n, length = x.shape[0], x.shape[-1]
        shift = ((torch.rand(n, generator=gen, device=gen.device) * 2 - 1) * max_fraction * length).round().long()
        idx = torch.arange(length, device=x.device).view(1, -1) - shift.view(-1, 1).to(x.device)
        valid = (idx >= 0) & (idx < length)
        out = torch.gather(x, 2, idx.clamp(0, length - 1).unsqueeze(1).expand_as(x))
        return out * valid.unsqueeze(1)
    t = (torch.rand(x.shape[0], 2, generator=gen, device=gen.device) * 2 - 1) * 2 * max_fraction
    eye = torch.eye(2, device=x.device, dtype=x.dtype).expand(x.shape[0], 2, 2)
    return _affine(x, torch.cat([eye, t.to(x.device, x.dtype).unsqueeze(2)], 2))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding, for images (N,C,H,W) and signals (N,C,L)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    k = torch.exp(-(torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).view(1, 1, -1)
    c = x.shape[1]
    if x.ndim == 3:
        return F.conv1d(F.pad(x, (radius, radius), mode="reflect"), k.expand(c, 1, -1), groups=c)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
