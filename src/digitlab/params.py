"""Typed, validated view of params.yaml: every error is one line naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from digitlab.errors import DigitlabError

DATASETS = ("mnist", "fashion_mnist")
Digit = int | Literal["all"]


class ParamsError(DigitlabError):
    """params.yaml is missing, unreadable, or holds a key or value that is not allowed."""


def _check_digit(value: Any) -> Digit:
    if value == "all" or (type(value) is int and 0 <= value <= 9):
        return value
    raise ValueError("must be a digit 0-9 or 'all'")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataParams(_Section):
    dataset: Literal["mnist", "fashion_mnist"]
    val_size: int = Field(ge=10, le=50_000)


PositiveInt = Annotated[int, Field(ge=1)]


class OptimizerParams(_Section):
    """One optimizer setting, the same for the classifier and both GAN networks."""

    name: Literal["adam", "sgd"]
    lr: float = Field(gt=0, le=10)
    betas: list[Annotated[float, Field(ge=0, lt=1)]] = Field(min_length=2, max_length=2)  # adam
    momentum: float = Field(ge=0, lt=1)  # sgd
    weight_decay: float = Field(ge=0, allow_inf_nan=False)


Activation = Literal["leaky_relu", "relu", "sigmoid", "tanh"]
Hidden = list[Annotated[int, Field(ge=1, le=65_536)]]


class ClassifierArchitecture(_Section):
    """The keys that shape a classifier: what its checkpoint saves and must match."""

    arch: Literal["mlp", "cnn", "lenet5"]
    hidden: Hidden = Field(min_length=1)
    activation: Activation
    dropout: float = Field(ge=0, lt=1)
    channels: list[Annotated[int, Field(ge=1, le=1024)]] = Field(min_length=3, max_length=3)
    loss: Literal["bce", "ce", "mse"]


class ClassifierParams(ClassifierArchitecture):
    optimizer: OptimizerParams
    scheduler: Literal["none", "onecycle"]
    epochs: int = Field(ge=1, le=10_000)
    batch_size: int = Field(ge=0)

    def architecture(self) -> ClassifierArchitecture:
        return ClassifierArchitecture.model_validate(
            self.model_dump(include=set(ClassifierArchitecture.model_fields))
        )


def _check_generator_hidden(value: Any) -> Any:
    if value == "mirror":
        return value
    if isinstance(value, list) and value and all(type(v) is int and v >= 1 for v in value):
        return value
    raise ValueError(
        "must be 'mirror' (the discriminator's layers reversed) or a list of sizes >= 1"
    )


class DiscriminatorParams(_Section):
    hidden: Hidden = Field(min_length=1)
    activation: Activation
    dropout: float = Field(ge=0, lt=1)


class GeneratorParams(_Section):
    hidden: Annotated[Literal["mirror"] | list[int], BeforeValidator(_check_generator_hidden)]
    activation: Activation
    dropout: float = Field(ge=0, lt=1)
    batchnorm: bool
    output: Literal["tanh", "sigmoid"]


class GeneratorConfig(_Section):
    """Everything that rebuilds a generator and samples from it (saved in its checkpoint)."""

    latent_size: int = Field(ge=1, le=4096)
    latent: Literal["normal", "uniform"]
    hidden: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    activation: Activation
    dropout: float = Field(ge=0, lt=1)
    batchnorm: bool
    output: Literal["tanh", "sigmoid"]


class GANParams(_Section):
    schedule: Literal["epochs", "rounds"]
    epochs: int = Field(ge=1, le=100_000)
    rounds: int = Field(ge=1, le=1_000_000)
    d_steps: int = Field(ge=1, le=10_000)
    g_steps: int = Field(ge=1, le=10_000)
    batch_size: int = Field(ge=1, le=65_536)
    latent_size: int = Field(ge=1, le=4096)
    latent: Literal["normal", "uniform"]
    ema: float = Field(ge=0, lt=1)
    snapshots: int = Field(ge=1, le=100)
    discriminator: DiscriminatorParams
    generator: GeneratorParams
    optimizer_d: OptimizerParams
    optimizer_g: OptimizerParams

    def generator_config(self) -> GeneratorConfig:
        g = self.generator
        hidden = (
            list(reversed(self.discriminator.hidden)) if g.hidden == "mirror" else list(g.hidden)
        )
        return GeneratorConfig(latent_size=self.latent_size, latent=self.latent, hidden=hidden,
                               activation=g.activation, dropout=g.dropout, batchnorm=g.batchnorm,
                               output=g.output)  # fmt: skip


class GANEvalParams(_Section):
    num_samples: int = Field(ge=100, le=1_000_000)
    threshold: float = Field(gt=0, lt=1)


class Params(_Section):
    seed: int = Field(ge=0, le=2**32 - 1)
    digit: Annotated[Digit, BeforeValidator(_check_digit)]
    data: DataParams
    classifier: ClassifierParams
    gan: GANParams
    gan_eval: GANEvalParams

    @property
    def digits(self) -> list[int]:
        """The digits the detector / GAN work on: one, or all ten."""
        return list(range(10)) if self.digit == "all" else [int(self.digit)]


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc[:-1]:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _one_line(err: dict[str, Any], source: str) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "<top level>"
    kind = err["type"]
    if kind == "missing":
        return f"{source}: missing key '{key}'"
    if kind == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(Params, loc))
        return f"{source}: unknown key '{key}' (allowed here: {allowed})"
    message = err["msg"].removeprefix("Value error, ")
    return f"{source}: {key} = {err.get('input')!r} is not allowed: {message}"


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a params mapping; raise ParamsError with one line for the first bad key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of keys, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_one_line(exc.errors()[0], source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the repository root)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None
    return parse_params(raw, str(path))
