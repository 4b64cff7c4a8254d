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


def _column_major(t: torch.Tensor) -> bool:
    """Whether t is a matrix stored column-major (digitlab's wide Linear weights): the fused
    kernels are then handed its transpose, the same elements in memory order (walking a
    column-major tensor they run 3× slower)."""
    return t.dim() == 2 and not t.is_contiguous() and t.t().is_contiguous()


class _LeanStep:
    """Mixin for a fused torch optimizer: torch's own step() the first time (it creates the
    state) and whenever a setting or parameter needs it; otherwise `_fused_step` per group,
    with the group's parameter and state lists kept from one step to the next while the same
    parameters have gradients."""

    _unsupported = ""  # a `defaults` key that, when set, leaves every step to torch

    def __init__(self, params: Any, **kwargs: Any) -> None:
        super().__init__(params, fused=True, **kwargs)  # type: ignore[call-arg]
        self._stepped = False
        self._plans: dict[int, tuple[tuple, list[torch.Tensor], list[bool], list, tuple]] = {}

    @torch.no_grad()
    def step(self, closure: None = None) -> Any:
        if closure is None and self._stepped and not self.defaults[self._unsupported]:
            groups = self.param_groups  # type: ignore[attr-defined]
            plans = [self._plan(index, group) for index, group in enumerate(groups)]
            if all(plan is not None for plan in plans):
                for group, (params, flips, views, state) in zip(groups, plans, strict=True):  # type: ignore[misc]
                    if params:
                        grads = [
                            p.grad.t() if flip else p.grad  # type: ignore[union-attr]
                            for p, flip in zip(params, flips, strict=True)
                        ]
                        self._fused_step(group, views, grads, state)
                return None
        loss = super().step(closure)  # type: ignore[misc]
        self._stepped = True
        self._plans.clear()  # torch may have created state
        return loss

    def _plan(self, index: int, group: dict[str, Any]) -> tuple | None:
        """(the group's parameters that have a gradient, which of them are column-major, the
        same parameters and their state lists as the fused kernel gets them), or None when a
        parameter has no state yet."""
        key = (tuple(p.grad is not None for p in group["params"]), self._plan_key(group))
        plan = self._plans.get(index)
        if plan is None or plan[0] != key:
            params = [p for p, has_grad in zip(group["params"], key[0], strict=True) if has_grad]
            if not self._ready(group, params):
                return None
            flips = [_column_major(p) for p in params]

            def in_memory_order(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
                if not tensors:  # SGD without momentum keeps no buffers
                    return tensors
                return [
                    t.t() if flip and t.dim() == 2 else t
                    for t, flip in zip(tensors, flips, strict=True)
                ]

            state = tuple(in_memory_order(ts) for ts in self._state_lists(group, params))
            plan = self._plans[index] = (key, params, flips, in_memory_order(params), state)
        return plan[1:]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # type: ignore[misc]
        self._plans.clear()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch's, without its per-call profiling and grouping when set_to_none."""
        if not set_to_none:
            return super().zero_grad(set_to_none)  # type: ignore[misc]
        for group in self.param_groups:  # type: ignore[attr-defined]
            for p in group["params"]:
                p.grad = None
        return None

    def _plan_key(self, group: dict[str, Any]) -> object:
        return None

    def _ready(self, group: dict[str, Any], params: list[torch.Tensor]) -> bool:
        raise NotImplementedError

    def _state_lists(self, group: dict[str, Any], params: list[torch.Tensor]) -> tuple:
        raise NotImplementedError

    def _fused_step(
        self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor],
        state: tuple,
    ) -> None:  # fmt: skip
        raise NotImplementedError


class LeanAdam(_LeanStep, torch.optim.Adam):
    """`torch.optim.Adam(fused=True)`, with a direct call to the fused kernel (no amsgrad)."""

    _unsupported = "amsgrad"

    def _ready(self, group: dict[str, Any], params: list[torch.Tensor]) -> bool:
        return all(self.state[p] for p in params)  # every parameter has had a first step

    def _state_lists(self, group: dict[str, Any], params: list[torch.Tensor]) -> tuple:
        states = [self.state[p] for p in params]
        return tuple([state[key] for state in states] for key in ("exp_avg", "exp_avg_sq", "step"))

    def _fused_step(
        self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor],
        state: tuple,
    ) -> None:  # fmt: skip
        exp_avgs, exp_avg_sqs, steps = state
        torch._foreach_add_(steps, 1)
        beta1, beta2 = group["betas"]
        torch._fused_adam_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
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

    def _plan_key(self, group: dict[str, Any]) -> object:
        return group["momentum"] != 0

    def _ready(self, group: dict[str, Any], params: list[torch.Tensor]) -> bool:
        return group["momentum"] == 0 or all(
            self.state[p].get("momentum_buffer") is not None for p in params
        )

    def _state_lists(self, group: dict[str, Any], params: list[torch.Tensor]) -> tuple:
        if group["momentum"] == 0:
            return ([],)
        return ([self.state[p]["momentum_buffer"] for p in params],)

    def _fused_step(
        self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor],
        state: tuple,
    ) -> None:  # fmt: skip
        torch._fused_sgd_(
            params,
            grads,
            state[0],
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
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
