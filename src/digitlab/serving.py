"""What MLflow runs when it serves a registered model: the network behind a guard that refuses,
in one message, input that is not finite or not shaped as the network expects (MLflow's
scoring server answers it with 400, and the Python API raises it)."""

from __future__ import annotations

import torch
from torch import nn


def input_error(problem: str) -> Exception:
    """MLflow's invalid-input exception where MLflow is installed, else ValueError."""
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
    except ImportError:
        return ValueError(problem)
    return MlflowException(problem, error_code=INVALID_PARAMETER_VALUE)


class DigitFirstGenerator(nn.Module):
    """A conditional generator behind one input tensor, for MLflow's model flavour: column 0
    holds the digit, the rest the latent vector."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.generator(inputs[:, 1:], inputs[:, 0].long())


class InputGuard(nn.Module):
    """`model` for inputs of shape (N, *shape) with finite values only; with `digit_column`
    (a conditional generator behind models.DigitFirstGenerator) column 0 must hold digits
    0-9. `config` is the network's architecture, kept so that a reader of the registered
    model (the playground) can use it as digitlab does."""

    def __init__(
        self,
        model: nn.Module,
        shape: tuple[int, ...],
        digit_column: bool = False,
        config: dict | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.shape = tuple(shape)
        self.digit_column = digit_column
        self.config = dict(config or {})

    def problem(self, x: torch.Tensor) -> str | None:
        """What is wrong with an input batch, or None."""
        expected = f"(N, {', '.join(map(str, self.shape))})"
        if x.dim() != len(self.shape) + 1 or tuple(x.shape[1:]) != self.shape:
            return f"expected input of shape {expected}, got {tuple(x.shape)}"
        if not x.is_floating_point():
            return f"expected floating-point input, got {x.dtype}"
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            return f"{bad} input values are not finite numbers (NaN or infinite); all must be"
        if self.digit_column:
            digits = x[:, 0]
            if not bool(((digits == digits.round()) & (digits >= 0) & (digits <= 9)).all()):
                return "column 0 holds the digit to make: a whole number 0-9"
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        problem = self.problem(x)
        if problem is not None:
            raise input_error(problem)
        return self.model(x)
