"""Checkpoints: a network's weights with the settings that rebuild it, saved atomically and
loaded with `weights_only`; a checkpoint that does not match params.yaml is refused in one line."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from digitlab.errors import DigitlabError
from digitlab.files import write_bytes
from digitlab.models import (
    MNIST_SHAPE,
    Generator,
    Shape,
    build_classifier,
    build_generator,
    channels_last,
)
from digitlab.params import (
    DATASETS,
    ClassifierArchitecture,
    GANParams,
    GeneratorConfig,
    input_shape,
)

Config = TypeVar("Config", bound=BaseModel)


def save_checkpoint(
    path: str | Path, kind: str, config: BaseModel, model: nn.Module, **extra: Any
) -> None:
    """Save a state dict with the settings that rebuild the model (loadable weights_only),
    atomically: serialized in memory first, so a write that fails names `path` and why."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"kind": kind, "config": config.model_dump(), "state_dict": state, **extra}, buffer)
    write_bytes(path, buffer.getvalue())


def save_gan(
    settings: GANParams, generator: nn.Module, discriminator: nn.Module, folder: Path, **extra: Any
) -> None:
    """models/generator.pt and models/discriminator.pt: both networks with their configs."""
    save_checkpoint(
        folder / "generator.pt",
        "generator",
        settings.generator_config(),
        generator,
        ema=settings.ema,
        **extra,
    )
    save_checkpoint(
        folder / "discriminator.pt",
        "discriminator",
        settings.discriminator_config(),
        discriminator,
        **extra,
    )


def load_checkpoint(path: str | Path, kind: str) -> dict[str, Any]:
    """Load a checkpoint saved by save_checkpoint, checking it is of the expected kind."""
    path = Path(path)
    if not path.is_file():
        raise DigitlabError(f"{path} not found: run the stage that trains it first")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DigitlabError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("kind") != kind:
        raise DigitlabError(f"{path}: not a digitlab {kind} checkpoint")
    return checkpoint


def _load_weights(path: str | Path, model: nn.Module, checkpoint: dict[str, Any]) -> None:
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else "no weights"
        raise DigitlabError(f"{path}: weights do not fit the saved settings ({first})") from None


def _saved_config(path: str | Path, checkpoint: dict[str, Any], schema: type[Config]) -> Config:
    try:
        return schema.model_validate(checkpoint.get("config"))
    except ValidationError:
        raise DigitlabError(f"{path}: its saved settings are missing or damaged") from None


def check_dataset(path: str | Path, checkpoint: dict[str, Any], dataset: str) -> None:
    """Refuse a model trained on another dataset than params.yaml's `data.dataset`."""
    trained_on = checkpoint.get("dataset")
    if trained_on != dataset:
        raise DigitlabError(
            f"{path} was trained on data.dataset={trained_on!r} but params.yaml has "
            f"{dataset!r}: run `dvc repro`"
        )


def saved_input_shape(checkpoint: dict[str, Any]) -> Shape:
    """The input shape of a saved classifier: its dataset's (1×28×28 when it names none)."""
    dataset = checkpoint.get("dataset")
    return input_shape(dataset) if isinstance(dataset, str) and dataset in DATASETS else MNIST_SHAPE


def load_classifier(
    path: str | Path, expected: ClassifierArchitecture | None = None
) -> tuple[nn.Module, ClassifierArchitecture, dict[str, Any]]:
    """Rebuild a saved classifier in eval mode; returns (model, its architecture, checkpoint).

    With `expected` (the architecture params.yaml asks for), a checkpoint trained with other
    settings fails with one line naming the first differing key.
    """
    checkpoint = load_checkpoint(path, "classifier")
    architecture = _saved_config(path, checkpoint, ClassifierArchitecture)
    for key, want in (expected.model_dump() if expected else {}).items():
        have = getattr(architecture, key)
        if have != want:
            raise DigitlabError(
                f"{path} was trained with classifier.{key}={have!r} but params.yaml "
                f"has {want!r}: run `dvc repro train_classifier`"
            )
    model = build_classifier(architecture, saved_input_shape(checkpoint))
    _load_weights(path, model, checkpoint)
    return channels_last(model).eval(), architecture, checkpoint


def load_generator(
    path: str | Path, conditional: bool | None = None, digit: int | str | None = None
) -> tuple[Generator, dict[str, Any]]:
    """Rebuild a saved generator (its settings in `.config`); returns (generator, checkpoint).
    With `conditional` and `digit` (params.yaml's gan.conditional and digit), a generator of
    the other kind, or trained for another digit, fails with one line."""
    checkpoint = load_checkpoint(path, "generator")
    config = _saved_config(path, checkpoint, GeneratorConfig)
    if conditional is not None and config.conditional != conditional:
        kinds = {True: "a conditional", False: "an unconditional"}
        raise DigitlabError(
            f"{path} is {kinds[config.conditional]} generator but params.yaml has "
            f"gan.conditional={str(conditional).lower()}: run `dvc repro train_gan`"
        )
    if digit is not None and checkpoint.get("digit") != digit:
        raise DigitlabError(
            f"{path} was trained for digit {checkpoint.get('digit')!r} but params.yaml has "
            f"digit {digit!r}: run `dvc repro train_gan`"
        )
    generator = build_generator(config)
    _load_weights(path, generator, checkpoint)
    return generator, checkpoint
