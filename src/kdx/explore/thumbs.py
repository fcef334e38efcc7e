"""Thumbnails of inputs, packed into sprite sheets: one WebP (images) or PNG (line plots) per 4096
inputs, inlined in the page as data URIs. A sheet compresses far better than 70k separate PNGs
(~200 bytes an input on Fashion-MNIST against ~450), and the page shows any thumbnail as a CSS
background offset into its sheet."""
from __future__ import annotations

import base64
import io

import numpy as np
import torch

from kdx.data.base import model_input

PER_ROW = 64  # thumbnails per sheet row; a sheet holds PER_ROW**2
MAX_SIDE = 32  # larger images are shrunk to this side
LINE_SIZE = (48, 24)  # width, height of a 1-D signal's line plot


def images(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> np.ndarray:
    """Inputs in stored or data space -> uint8 thumbnails (N, h, w, c): images as they are (shrunk if
    large), 1-D signals (N, C, L) as line plots over the train set's range [lo, hi] per channel."""
    if x.ndim == 4:
        img = (model_input(x).clamp(0, 1) * 255).round().to(torch.uint8)
        if max(img.shape[2:]) > MAX_SIDE:
            scale = MAX_SIDE / max(img.shape[2:])
            size = [max(1, round(s * scale)) for s in img.shape[2:]]
            img = torch.nn.functional.interpolate(img.float(), size=size, mode="area").round().to(torch.uint8)
        return img.permute(0, 2, 3, 1).numpy()
    return line_plots(x.float().numpy(), lo.float().numpy(), hi.float().numpy())


def line_plots(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, size: tuple[int, int] = LINE_SIZE) -> np.ndarray:
    """(N, C, L) signals -> (N, h, w, 1) white line plots of `size` (w, h), one polyline per channel, drawn with PIL."""
    from PIL import Image, ImageDraw

    w, h = size
    span = np.maximum(hi - lo, 1e-6)[None, :, None]
    ys = (h - 2) - np.clip((x - lo[None, :, None]) / span, 0, 1) * (h - 3)  # rows: top is high
    xs = np.linspace(1, w - 2, x.shape[2])
    out = np.empty((len(x), h, w, 1), np.uint8)
    for i in range(len(x)):
        im = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(im)
        for c in range(x.shape[1]):
            draw.line(list(zip(xs, ys[i, c])), fill=255, width=1)
        out[i, :, :, 0] = np.asarray(im)
    return out


def sheets(thumbs: np.ndarray, lossy: bool) -> list[str]:
    """Sprite sheets of (N, h, w, c) uint8 thumbnails, row-major, PER_ROW a row: data URIs. Thumbnail i
    is on sheet i // PER_ROW**2 at column i % PER_ROW, row (i // PER_ROW) % PER_ROW."""
    from PIL import Image

    n, h, w, c = thumbs.shape
    per_sheet, uris = PER_ROW * PER_ROW, []
    for start in range(0, n, per_sheet):
        part = thumbs[start:start + per_sheet]
        rows = -(-len(part) // PER_ROW)
        grid = np.zeros((rows * PER_ROW, h, w, c), np.uint8)
        grid[:len(part)] = part
        grid = grid.reshape(rows, PER_ROW, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, PER_ROW * w, c)
        im = Image.fromarray(grid[..., 0] if c == 1 else grid)
        buf = io.BytesIO()
        if lossy:  # photographs of things: lossy WebP at this quality is indistinguishable at thumbnail size
            im.save(buf, format="WEBP", quality=80, method=4)
            mime = "image/webp"
        else:  # line plots: few distinct pixels, PNG is small and exact
            im.save(buf, format="PNG", optimize=True)
            mime = "image/png"
        uris.append(f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode()}")
    return uris
