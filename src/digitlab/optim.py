"""Optimizers: torch's fused Adam and SGD, stepped without the per-call Python bookkeeping.

With the labs' small networks on a 2-core CPU, `Optimizer.step()` spends about as long in
Python (profiler hooks, grouping tensors by device and dtype, per-parameter state lookups)
as in the fused kernel itself. `LeanAdam` and `LeanSGD` are drop-in subclasses: the first
step goes through torch (which creates the state), later steps call the same fused kernel
directly with the group's current settings, so schedulers, `state_dict()` and the update
itself are torch's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class _LeanStep:
    """Mixin for a fused torch optimizer: torch's own step() the first time (it creates the
    state) and whenever a setting or parameter needs it; otherwise `_fused_step` per group."""

    _unsupported = ""  # a `defaults` key that, when set, leaves every step to torch

    def __init__(self, params: Any, **kwargs: Any) -> None:
        super().__init__(params, fused=True, **kwargs)  # type: ignore[call-arg]
        self._stepped = False

    @torch.no_grad()
    def step(self, closure: None = None) -> Any:
        if closure is None and self._stepped and not self.defaults[self._unsupported]:
            groups = [
                (group, [p for p in group["params"] if p.grad is not None])
                for group in self.param_groups
            ]
            if all(self._ready(group, params) for group, params in groups):
                for group, params in groups:
                    if params:
                        self._fused_step(group, params)
                return None
        loss = super().step(closure)  # type: ignore[misc]
        self._stepped = True
        return loss

    def _ready(self, group: dict[str, Any], params: list[torch.Tensor]) -> bool:
        raise NotImplementedError

    def _fused_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        raise NotImplementedError


class LeanAdam(_LeanStep, torch.optim.Adam):
    """`torch.optim.Adam(fused=True)`, with a direct call to the fused kernel (no amsgrad)."""

    _unsupported = "amsgrad"

    def _ready(self, group: dict[str, Any], params: list[torch.Tensor]) -> bool:
        return all(self.state[p] for p in params)  # every parameter has had a first step

    def _fused_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        states = [self.state[p] for p in params]
        steps = [state["step"] for state in states]
        torch._foreach_add_(steps, 1)
        beta1, beta2 = group["betas"]
        torch._fused_adam_(
            params,
            [p.grad for p in params],
            [state["exp_avg"] for state in states],
            [state["exp_avg_sq"] for state in states],
            [],
            steps,
            amsgrad=False,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
        )


class LeanSGD(_LeanStep, torch.optim.SGD):
    """`torch.optim.SGD(fused=True)`, with a direct call to the fused kernel (no nesterov)."""

    _unsupported = "nesterov"

    def _ready(self, group: dict[str, Any], params: list[torch.Tensor]) -> bool:
        return group["momentum"] == 0 or all(
            self.state[p].get("momentum_buffer") is not None for p in params
        )

    def _fused_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        momentum = group["momentum"]
        torch._fused_sgd_(
            params,
            [p.grad for p in params],
            [self.state[p]["momentum_buffer"] for p in params] if momentum != 0 else [],
            weight_decay=group["weight_decay"],
            momentum=momentum,
            lr=group["lr"],
            dampening=group["dampening"],
            nesterov=False,
            maximize=group["maximize"],
            is_first_step=False,
        )


def make_optimizer(cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
    """Adam or SGD as params.yaml names them (`classifier.optimizer`, `gan.optimizer_d/g`):
    lr, momentum for SGD, betas for Adam (default 0.9, 0.999), weight decay (default 0)."""
    weight_decay = getattr(cfg, "weight_decay", 0.0)
    if cfg.name == "adam":
        betas = tuple(getattr(cfg, "betas", (0.9, 0.999)))
        return LeanAdam(model.parameters(), lr=cfg.lr, betas=betas, weight_decay=weight_decay)
    return LeanSGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=weight_decay)
