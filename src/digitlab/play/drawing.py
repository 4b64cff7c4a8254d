"""A drawing as MNIST sees it, and images as PNG: no network, no server."""

from __future__ import annotations

import base64
import io
import math

import torch
import torch.nn.functional as F

SIDE, BOX, INK = 28, 20, 0.05  # MNIST's field, the box its digits fit in, what counts as ink


def prepare_drawing(pixels: torch.Tensor) -> torch.Tensor:
    """A drawing (H×W, white ink on black, in [0, 1]) prepared as MNIST's digits were: its ink
    fitted into a 20×20 box (aspect kept; area-averaged, so edges turn grey), scaled to a
    brightest pixel of 1, and put in a 28×28 field so that its centre of mass sits at the
    field's centre. An empty drawing stays empty. (static/play.js does the same, step by step.)"""
    rows = (pixels > INK).any(1).nonzero().squeeze(1)
    cols = (pixels > INK).any(0).nonzero().squeeze(1)
    field = torch.zeros(SIDE, SIDE)
    if len(rows) == 0:
        return field
    crop = pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].float()
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, math.floor(h * scale + 0.5)), max(1, math.floor(w * scale + 0.5)))
    small = F.adaptive_avg_pool2d(crop[None, None], size)[0, 0]
    small = small / small.max()
    top, left = (SIDE - size[0]) // 2, (SIDE - size[1]) // 2
    ys, xs = torch.arange(size[0], dtype=torch.float32), torch.arange(size[1], dtype=torch.float32)
    mass = small.sum()
    cy = top + float((small.sum(1) * ys).sum() / mass)
    cx = left + float((small.sum(0) * xs).sum() / mass)
    dy = min(max(math.floor((SIDE - 1) / 2 - cy + 0.5), -top), SIDE - size[0] - top)
    dx = min(max(math.floor((SIDE - 1) / 2 - cx + 0.5), -left), SIDE - size[1] - left)
    field[top + dy : top + dy + size[0], left + dx : left + dx + size[1]] = small
    return field


def png(image: torch.Tensor) -> str:
    """A 28×28 image in [0, 1] as a base64 PNG (grey)."""
    from PIL import Image

    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).squeeze().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
