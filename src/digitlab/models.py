"""Networks from stock nn layers: the classifier (mlp / cnn / lenet5), the GAN's generator and
discriminator; checkpoints that rebuild them."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from digitlab.errors import DigitlabError
from digitlab.params import (
    DATASETS,
    IMAGE_PIXELS,
    N_CLASSES,
    ClassifierArchitecture,
    DiscriminatorParams,
    GeneratorConfig,
    input_shape,
)

IMAGE_SHAPE = (1, 28, 28)  # MNIST's and Fashion-MNIST's; the GAN makes these only
Shape = tuple[int, int, int]  # (channels, height, width) of a classifier's input images
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "leaky_relu": nn.LeakyReLU,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}


Config = TypeVar("Config", bound=BaseModel)


def activation(name: str) -> nn.Module:
    """A fresh activation module (LeakyReLU with slope 0.2, as GANs and the labs use)."""
    return nn.LeakyReLU(0.2) if name == "leaky_relu" else ACTIVATIONS[name]()


def mlp_layers(sizes: list[int], act: str, dropout: float, out_features: int) -> list[nn.Module]:
    """Linear → activation → dropout for each hidden size, then a final Linear."""
    layers: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise(sizes):
        layers += [nn.Linear(n_in, n_out), activation(act)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(sizes[-1], out_features))
    return layers


class MLP(nn.Module):
    """784 (C·H·W) → hidden… → 10: the labs' detector, with ten outputs instead of one (or one
    output, the digit's value, for the tutorial's regression; no hidden layer: one Linear)."""

    def __init__(
        self,
        hidden: list[int],
        act: str,
        dropout: float,
        outputs: int = N_CLASSES,
        in_shape: Shape = IMAGE_SHAPE,
    ) -> None:
        super().__init__()
        n_in = in_shape[0] * in_shape[1] * in_shape[2]
        self.net = nn.Sequential(nn.Flatten(), *mlp_layers([n_in, *hidden], act, dropout, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations (input to the last Linear)."""
        return self.net[:-1](x)


