"""The recipes raced, each timed to its target: digitlab's own (through its training loops and
params) and the peers' as published (tuomaso/train_mnist_fast, pytorch/examples' MNIST,
PyTorch-GAN's vanilla GAN), written here in plain PyTorch."""

from __future__ import annotations

import contextlib
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.races import (
    CPU,
    FRECHET_TARGET,
    GAN_SAMPLES,
    TARGETS,
    FrechetJudge,
    Reached,
    Stopwatch,
    judge_accuracy,
    seconds_to,
)
from digitlab.data import Split
from digitlab.gan import fit_gan
from digitlab.inference import generate, predict_probabilities
from digitlab.metrics import decent_rate
from digitlab.models import build_classifier
from digitlab.params import ClassifierArchitecture, ClassifierParams, Params, parse_params
from digitlab.train import fit_classifier

EXAMPLES_EPOCHS = 5  # of pytorch/examples' 14: its 99.0% came at epoch 4 (docs/performance.md)


# digitlab's fast recipe, params only (README, "Experiments"): one epoch, no augmentation.
FAST_RECIPE = {
    "classifier.arch": "fastcnn", "classifier.optimizer.name": "adam",
    "classifier.optimizer.lr": 0.01, "classifier.optimizer.betas": [0.7, 0.9],
    "classifier.scheduler": "onecycle", "classifier.augment.shift": 0,
    "classifier.augment.rotate": 0, "classifier.augment.scale": 0, "classifier.epochs": 1,
    "classifier.batch_size": 128,
}  # fmt: skip


