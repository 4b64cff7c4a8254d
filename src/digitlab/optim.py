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


def _with_grads(group: dict[str, Any]) -> list[torch.Tensor]:
    return [p for p in group["params"] if p.grad is not None]


class LeanAdam(torch.optim.Adam):
    """`torch.optim.Adam(fused=True)` (no amsgrad), with a direct call to the fused kernel."""

    def __init__(self, params: Any, **kwargs: Any) -> None:
        super().__init__(params, fused=True, **kwargs)
        self._stepped = False

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        if closure is not None or not self._stepped or self.defaults["amsgrad"]:
            super().step(closure)
            self._stepped = True
            return
        for group in self.param_groups:
            params = _with_grads(group)
            if not params:
                continue
            states = [self.state[p] for p in params]
            if any(not state for state in states):  # a parameter's first step
                super().step()
                return
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


class LeanSGD(torch.optim.SGD):
    """`torch.optim.SGD(fused=True)` (no nesterov), with a direct call to the fused kernel."""

    def __init__(self, params: Any, **kwargs: Any) -> None:
        super().__init__(params, fused=True, **kwargs)
        self._stepped = False

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        if closure is not None or not self._stepped or self.defaults["nesterov"]:
            super().step(closure)
            self._stepped = True
            return
        for group in self.param_groups:
            params = _with_grads(group)
            if not params:
                continue
            momentum = group["momentum"]
            buffers = []
            if momentum != 0:
                buffers = [self.state[p].get("momentum_buffer") for p in params]
                if any(buffer is None for buffer in buffers):  # a parameter's first step
                    super().step()
                    return
            torch._fused_sgd_(
                params,
                [p.grad for p in params],
                buffers,
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
