"""digitlab's Linear and Dropout behave as torch's nn.Linear and nn.Dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from digitlab.bench import as_written_in_the_labs
from digitlab.models import MLP, Dropout, Linear


@pytest.mark.parametrize(("n_in", "n_out"), [(784, 256), (32, 784), (10, 10)])
def test_linear_matches_torch_linear(n_in: int, n_out: int) -> None:
    torch.manual_seed(0)
    ours = Linear(n_in, n_out)
    torch.manual_seed(0)
    theirs = nn.Linear(n_in, n_out)
    assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)
    # Wide layers keep their weight column-major; the others as torch does.
    assert ours.weight.is_contiguous() == (n_in <= n_out)
    x = torch.randn(64, n_in)
    ours(x).square().sum().backward()
    theirs(x).square().sum().backward()
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-4, atol=1e-4)
    assert ours.weight.grad.stride() == ours.weight.stride()  # no copy into another layout
    # State dicts travel both ways.
    plain = nn.Linear(n_in, n_out)
    plain.load_state_dict(ours.state_dict())
    again = Linear(n_in, n_out)
    again.load_state_dict(plain.state_dict())
    assert torch.equal(again.weight, ours.weight) and again.weight.stride() == ours.weight.stride()


def test_dropout_draws_a_scaled_bernoulli_mask() -> None:
    torch.manual_seed(0)
    drop = Dropout(0.3)
    x = torch.ones(400, 500, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005  # 200,000 draws: sd 0.001
    assert torch.allclose(y[kept], torch.tensor(1 / 0.7))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # gradient: the same mask and scale
    torch.manual_seed(0)
    assert torch.equal(Dropout(0.3)(x), y)  # seeded: the same mask again
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(0.0)(x), x)
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))


def test_as_written_in_the_labs_swaps_in_torch_modules() -> None:
    torch.manual_seed(0)
    model = MLP([64], "relu", 0.5).eval()
    x = torch.rand(8, 1, 28, 28)
    expected = model(x)
    plain = as_written_in_the_labs(model)
    kinds = {type(m) for m in plain.modules()}
    assert Linear not in kinds and Dropout not in kinds and nn.Linear in kinds
    assert nn.Dropout in kinds
    torch.testing.assert_close(plain(x), expected)