def classifier_time_to_accuracy(
    cfg: ClassifierParams, train: Split, val: Split, test: Split, seed: int,
    targets: dict[str, float] = TARGETS, checks_per_epoch: int = 1, device: torch.device = CPU,
) -> dict[str, Any]:  # fmt: skip
    """digitlab's training with classifier params `cfg`: training seconds (its validation
    included) until the test accuracy first reaches each target, judged `checks_per_epoch`
    times an epoch."""
    torch.manual_seed(seed)
    model = build_classifier(cfg.architecture())
    batch = len(train.labels) if cfg.batch_size == 0 else min(cfg.batch_size, len(train.labels))
    steps = math.ceil(len(train.labels) / batch)
    every = max(1, steps // checks_per_epoch)
    curve: list[dict[str, float]] = []
    watch = Stopwatch(device)

    def on_step(epoch: int, step: int) -> None:
        if step % every == 0 or step == steps:
            judge_accuracy(model, test, curve, watch, epoch - 1 + step / steps, targets)

    with contextlib.suppress(Reached):
        fit_classifier(model, train, val, cfg, seed, device, on_step=on_step)
    return seconds_to(curve, "test_acc", targets)


def _raw_mnist(raw_dir: Path, train: bool) -> Split:
    """MNIST's training (or test) set from our raw files as torchvision reads them, scaled to
    [0, 1] and normalized with MNIST's mean and std, as both reference recipes do."""
    with tempfile.TemporaryDirectory() as root:
        data = _torchvision_mnist(raw_dir, root, None, train=train)
        images = ((data.data.float() / 255 - 0.1307) / 0.3081).unsqueeze(1)
        return Split(images, data.targets.clone())


class TuomasoNet(nn.Module):
    """tuomaso/train_mnist_fast's final net: conv 24 (5×5) → max-pool → ReLU → conv 32 (3×3)
    → max-pool → ReLU → fc 256 → fc 10, log-softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 24, 5, 1)
        self.conv2 = nn.Conv2d(24, 32, 3, 1)
        self.fc1 = nn.Linear(800, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return F.log_softmax(self.fc2(x), dim=1)


def tuomaso_time_to_accuracy(
    raw_dir: Path, seed: int, targets: dict[str, float] = TARGETS, checks: int = 10,
    epochs: int = 1, n_train: int | None = None, device: torch.device = CPU,
) -> dict[str, Any]:  # fmt: skip
    """tuomaso/train_mnist_fast's recipe as published (8_Final notebook): all 60,000 training
    images normalized and shuffled once into memory, batches cut in that order, batch 256,
    Adam lr 0.01 with betas (0.7, 0.9), OneCycleLR without momentum cycling, one epoch.
    Training seconds until the test accuracy first reaches each target, judged `checks` times
    an epoch."""
    torch.manual_seed(seed)
    train, test = _raw_mnist(raw_dir, train=True), _raw_mnist(raw_dir, train=False)
    order = torch.randperm(len(train.labels))[:n_train]
    images, labels = train.images[order].to(device), train.labels[order].to(device)
    batch_size = 256
    steps = (len(labels) - 1) // batch_size + 1
    model = TuomasoNet().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.7, 0.9))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=0.01, total_steps=steps * epochs, cycle_momentum=False
    )
    curve: list[dict[str, float]] = []
    watch = Stopwatch(device)
    model.train()
    with contextlib.suppress(Reached):
        for i in range(steps * epochs):
            step = i % steps
            batch = slice(batch_size * step, batch_size * (step + 1))
            optimizer.zero_grad()
            F.nll_loss(model(images[batch]), labels[batch]).backward()
            optimizer.step()
            scheduler.step()
            if (i + 1) % max(1, steps // checks) == 0 or step + 1 == steps:
                judge_accuracy(model, test, curve, watch, (i + 1) / steps, targets)
    return seconds_to(curve, "test_acc", targets)


class ExamplesNet(nn.Module):
    """pytorch/examples' MNIST CNN (mnist/main.py): conv 32 → conv 64 → max-pool → dropout
    0.25 → fc 128 → dropout 0.5 → fc 10, log-softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = F.relu(self.fc1(torch.flatten(self.dropout1(x), 1)))
        return F.log_softmax(self.fc2(self.dropout2(x)), dim=1)


def examples_time_to_accuracy(
    raw_dir: Path, seed: int, targets: dict[str, float] = TARGETS, max_epochs: int = 8,
    n_train: int | None = None, max_seconds: float = math.inf,
) -> dict[str, Any]:  # fmt: skip
    """pytorch/examples' MNIST recipe as its main.py runs it (DataLoader with ToTensor and
    Normalize, batch 64, Adadelta lr 1.0, StepLR gamma 0.7, all 60,000 training images):
    training seconds until the test accuracy, judged after every epoch, first reaches each
    target (at most `max_epochs` epochs; none begins after `max_seconds` of training)."""
    from torchvision import transforms

    torch.manual_seed(seed)
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
    )
    test = _raw_mnist(raw_dir, train=False)
    curve: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as root, contextlib.suppress(Reached):
        train_set = _torchvision_mnist(raw_dir, root, transform, train=True)
        if n_train is not None:
            train_set = torch.utils.data.Subset(train_set, range(n_train))
        train_loader = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True)
        model = ExamplesNet()
        optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
        watch = Stopwatch()
        for epoch in range(1, max_epochs + 1):
            model.train()
            for data, labels in train_loader:
                optimizer.zero_grad()
                F.nll_loss(model(data), labels).backward()
                optimizer.step()
            scheduler.step()
            judge_accuracy(model, test, curve, watch, epoch, targets)
            if curve[-1]["seconds"] >= max_seconds:
                break
    return seconds_to(curve, "test_acc", targets)


def gan_time_to_frechet(
    params: Params, real: torch.Tensor, judge: FrechetJudge, architecture: ClassifierArchitecture,
    target: float = FRECHET_TARGET, n_samples: int = GAN_SAMPLES,
) -> dict[str, Any]:  # fmt: skip
    """digitlab's GAN at `params`: training seconds until the generator it would save first
    has a Fréchet ratio below `target` on n_samples fresh samples, judged after every epoch
    (every round); its decent rate is recorded alongside (also the seconds to 90% decent)."""
    cfg, device = params.gan, judge.device
    checks = cfg.epochs if cfg.schedule == "epochs" else cfg.rounds
    cfg = cfg.model_copy(update={"snapshots": checks})
    curve: list[dict[str, float]] = []
    watch = Stopwatch(device)

    def on_snapshot(g_step: int, saved: nn.Module) -> None:
        with watch.paused() as seconds:
            samples = generate(saved, n_samples, params.seed, device)
            ratio = judge.ratio(samples)
            probs = predict_probabilities(judge.classifier, architecture, samples, device)
            rate = decent_rate(probs, params.digits, params.gan_eval.threshold)
        curve.append({"check": len(curve) + 1, "g_step": g_step, "seconds": seconds,
                      "frechet_ratio": ratio, "decent_rate": rate})  # fmt: skip
        if ratio < target:
            raise Reached

    with contextlib.suppress(Reached):
        fit_gan(cfg, real, params.seed, device, on_snapshot=on_snapshot)
    result = seconds_to(curve, "frechet_ratio", {"frechet_2": target}, below=True)
    result |= seconds_to(curve, "decent_rate", {"90_decent": 0.9})
    return result


