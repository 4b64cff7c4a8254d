"""Typed, validated view of params.yaml: every error is one line naming the key."""

from __future__ import annotations

import math
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from digitlab.errors import DigitlabError

DATASETS = ("mnist", "fashion_mnist", "cifar10")
# Each dataset's images (channels, height, width) and official training images.
IMAGE_SHAPES = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
TRAIN_IMAGES = {"mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000}
MIN_TRAIN = 10_000  # training images data.val_size must leave
N_CLASSES = 10
GAN_IMAGE_SHAPE = (1, 28, 28)  # what the GAN makes: MNIST's and Fashion-MNIST's images
Digit = int | Literal["all"]


class ParamsError(DigitlabError):
    """params.yaml is missing, unreadable, or holds a key or value that is not allowed."""


def _check_digit(value: Any) -> Digit:
    if value == "all" or (type(value) is int and 0 <= value <= 9):
        return value
    raise ValueError("must be a digit 0-9 or 'all'")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class DataParams(_Section):
    dataset: Literal["mnist", "fashion_mnist", "cifar10"]
    val_size: int = Field(ge=10, le=50_000)


class OptimizerParams(_Section):
    """One optimizer setting, the same for the classifier and both GAN networks."""

    name: Literal["adam", "sgd"]
    lr: float = Field(gt=0, le=10)
    betas: list[Annotated[float, Field(ge=0, lt=1)]] = Field(min_length=2, max_length=2)  # adam
    momentum: float = Field(ge=0, lt=1)  # sgd
    weight_decay: float = Field(ge=0)


Activation = Literal["leaky_relu", "relu", "sigmoid", "tanh"]
Hidden = list[Annotated[int, Field(ge=1, le=65_536)]]


class ClassifierArchitecture(_Section):
    """The keys that shape a classifier: what its checkpoint saves and must match. `arch`
    names an entry of models.CLASSIFIERS (checked when the networks are, memory.py)."""

    arch: str
    hidden: Hidden  # mlp; [] is one Linear layer (the tutorial's 784 → 1)
    activation: Activation
    dropout: float = Field(ge=0, lt=1)
    channels: list[Annotated[int, Field(ge=1, le=1024)]] = Field(min_length=3, max_length=3)
    width: int = Field(default=1, ge=1, le=16)  # lenet5: every layer this many times as wide
    # classes: ten outputs, one per digit; regression: one output, the digit's value (the
    # tutorial's first models), answered rounded and clamped to 0-9. Checkpoints saved before
    # the key existed have ten outputs.
    head: Literal["classes", "regression"] = "classes"
    loss: Literal["bce", "ce", "mse"]

    @field_validator("loss")
    @classmethod
    def _regression_learns_by_mse(cls, loss: str, info: ValidationInfo) -> str:
        if info.data.get("head") == "regression" and loss != "mse":
            raise ValueError("classifier.head regression learns the digit's value by mse")
        return loss

    @property
    def outputs(self) -> int:
        """Ten outputs, one per class, or one for a regression head."""
        return 1 if self.head == "regression" else N_CLASSES


class AugmentParams(_Section):
    """Augmentation of the training batches (the in-memory tensors), off at 0."""

    shift: float = Field(ge=0, le=8)  # each image moved by up to `shift` pixels in x and in y
    rotate: float = Field(ge=0, le=180)  # … turned by up to `rotate` degrees
    scale: float = Field(ge=0, lt=1)  # … scaled by a factor from 1 - scale to 1 + scale

    @property
    def active(self) -> bool:
        return bool(self.shift or self.rotate or self.scale)


class ClassifierParams(ClassifierArchitecture):
    optimizer: OptimizerParams
    augment: AugmentParams
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
    if (
        isinstance(value, list)
        and value
        and all(type(v) is int and 1 <= v <= 65_536 for v in value)
    ):
        return value
    raise ValueError(
        "must be 'mirror' (the discriminator's layers reversed) or a list of sizes 1-65536"
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
    norm_per_digit: bool = False  # conditional G: BatchNorm's scale and shift learned per digit
    output: Literal["tanh", "sigmoid"]


class _GANNetworkConfig(_Section):
    """What rebuilds one of the GAN's networks (saved in its checkpoint): `arch` names an entry
    of models.GANS, which reads `hidden` (mlp) or `channels` (conv)."""

    arch: str
    hidden: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    channels: list[Annotated[int, Field(ge=1)]] | None = None
    activation: Activation
    dropout: float = Field(ge=0, lt=1)
    conditional: bool = False  # takes the digit too (checkpoints from before it lack the key)

    @model_validator(mode="before")
    @classmethod
    def _arch_of_old_checkpoints(cls, data: Any) -> Any:
        """Checkpoints saved before `arch` existed: conv when they name channels, else mlp."""
        if isinstance(data, dict) and "arch" not in data:
            data = {**data, "arch": "conv" if data.get("channels") else "mlp"}
        return data


class GeneratorConfig(_GANNetworkConfig):
    """Everything that rebuilds a generator and samples from it."""

    latent_size: int = Field(ge=1, le=4096)
    latent: Literal["normal", "uniform"]
    batchnorm: bool
    norm_per_digit: bool = False  # checkpoints from before it lack the key
    output: Literal["tanh", "sigmoid"]


class DiscriminatorConfig(_GANNetworkConfig):
    """Everything that rebuilds a discriminator (a conditional one is a projection
    discriminator)."""


class GANParams(_Section):
    conditional: bool
    arch: str  # an entry of models.GANS (checked when the networks are, memory.py)
    channels: list[Annotated[int, Field(ge=1, le=1024)]] = Field(min_length=2, max_length=2)
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
        mirror = list(reversed(self.discriminator.hidden))
        return GeneratorConfig(
            arch=self.arch,
            latent_size=self.latent_size,
            latent=self.latent,
            hidden=mirror if g.hidden == "mirror" else list(g.hidden),
            channels=list(self.channels),
            activation=g.activation,
            dropout=g.dropout,
            batchnorm=g.batchnorm,
            norm_per_digit=g.norm_per_digit,
            output=g.output,
            conditional=self.conditional,
        )

    def discriminator_config(self) -> DiscriminatorConfig:
        d = self.discriminator
        return DiscriminatorConfig(
            arch=self.arch,
            hidden=list(d.hidden),
            channels=list(self.channels),
            activation=d.activation,
            dropout=d.dropout,
            conditional=self.conditional,
        )


class GANEvalParams(_Section):
    num_samples: int = Field(ge=100, le=1_000_000)
    threshold: float = Field(gt=0, lt=1)


class Params(_Section):
    seed: int = Field(ge=0, le=2**32 - 1)
    digit: Annotated[Digit, BeforeValidator(_check_digit)]
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present
    data: DataParams
    classifier: ClassifierParams
    gan: GANParams
    gan_eval: GANEvalParams

    @property
    def digits(self) -> list[int]:
        """The digits the detector / GAN work on: one, or all ten."""
        return list(range(10)) if self.digit == "all" else [int(self.digit)]


def input_shape(dataset: str) -> tuple[int, int, int]:
    """(channels, height, width) of a dataset's images: what a classifier for it takes."""
    return IMAGE_SHAPES[dataset]


def check_gan_params(params: Params, judging: bool = False) -> None:
    """Refuse, before any work, what the GAN stages cannot do: a dataset of other images than
    the 1×28×28 the GAN makes, and (`judging`: evaluate_gan) a judge without probabilities."""
    if input_shape(params.data.dataset) != GAN_IMAGE_SHAPE:
        raise ParamsError(
            f"data.dataset is {params.data.dataset}: the GAN makes 1×28×28 images; set "
            "data.dataset to mnist or fashion_mnist (or run only the classifier stages: "
            "dvc repro evaluate)"
        )
    if judging and params.classifier.head == "regression":
        raise ParamsError(
            "evaluate_gan judges images by the classifier's ten probabilities, but "
            "classifier.head is regression (one value): set classifier.head: classes, or "
            "reproduce only the classifier (dvc repro evaluate)"
        )


def check_val_size(params: Params, source: str = "params.yaml") -> None:
    """Refuse a validation split that leaves fewer than MIN_TRAIN images to train on (CIFAR-10
    has 50,000 training images, the MNISTs 60,000)."""
    data = params.data
    most = TRAIN_IMAGES[data.dataset] - MIN_TRAIN
    if data.val_size > most:
        raise ParamsError(
            f"{source}: data.val_size = {data.val_size!r} is not allowed: {data.dataset} has "
            f"{TRAIN_IMAGES[data.dataset]:,} training images; at most {most:,} for validation "
            f"leaves {MIN_TRAIN:,} to train on"
        )


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring, short.maxother = 2, 4, 4, 60, 60
    return short


SHORT = _short_repr()  # a value in an error line: bounded, however big or deep (a YAML alias bomb)


def shown(value: Any, most: int = 80) -> str:
    """A value as an error line shows it: its repr, cut short at any size or depth."""
    text = SHORT.repr(value)
    return text if len(text) <= most else f"{text[: most - 1]}…"


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc[:-1]:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _one_line(err: dict[str, Any], source: str) -> str:
    loc = tuple(err["loc"])
    key = ".".join(shown(p) if not isinstance(p, str) else p[:60] for p in loc) or "<top level>"
    kind, value = err["type"], err.get("input")
    if kind == "missing":
        return f"{source}: missing key '{key}'"
    if kind == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(Params, loc))
        return f"{source}: unknown key '{key}' (allowed here: {allowed})"
    message = err["msg"].removeprefix("Value error, ")
    if kind == "finite_number":
        message = "not a number" if isinstance(value, float) and math.isnan(value) else "infinite"
        message += " (a finite number is needed)"
    return f"{source}: {key} = {shown(value)} is not allowed: {message}"


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a params mapping; raise ParamsError with one line for the first bad key.
    (memory.check_networks then checks that the networks exist and fit in memory.)"""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of keys, got {type(raw).__name__}")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_one_line(exc.errors()[0], source)) from None
    check_val_size(params, source)
    return params


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file's content; one ParamsError line if it cannot be read or parsed."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the repository root)") from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a directory, expected {what}") from None
    except UnicodeDecodeError:
        raise ParamsError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ParamsError(f"{path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    return parse_params(read_yaml(path, "the params file"), str(path))