class LabCNN(nn.Module):
    """The labs' CNN: conv 64 → 32 → 32 (3×3, padding 1), each ReLU + 2×2 max-pool, dropout
    0.25 after the 2nd and 3rd, linear to 10. (The lab's `view(-1, 320)` does not fit 28×28
    images; with padding the last block gives 32×3×3 = 288 features, 32×4×4 on 32×32.)"""

    def __init__(
        self,
        channels: list[int],
        dropout: float = 0.25,
        outputs: int = N_CLASSES,
        in_shape: Shape = IMAGE_SHAPE,
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        side = in_shape[1] // 8  # after three 2×2 max-pools
        self.body = nn.Sequential(
            nn.Conv2d(in_shape[0], c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 14×14
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 7×7
            nn.Dropout(dropout),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 3×3
            nn.Dropout(dropout),
            nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(c3 * side * side, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class LeNet5(nn.Module):
    """LeNet-5: conv 6 (5×5) → pool → conv 16 (5×5) → pool → 120 → 84 → 10, ReLU and max-pool
    as in lab 6. On 32×32 inputs (CIFAR-10) it is the original, no padding (32 → 28); 28×28
    ones are padded by 2, to the same 28×28 after the first conv. `width` multiplies every
    layer's channels and units (lab 6's "wider" structure)."""

    def __init__(
        self, outputs: int = N_CLASSES, width: int = 1, in_shape: Shape = IMAGE_SHAPE
    ) -> None:
        super().__init__()
        channels, size, _ = in_shape
        pad = (32 - size) // 2  # 2 on 28×28, 0 on 32×32
        c1, c2, f1, f2 = 6 * width, 16 * width, 120 * width, 84 * width
        self.body = nn.Sequential(
            nn.Conv2d(channels, c1, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),  # 14×14
            nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2),  # 5×5
            nn.Flatten(),
            nn.Linear(c2 * 5 * 5, f1), nn.ReLU(),
            nn.Linear(f1, f2), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(f2, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class FastCNN(nn.Module):
    """The two-conv net of tuomaso/train_mnist_fast: conv 24 (5×5) → pool → conv 32 (3×3) →
    pool → 256 → 10, ReLU; 99% on MNIST after one epoch with its recipe. (32×32 inputs end
    at 6×6.)"""

    def __init__(self, outputs: int = N_CLASSES, in_shape: Shape = IMAGE_SHAPE) -> None:
        super().__init__()
        side = ((in_shape[1] - 4) // 2 - 2) // 2
        self.body = nn.Sequential(
            nn.Conv2d(in_shape[0], 24, 5), nn.MaxPool2d(2), nn.ReLU(),  # 12×12
            nn.Conv2d(24, 32, 3), nn.MaxPool2d(2), nn.ReLU(),  # 5×5
            nn.Flatten(),
            nn.Linear(32 * side * side, 256), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(256, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def channels_last(model: nn.Module) -> nn.Module:
    """The model with its conv weights in NHWC order (torch.channels_last), so that its
    convolutions and max-pools take oneDNN's faster NHWC path on the CPU; returns it."""
    return model.to(memory_format=torch.channels_last)


def nhwc(images: torch.Tensor) -> torch.Tensor:
    """An N×C×H×W batch in NHWC order, to match a channels_last model."""
    return images.contiguous(memory_format=torch.channels_last)


def build_classifier(
    architecture: ClassifierArchitecture, in_shape: Shape = IMAGE_SHAPE
) -> nn.Module:
    """The classifier an architecture describes, for images of `in_shape` (channels, height,
    width: input_shape(data.dataset)): ten outputs, or one with a regression head."""
    outputs = 1 if architecture.head == "regression" else N_CLASSES
    if architecture.arch == "mlp":
        hidden = list(architecture.hidden)
        return MLP(hidden, architecture.activation, architecture.dropout, outputs, in_shape)
    if architecture.arch == "cnn":
        return LabCNN(list(architecture.channels), outputs=outputs, in_shape=in_shape)
    if architecture.arch == "fastcnn":
        return FastCNN(outputs, in_shape)
    return LeNet5(outputs, architecture.width, in_shape)


class Generator(nn.Module):
    """latent → hidden… → 784, each hidden layer Linear [→ BatchNorm] → activation [→ dropout];
    output tanh (images in [-1, 1]) or sigmoid ([0, 1]), shaped N×1×28×28. With conv channels
    (c1, c2) it mirrors the conv discriminator instead: latent → Linear to c2×7×7 → transposed
    conv to c1×14×14 → transposed conv to 1×28×28 (DCGAN's generator, two layers). A
    conditional one takes the digit too: a learned embedding of it (ten numbers) joins the
    latent vector, as in PyTorch-GAN's cgan.py."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.label_embedding = nn.Embedding(N_CLASSES, N_CLASSES) if config.conditional else None
        n_in = config.latent_size + (N_CLASSES if config.conditional else 0)
        output = nn.Tanh() if config.output == "tanh" else nn.Sigmoid()
        if config.channels:
            c1, c2 = config.channels
            self.project = nn.Sequential(nn.Linear(n_in, c2 * 49), *self._after(c2 * 49, 1))
            self.net = nn.Sequential(
                nn.Unflatten(1, (c2, 7, 7)),
                nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), *self._after(c1, 2),  # 14×14
                nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1), output,  # 28×28
            )  # fmt: skip
            return
        layers: list[nn.Module] = []
        for n_out in config.hidden:
            layers += [nn.Linear(n_in, n_out), *self._after(n_out, 1)]
            n_in = n_out
        self.net = nn.Sequential(*layers, nn.Linear(n_in, IMAGE_PIXELS), output)

    def _after(self, features: int, dims: int) -> list[nn.Module]:
        """[BatchNorm →] activation [→ dropout], after a layer of 1-d or 2-d outputs."""
        norm = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(features)
        dropout = [nn.Dropout(self.config.dropout)] if self.config.dropout > 0 else []
        batchnorm = [norm] if self.config.batchnorm else []
        return [*batchnorm, activation(self.config.activation), *dropout]

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.label_embedding is not None:
            z = torch.cat([z, self.label_embedding(_needed(labels))], 1)
        if self.config.channels:
            return self.net(self.project(z))
        return self.net(z).view(-1, *IMAGE_SHAPE)


class Discriminator(nn.Module):
    """784 → hidden… → 1 logit (the sigmoid lives in the BCE-with-logits loss). With conv
    channels (c1, c2): two 4×4 stride-2 convolutions, 28×28 → c1×14×14 → c2×7×7, then one
    Linear to the logit (DCGAN's discriminator, two layers). A conditional one is a projection
    discriminator (Miyato & Koyama, 2018): the logit gains the dot product of its last hidden
    features with a learned vector for the image's digit."""

    def __init__(
        self,
        settings: DiscriminatorParams,
        conditional: bool = False,
        channels: list[int] | None = None,
    ) -> None:
        super().__init__()
        act, dropout = settings.activation, settings.dropout
        drop = [nn.Dropout(dropout)] if dropout > 0 else []
        if channels:
            c1, c2 = channels
            self.body = nn.Sequential(
                nn.Conv2d(1, c1, 4, stride=2, padding=1), activation(act), *drop,  # 14×14
                nn.Conv2d(c1, c2, 4, stride=2, padding=1), activation(act), *drop,  # 7×7
                nn.Flatten(),
            )  # fmt: skip
            n_features = c2 * 7 * 7
            self.head = nn.Linear(n_features, 1)
        else:
            *hidden, self.head = mlp_layers([IMAGE_PIXELS, *settings.hidden], act, dropout, 1)
            self.body = nn.Sequential(nn.Flatten(), *hidden)
            n_features = settings.hidden[-1]
        self.projection = nn.Embedding(N_CLASSES, n_features) if conditional else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        features = self.body(x)
        logit = self.head(features).squeeze(1)
        if self.projection is None:
            return logit
        return logit + (self.projection(_needed(labels)) * features).sum(1)


def _needed(labels: torch.Tensor | None) -> torch.Tensor:
    if labels is None:
        raise ValueError("a conditional GAN network needs the digits (labels) of its images")
    return labels


class DigitFirstGenerator(nn.Module):
    """A conditional generator behind one input tensor, for MLflow's model flavour: column 0
    holds the digit, the rest the latent vector."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.generator(inputs[:, 1:], inputs[:, 0].long())


def n_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_checkpoint(
    path: Path, kind: str, config: BaseModel, model: nn.Module, **extra: Any
) -> None:
    """Save a state dict with the settings that rebuild the model (loadable weights_only)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"kind": kind, "config": config.model_dump(), "state_dict": state, **extra}, path)


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
    return input_shape(dataset) if isinstance(dataset, str) and dataset in DATASETS else IMAGE_SHAPE


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
    path: str | Path, conditional: bool | None = None
) -> tuple[Generator, dict[str, Any]]:
    """Rebuild a saved generator (its settings in `.config`); returns (generator, checkpoint).
    With `conditional` (params.yaml's gan.conditional), a generator of the other kind fails
    with one line."""
    checkpoint = load_checkpoint(path, "generator")
    config = _saved_config(path, checkpoint, GeneratorConfig)
    if conditional is not None and config.conditional != conditional:
        kinds = {True: "a conditional", False: "an unconditional"}
        raise DigitlabError(
            f"{path} is {kinds[config.conditional]} generator but params.yaml has "
            f"gan.conditional={str(conditional).lower()}: run `dvc repro train_gan`"
        )
    generator = Generator(config)
    _load_weights(path, generator, checkpoint)
    return generator, checkpoint


def pick_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
