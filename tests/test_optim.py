"""The lean optimizers make exactly torch's updates, schedulers included."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from digitlab.optim import LeanAdam, LeanSGD


def _train(make: type, steps: int = 12, schedule: bool = False, **kwargs: object) -> list:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = make(model.parameters(), **kwargs)
    sched = (
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=kwargs["lr"], total_steps=steps)
        if schedule
        else None
    )
    data = torch.randn(steps, 8, 20)
    for x in data:
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()
        if sched is not None:
            sched.step()
    return [p.detach().clone() for p in model.parameters()]


def _torch_adam(params: object, **kwargs: object) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, fused=True, **kwargs)


def _torch_sgd(params: object, **kwargs: object) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, fused=True, **kwargs)


@pytest.mark.parametrize(
    ("lean", "reference", "kwargs"),
    [
        (LeanAdam, _torch_adam, {"lr": 0.01}),
        (LeanAdam, _torch_adam, {"lr": 0.01, "betas": (0.5, 0.999), "weight_decay": 0.1}),
        (LeanSGD, _torch_sgd, {"lr": 0.05}),
        (LeanSGD, _torch_sgd, {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}),
    ],
)
@pytest.mark.parametrize("schedule", [False, True])
def test_lean_optimizers_match_torch(lean: type, reference: object, kwargs: dict, schedule: bool):
    ours = _train(lean, schedule=schedule, **kwargs)
    theirs = _train(reference, schedule=schedule, **kwargs)
    start = _train(lean, steps=0, **kwargs)
    assert any(not torch.equal(a, b) for a, b in zip(ours, start, strict=True))  # it trained
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_lean_adam_state_dict_round_trip():
    model = nn.Linear(4, 2)
    opt = LeanAdam(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.ones(1, 4)).sum().backward()
        opt.step()
    state = opt.state_dict()
    assert state["state"][0]["step"].item() == 3
    again = LeanAdam(model.parameters(), lr=0.1)
    again.load_state_dict(state)
    assert again.state_dict()["state"][0]["step"].item() == 3


@pytest.mark.parametrize(
    ("lean", "base"), [(LeanAdam, torch.optim.Adam), (LeanSGD, torch.optim.SGD)]
)
def test_only_the_first_step_goes_through_torch(lean: type, base: type, monkeypatch):
    calls = []
    original = base.step
    monkeypatch.setattr(base, "step", lambda self, closure=None: calls.append(1) or original(self))
    _train(lean, steps=12, lr=0.01, momentum=0.9) if lean is LeanSGD else _train(lean, lr=0.01)
    assert len(calls) == 1


def test_column_major_parameters_get_torchs_updates() -> None:
    """digitlab's wide Linear layers keep column-major weights; the fused kernel is handed
    them in memory order and must still make torch's exact update."""
    results = []
    for make in (LeanAdam, _torch_adam):
        torch.manual_seed(0)
        weight = nn.Parameter(torch.randn(30, 8).t())  # 8×30 matrix, column-major
        opt = make([weight], lr=0.01)
        for x in torch.randn(5, 4, 30):
            opt.zero_grad(set_to_none=True)
            (x @ weight.t()).square().mean().backward()
            opt.step()
        results.append(weight.detach().clone())
    assert not results[0].is_contiguous()
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("lean", "reference", "kwargs"),
    [(LeanAdam, _torch_adam, {"lr": 0.01}), (LeanSGD, _torch_sgd, {"lr": 0.05}),
     (LeanSGD, _torch_sgd, {"lr": 0.05, "momentum": 0.9})],
)  # fmt: skip
def test_gradients_set_by_hand_in_another_layout(lean: type, reference: object, kwargs: dict):
    """A contiguous gradient on a column-major parameter still gets torch's update."""
    results = []
    for make in (lean, reference):
        torch.manual_seed(0)
        weight = nn.Parameter(torch.randn(30, 8).t())
        opt = make([weight], **kwargs)
        for grad in torch.randn(4, 8, 30):
            weight.grad = grad.clone()  # contiguous, unlike the parameter
            opt.step()
        results.append(weight.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_loaded_state_and_late_parameters_match_torch() -> None:
    """Kept plans are dropped when the state is replaced or another parameter starts
    getting gradients."""

    def run(make: type) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
        opt = make(model.parameters(), lr=0.01)
        model[0].requires_grad_(False)  # frozen for the first steps
        for i, x in enumerate(torch.randn(9, 3, 6)):
            if i == 3:
                model[0].requires_grad_(True)
            if i == 6:
                opt.load_state_dict(opt.state_dict())
            opt.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(LeanAdam), run(_torch_adam), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
