"""The optimizer an `optimizer` block of params.yaml describes, for any network."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from digitlab.params import OptimizerParams


def make_optimizer(
    settings: OptimizerParams, parameters: Iterable[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    """torch.optim.Adam (lr, betas, weight_decay) or SGD (lr, momentum, weight_decay), with
    torch's fused kernels (one kernel for all parameters instead of a loop over them)."""
    if settings.name == "adam":
        return torch.optim.Adam(
            parameters,
            lr=settings.lr,
            betas=tuple(settings.betas),
            weight_decay=settings.weight_decay,
            fused=True,
        )
    return torch.optim.SGD(
        parameters,
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        fused=True,
    )
