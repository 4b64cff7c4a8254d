"""Typed, validated view of params.yaml: every error is one line naming the key."""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
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
)

from digitlab.errors import DigitlabError, restore_hint

DATASETS = ("mnist", "fashion_mnist", "cifar10")
# Each dataset's images (channels, height, width) and official training images.
IMAGE_SHAPES = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
TRAIN_IMAGES = {"mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000}
MIN_TRAIN = 10_000  # training images data.val_size must leave
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
    dataset: Literal["mnist", "fashion_mnist", "cifar10"]
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

    arch: Literal["mlp", "cnn", "lenet5", "fastcnn"]
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
    conditional: bool = False  # takes the digit too (checkpoints from before it lack the key)
    channels: list[Annotated[int, Field(ge=1)]] | None = None  # conv: (c1, c2); None: MLP


class GANParams(_Section):
    conditional: bool
    arch: Literal["mlp", "conv"]
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
        hidden = (
            list(reversed(self.discriminator.hidden)) if g.hidden == "mirror" else list(g.hidden)
        )
        return GeneratorConfig(latent_size=self.latent_size, latent=self.latent, hidden=hidden,
                               activation=g.activation, dropout=g.dropout, batchnorm=g.batchnorm,
                               output=g.output, conditional=self.conditional,
                               channels=list(self.channels) if self.arch == "conv" else None)  # fmt: skip


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


def input_shape(dataset: str) -> tuple[int, int, int]:
    """(channels, height, width) of a dataset's images: what a classifier for it takes."""
    return IMAGE_SHAPES[dataset]


def check_gan_dataset(params: Params) -> None:
    """Refuse, before any work, a dataset the GAN cannot make: its networks make 1×28×28 images."""
    if input_shape(params.data.dataset) != (1, 28, 28):
        raise ParamsError(
            f"data.dataset is {params.data.dataset}: the GAN makes 1×28×28 images; set "
            "data.dataset to mnist or fashion_mnist (or run only the classifier stages: "
            "dvc repro evaluate)"
        )


# ---------------------------------------------------------------- sizes that fit in memory

IMAGE_PIXELS, N_CLASSES, MNIST_TRAIN = 28 * 28, 10, 60_000  # models.py builds on these too
FLOAT_BYTES = 4
TRAIN_COPIES = 5  # weights, gradients, Adam's two moments, the GAN's moving average


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its cgroup's limit if lower."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(OSError, ValueError):
        memory = min(memory, int(Path("/sys/fs/cgroup/memory.max").read_text()))
    return memory


def _linear_parameters(sizes: list[int]) -> int:
    return sum(n_in * n_out + n_out for n_in, n_out in itertools.pairwise(sizes))


def _classifier_sizes(
    c: ClassifierParams, shape: tuple[int, int, int] = (1, 28, 28)
) -> tuple[str, int, int]:
    """(the key that sets its size, parameters, floats kept per image while training) for
    images of `shape` (channels, size, size)."""
    channels, size, _ = shape
    pixels = channels * size * size
    out = 1 if c.head == "regression" else N_CLASSES
    if c.arch == "mlp":
        return ("classifier.hidden", _linear_parameters([pixels, *c.hidden, out]),
                pixels + 3 * sum(c.hidden) + out)  # fmt: skip
    if c.arch == "cnn":
        c1, c2, c3 = c.channels
        s1, s2, s3 = size // 2, size // 4, size // 8  # after each max-pool
        weights = (9 * (channels * c1 + c1 * c2 + c2 * c3) + c1 + c2 + c3
                   + s3 * s3 * c3 * out + out)  # fmt: skip
        return ("classifier.channels", weights,
                3 * (size * size * c1 + s1 * s1 * c2 + s2 * s2 * c3) + s1 * s1 * c1)  # fmt: skip
    if c.arch == "fastcnn":
        a1, p1 = size - 4, (size - 4) // 2  # conv 5×5, pool
        a2, p2 = p1 - 2, (p1 - 2) // 2  # conv 3×3, pool
        weights = 600 * channels + 24 + 6912 + 32 + _linear_parameters([32 * p2 * p2, 256, out])
        return ("classifier.arch", weights,
                3 * (a1 * a1 * 24 + a2 * a2 * 32) + p1 * p1 * 24 + 32 * p2 * p2)  # fmt: skip
    # LeNet-5, every layer `width` times as wide: 28×28 padded to 32×32, so both shapes give
    # 6w×28×28 and 16w×10×10 activations
    w = c.width
    weights = 25 * (channels * 6 * w + 6 * w * 16 * w) + 6 * w + 16 * w
    weights += _linear_parameters([16 * w * 25, 120 * w, 84 * w, out])
    return "classifier.width", weights, w * (3 * (784 * 6 + 100 * 16) + 400)


def _mlp_gan_sizes(gan: GANParams) -> tuple[int, int, int]:
    """(G's parameters, D's, floats kept per image while training) of the MLP GAN."""
    g, label = gan.generator_config(), N_CLASSES if gan.conditional else 0
    g_weights = _linear_parameters([g.latent_size + label, *g.hidden, IMAGE_PIXELS]) + 2 * sum(
        g.hidden
    )
    d_weights = _linear_parameters([IMAGE_PIXELS, *gan.discriminator.hidden, 1])
    return (
        g_weights,
        d_weights,
        3 * (sum(g.hidden) + sum(gan.discriminator.hidden)) + 4 * IMAGE_PIXELS,
    )


def _conv_gan_sizes(gan: GANParams) -> tuple[int, int, int]:
    """(G's parameters, D's, floats kept per image while training) of the conv GAN."""
    c1, c2 = gan.channels
    n_in = gan.latent_size + (N_CLASSES if gan.conditional else 0)
    g_weights = _linear_parameters([n_in, 49 * c2]) + 16 * (c2 * c1 + c1) + 2 * (49 * c2 + c1)
    d_weights = 16 * (c1 + c1 * c2) + c1 + c2 + 49 * c2 * (1 + N_CLASSES) + 1
    return g_weights, d_weights, 3 * 2 * (196 * c1 + 49 * c2) + 4 * IMAGE_PIXELS


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


def check_sizes(params: Params, memory: int, source: str = "params.yaml") -> None:
    """Refuse, before any work, a network or a batch that cannot be trained in `memory` bytes:
    half of it for the networks (TRAIN_COPIES copies of the weights), half for one batch's
    activations (forward values and their gradients)."""
    budget = memory // 2
    c, gan = params.classifier, params.gan
    n_train = TRAIN_IMAGES[params.data.dataset] - params.data.val_size
    batch = n_train if c.batch_size == 0 else min(c.batch_size, n_train)
    key, weights, per_image = _classifier_sizes(c, input_shape(params.data.dataset))
    g_key, d_key, (g_weights, d_weights, gan_per_image) = (
        ("gan.channels", "gan.channels", _conv_gan_sizes(gan))
        if gan.arch == "conv"
        else ("gan.generator.hidden", "gan.discriminator.hidden", _mlp_gan_sizes(gan))
    )
    gan_batch = min(gan.batch_size, MNIST_TRAIN)
    gigabytes = f"{memory / 1e9:.0f} GB"
    networks = ((key, weights, "the classifier"),
                (d_key, d_weights, "the discriminator"),  # G may mirror it
                (g_key, g_weights, "the generator"))  # fmt: skip
    for key_, count, what in networks:
        if count * FLOAT_BYTES * TRAIN_COPIES > budget:
            raise ParamsError(
                f"{source}: {key_} makes {what} too big: {count:,} parameters need "
                f"{count * FLOAT_BYTES * TRAIN_COPIES / 1e9:,.0f} GB to train, more than half "
                f"of this machine's {gigabytes} of memory"
            )
    for key_, size, floats in (("classifier.batch_size", batch, per_image),
                               ("gan.batch_size", gan_batch, gan_per_image)):  # fmt: skip
        needed = 2 * size * floats * FLOAT_BYTES
        if needed > budget:
            raise ParamsError(
                f"{source}: {key_} gives batches of {size:,} images whose activations need "
                f"{needed / 1e9:,.0f} GB, more than half of this machine's {gigabytes} of "
                "memory: use smaller batches"
            )


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
    """Validate a params mapping; raise ParamsError with one line for the first bad key, or
    for networks and batches too big for this machine's memory."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of keys, got {type(raw).__name__}")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_one_line(exc.errors()[0], source)) from None
    check_val_size(params, source)
    check_sizes(params, machine_memory(), source)
    return params


def stage_params() -> Params:
    """params.yaml for a stage script, read before anything else it imports (torch and MLflow
    take seconds to import): a bad value ends the stage at once, with one line and exit 1."""
    try:
        return load_params()
    except ParamsError as exc:
        print(f"digitlab: error: {exc}{restore_hint()}", file=sys.stderr)
        raise SystemExit(1) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the repository root)") from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a directory, expected the params file") from None
    except UnicodeDecodeError:
        raise ParamsError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ParamsError(f"{path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None
    return parse_params(raw, str(path))
