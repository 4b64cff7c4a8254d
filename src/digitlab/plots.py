"""Figures: sample grids (torchvision.utils) and seaborn charts, one consistent style."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from digitlab.data import Split
from digitlab.files import atomic_path


def grid_image(images: torch.Tensor, nrow: int, scale: int = 2, padding: int = 2) -> torch.Tensor:
    """Tile N×1×28×28 images in [0, 1] into one 3×H×W image, digits scaled up without blur."""
    images = images.detach().float().cpu().clamp(0, 1)
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    return make_grid(images, nrow=nrow, padding=padding, pad_value=0.5)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int, scale: int = 2) -> None:
    """Write a PNG grid of images atomically."""
    with atomic_path(path) as tmp:
        save_image(grid_image(images, nrow, scale), tmp, format="png")


def class_rows(split: Split, per_class: int = 10, n_classes: int = 10) -> torch.Tensor:
    """The first `per_class` images of each class, class by class (one grid row per class)."""
    rows = [split.images[split.labels == c][:per_class] for c in range(n_classes)]
    return torch.cat(rows)
