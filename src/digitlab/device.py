"""The device training and evaluation run on."""

from __future__ import annotations

import torch


def pick_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