class VanillaGenerator(nn.Module):
    """PyTorch-GAN's gan.py generator: 100 → 128 → 256 → 512 → 1024 → 784, BatchNorm (its
    eps 0.8) on all but the first block, LeakyReLU 0.2, tanh."""

    def __init__(self, latent_size: int = 100) -> None:
        super().__init__()

        def block(n_in: int, n_out: int, normalize: bool = True) -> list[nn.Module]:
            norm = [nn.BatchNorm1d(n_out, 0.8)] if normalize else []
            return [nn.Linear(n_in, n_out), *norm, nn.LeakyReLU(0.2, inplace=True)]

        self.model = nn.Sequential(
            *block(latent_size, 128, normalize=False), *block(128, 256), *block(256, 512),
            *block(512, 1024), nn.Linear(1024, 784), nn.Tanh(),
        )  # fmt: skip

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z).view(len(z), 1, 28, 28)


class VanillaDiscriminator(nn.Module):
    """PyTorch-GAN's gan.py discriminator: 784 → 512 → 256 → 1, LeakyReLU 0.2, sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(784, 512), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(512, 256), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(256, 1), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.flatten(1))


def pytorch_gan_time_to_frechet(
    real: torch.Tensor, judge: FrechetJudge, seed: int, max_seconds: float,
    target: float = FRECHET_TARGET, n_samples: int = GAN_SAMPLES,
) -> dict[str, Any]:  # fmt: skip
    """PyTorch-GAN's vanilla GAN (gan.py) on the same images ([0, 1], scaled to [-1, 1] as
    its Normalize(0.5, 0.5) does), shuffled every epoch, batch 64, Adam 2e-4 with betas
    (0.5, 0.999), BCE, G step then D step: training seconds until its Fréchet ratio first
    drops below `target`, judged after every epoch on n_samples images made as its script
    makes them (training mode, batches of 64); stops after max_seconds of training."""
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    real = real * 2 - 1
    G, D = VanillaGenerator(), VanillaDiscriminator()
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCELoss()
    curve: list[dict[str, float]] = []
    watch = Stopwatch()
    epoch = 0
    while not curve or curve[-1]["seconds"] < max_seconds:
        epoch += 1
        for idx in torch.randperm(len(real), generator=rng).split(64):
            imgs = real[idx]
            valid, fake = torch.ones(len(imgs), 1), torch.zeros(len(imgs), 1)
            z = torch.randn(len(imgs), 100, generator=rng)

            # Train Generator
            opt_g.zero_grad()
            gen_imgs = G(z)
            bce(D(gen_imgs), valid).backward()
            opt_g.step()

            # Train Discriminator
            opt_d.zero_grad()
            d_loss = (bce(D(imgs), valid) + bce(D(gen_imgs.detach()), fake)) / 2
            d_loss.backward()
            opt_d.step()
        with watch.paused() as seconds, torch.no_grad():
            z = torch.randn(n_samples, 100, generator=torch.Generator().manual_seed(seed))
            samples = torch.cat([(G(chunk) + 1) / 2 for chunk in z.split(64)]).clamp(0, 1)
            ratio = judge.ratio(samples)
        curve.append({"epoch": epoch, "seconds": seconds, "frechet_ratio": ratio})
        if ratio < target:
            break
    return seconds_to(curve, "frechet_ratio", {"frechet_2": target}, below=True)


def _torchvision_mnist(raw_dir: Path, root: str, transform: Any, train: bool = True) -> Any:
    """torchvision's MNIST training (or test) set over our raw files, symlinked into its
    layout under `root`."""
    from torchvision import datasets

    raw = Path(root) / "MNIST" / "raw"
    if not raw.is_dir():
        raw.mkdir(parents=True)
        for path in raw_dir.iterdir():
            (raw / path.name).symlink_to(path.resolve())
    return datasets.MNIST(root, train=train, download=False, transform=transform)


def recipe_params(params: Params, overrides: dict[str, Any]) -> Params:
    """`params` with dotted-key overrides (as `dvc exp run -S` takes them), validated."""
    raw = params.model_dump()
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[last] = value
    return parse_params(raw)
