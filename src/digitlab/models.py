"""Networks from stock nn layers, and the two registries that name them: CLASSIFIERS (mlp, cnn,
lenet5, fastcnn) and GANS (mlp, conv: a generator and its discriminator). To add a network,
write its class and one registry entry; params validation, the memory check (memory.py) and
the tests all read the registries."""

from __future__ import annotations

import itertools
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from digitlab.errors import DigitlabError
from digitlab.params import (
    GAN_IMAGE_SHAPE,
    N_CLASSES,
    ClassifierArchitecture,
    DiscriminatorConfig,
    GeneratorConfig,
)

Shape = tuple[int, int, int]  # (channels, height, width) of a classifier's input images
MNIST_SHAPE: Shape = (1, 28, 28)
IMAGE_PIXELS = 28 * 28  # of the GAN's images
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "leaky_relu": nn.LeakyReLU,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}


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


# ---------------------------------------------------------------- classifiers
# Each takes (architecture, input shape), answers with architecture.outputs values, and gives
# its penultimate-layer activations from features() (the GAN's judge compares those).
# SIZE_KEY is the params key the memory check names when the network is too big.


class MLP(nn.Module):
    """784 (C·H·W) → hidden… → 10: the labs' detector, with ten outputs instead of one (or one
    output, the digit's value, for the tutorial's regression; no hidden layer: one Linear)."""

    SIZE_KEY: ClassVar[str] = "classifier.hidden"

    def __init__(self, arch: ClassifierArchitecture, in_shape: Shape = MNIST_SHAPE) -> None:
        super().__init__()
        n_in = in_shape[0] * in_shape[1] * in_shape[2]
        layers = mlp_layers([n_in, *arch.hidden], arch.activation, arch.dropout, arch.outputs)
        self.net = nn.Sequential(nn.Flatten(), *layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[:-1](x)


class LabCNN(nn.Module):
    """The labs' CNN: conv 64 → 32 → 32 (3×3, padding 1), each ReLU + 2×2 max-pool, dropout
    0.25 after the 2nd and 3rd, linear to 10. (The lab's `view(-1, 320)` does not fit 28×28
    images; with padding the last block gives 32×3×3 = 288 features, 32×4×4 on 32×32.)"""

    SIZE_KEY: ClassVar[str] = "classifier.channels"

    def __init__(self, arch: ClassifierArchitecture, in_shape: Shape = MNIST_SHAPE) -> None:
        super().__init__()
        c1, c2, c3 = arch.channels
        side = in_shape[1] // 8  # after three 2×2 max-pools
        self.body = nn.Sequential(
            nn.Conv2d(in_shape[0], c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 14×14
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 7×7
            nn.Dropout(0.25),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 3×3
            nn.Dropout(0.25),
            nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(c3 * side * side, arch.outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class LeNet5(nn.Module):
    """LeNet-5: conv 6 (5×5) → pool → conv 16 (5×5) → pool → 120 → 84 → 10, ReLU and max-pool
    as in lab 6. On 32×32 inputs (CIFAR-10) it is the original, no padding (32 → 28); 28×28
    ones are padded by 2, to the same 28×28 after the first conv. `width` multiplies every
    layer's channels and units (lab 6's "wider" structure)."""

    SIZE_KEY: ClassVar[str] = "classifier.width"

    def __init__(self, arch: ClassifierArchitecture, in_shape: Shape = MNIST_SHAPE) -> None:
        super().__init__()
        channels, size, _ = in_shape
        pad = (32 - size) // 2  # 2 on 28×28, 0 on 32×32
        w = arch.width
        c1, c2, f1, f2 = 6 * w, 16 * w, 120 * w, 84 * w
        self.body = nn.Sequential(
            nn.Conv2d(channels, c1, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),  # 14×14
            nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2),  # 5×5
            nn.Flatten(),
            nn.Linear(c2 * 5 * 5, f1), nn.ReLU(),
            nn.Linear(f1, f2), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(f2, arch.outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class FastCNN(nn.Module):
    """The two-conv net of tuomaso/train_mnist_fast: conv 24 (5×5) → pool → conv 32 (3×3) →
    pool → 256 → 10, ReLU; 99% on MNIST after one epoch with its recipe. (32×32 inputs end
    at 6×6.)"""

    SIZE_KEY: ClassVar[str] = "classifier.arch"

    def __init__(self, arch: ClassifierArchitecture, in_shape: Shape = MNIST_SHAPE) -> None:
        super().__init__()
        side = ((in_shape[1] - 4) // 2 - 2) // 2
        self.body = nn.Sequential(
            nn.Conv2d(in_shape[0], 24, 5), nn.MaxPool2d(2), nn.ReLU(),  # 12×12
            nn.Conv2d(24, 32, 3), nn.MaxPool2d(2), nn.ReLU(),  # 5×5
            nn.Flatten(),
            nn.Linear(32 * side * side, 256), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(256, arch.outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


CLASSIFIERS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "cnn": LabCNN,
    "lenet5": LeNet5,
    "fastcnn": FastCNN,
}


def _registered(registry: dict[str, type] | dict[str, GANNetworks], key: str, name: str) -> None:
    if name not in registry:
        raise DigitlabError(
            f"{key} = {name!r}: no such network (registered: {', '.join(registry)})"
        )


def build_classifier(arch: ClassifierArchitecture, in_shape: Shape = MNIST_SHAPE) -> nn.Module:
    """The classifier `arch` describes, for images of `in_shape` (channels, height, width:
    params.input_shape(data.dataset))."""
    _registered(CLASSIFIERS, "classifier.arch", arch.arch)
    return CLASSIFIERS[arch.arch](arch, in_shape)


# ---------------------------------------------------------------- the GAN's networks
# A generator takes (noise, digits): a conditional one joins a learned embedding of the digit
# (ten numbers) to the noise, as in PyTorch-GAN's cgan.py. A discriminator gives one logit per
# image (the sigmoid lives in the BCE-with-logits loss); a conditional one is a projection
# discriminator (Miyato & Koyama, 2018): the logit gains the dot product of its last hidden
# features with a learned vector for the image's digit.


class DigitBatchNorm(nn.Module):
    """BatchNorm whose scale and shift are learned per digit (class-conditional BatchNorm, as
    in the generators of cGANs with a projection discriminator and BigGAN): the digit steers
    every layer, not just the input. Starts as plain BatchNorm (scale 1, shift 0)."""

    def __init__(self, features: int, dims: int) -> None:
        super().__init__()
        self.norm = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(features, affine=False)
        self.scale = nn.Embedding(N_CLASSES, features)
        self.shift = nn.Embedding(N_CLASSES, features)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        shape = (len(x), x.shape[1]) + (1,) * (x.dim() - 2)
        return self.norm(x) * self.scale(labels).view(shape) + self.shift(labels).view(shape)


def _after(config: GeneratorConfig, features: int, dims: int) -> list[nn.Module]:
    """A generator layer's [BatchNorm →] activation [→ dropout], on 1-d or 2-d outputs; the
    BatchNorm learns its scale and shift per digit in a conditional G with norm_per_digit."""
    if config.conditional and config.norm_per_digit:
        norm: nn.Module = DigitBatchNorm(features, dims)
    else:
        norm = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(features)
    batchnorm = [norm] if config.batchnorm else []
    dropout = [nn.Dropout(config.dropout)] if config.dropout > 0 else []
    return [*batchnorm, activation(config.activation), *dropout]


def _output(config: GeneratorConfig) -> nn.Module:
    """tanh (images in [-1, 1]) or sigmoid ([0, 1])."""
    return nn.Tanh() if config.output == "tanh" else nn.Sigmoid()


def _needed(labels: torch.Tensor | None) -> torch.Tensor:
    if labels is None:
        raise ValueError("a conditional GAN network needs the digits (labels) of its images")
    return labels


class _Generator(nn.Module):
    """What every generator shares: its config, and the digit joined to the noise."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.label_embedding = nn.Embedding(N_CLASSES, N_CLASSES) if config.conditional else None
        self.n_in = config.latent_size + (N_CLASSES if config.conditional else 0)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.label_embedding is None:
            return self.net(z)
        digits = _needed(labels)
        x = torch.cat([z, self.label_embedding(digits)], 1)
        for layer in self.net:
            x = layer(x, digits) if isinstance(layer, DigitBatchNorm) else layer(x)
        return x


class MLPGenerator(_Generator):
    """latent → hidden… → 784, each hidden layer Linear [→ BatchNorm] → activation [→ dropout];
    tanh or sigmoid output, shaped N×1×28×28 (labs 4 and 5)."""

    SIZE_KEY: ClassVar[str] = "gan.generator.hidden"

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__(config)
        layers: list[nn.Module] = []
        n_in = self.n_in
        for n_out in config.hidden:
            layers += [nn.Linear(n_in, n_out), *_after(config, n_out, 1)]
            n_in = n_out
        layers += [nn.Linear(n_in, IMAGE_PIXELS), _output(config), nn.Unflatten(1, GAN_IMAGE_SHAPE)]
        self.net = nn.Sequential(*layers)


class ConvGenerator(_Generator):
    """latent → Linear to c2×7×7 → transposed conv to c1×14×14 → transposed conv to 1×28×28
    (DCGAN's generator, two layers), mirroring the conv discriminator."""

    SIZE_KEY: ClassVar[str] = "gan.channels"

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__(config)
        c1, c2 = config.channels or (0, 0)
        self.net = nn.Sequential(
            nn.Linear(self.n_in, c2 * 49), *_after(config, c2 * 49, 1),
            nn.Unflatten(1, (c2, 7, 7)),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), *_after(config, c1, 2),  # 14×14
            nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1), _output(config),  # 28×28
        )  # fmt: skip


class _Discriminator(nn.Module):
    """What every discriminator shares: body → features → logit, and the projection of the
    digit onto the features for a conditional one. Subclasses set body and head first."""

    body: nn.Module
    head: nn.Module

    def _project(self, config: DiscriminatorConfig, n_features: int) -> None:
        self.config = config
        self.projection = nn.Embedding(N_CLASSES, n_features) if config.conditional else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        features = self.body(x)
        logit = self.head(features).squeeze(1)
        if self.projection is None:
            return logit
        return logit + (self.projection(_needed(labels)) * features).sum(1)


class MLPDiscriminator(_Discriminator):
    """784 → hidden… → 1 logit (lab 5's 784-1024-512-256-1)."""

    SIZE_KEY: ClassVar[str] = "gan.discriminator.hidden"

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        *hidden, self.head = mlp_layers(
            [IMAGE_PIXELS, *config.hidden], config.activation, config.dropout, 1
        )
        self.body = nn.Sequential(nn.Flatten(), *hidden)
        self._project(config, config.hidden[-1])


class ConvDiscriminator(_Discriminator):
    """Two 4×4 stride-2 convolutions, 28×28 → c1×14×14 → c2×7×7, then one Linear to the logit
    (DCGAN's discriminator, two layers)."""

    SIZE_KEY: ClassVar[str] = "gan.channels"

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        c1, c2 = config.channels or (0, 0)
        act = config.activation
        drop = [nn.Dropout(config.dropout)] if config.dropout > 0 else []
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 4, stride=2, padding=1), activation(act), *drop,  # 14×14
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), activation(act), *drop,  # 7×7
            nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(c2 * 49, 1)
        self._project(config, c2 * 49)


class GANNetworks(NamedTuple):
    """One entry of GANS: a generator and the discriminator it trains against."""

    generator: type[_Generator]
    discriminator: type[_Discriminator]


GANS: dict[str, GANNetworks] = {
    "mlp": GANNetworks(MLPGenerator, MLPDiscriminator),
    "conv": GANNetworks(ConvGenerator, ConvDiscriminator),
}
Generator = _Generator  # what code that takes any generator annotates
Discriminator = _Discriminator


def build_generator(config: GeneratorConfig) -> Generator:
    """The generator `config` describes (GANS[config.arch])."""
    _registered(GANS, "gan.arch", config.arch)
    return GANS[config.arch].generator(config)


def build_discriminator(config: DiscriminatorConfig) -> Discriminator:
    """The discriminator `config` describes (GANS[config.arch])."""
    _registered(GANS, "gan.arch", config.arch)
    return GANS[config.arch].discriminator(config)


def n_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def channels_last(model: nn.Module) -> nn.Module:
    """The model with its conv weights in NHWC order (torch.channels_last), so that its
    convolutions and max-pools take oneDNN's faster NHWC path on the CPU; returns it."""
    return model.to(memory_format=torch.channels_last)


def nhwc(images: torch.Tensor) -> torch.Tensor:
    """An N×C×H×W batch in NHWC order, to match a channels_last model."""
    return images.contiguous(memory_format=torch.channels_last)
