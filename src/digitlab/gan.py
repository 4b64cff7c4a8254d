"""GAN training: one D step, one G step, and the schedules around them (labs 4 and 5)."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from digitlab.errors import DigitlabError
from digitlab.models import Dropout, Linear, activation
from digitlab.optim import make_optimizer

IMAGE_PIXELS = 28 * 28
FIXED_NOISE = 100  # fixed-noise samples drawn at every snapshot: a 10×10 grid
COLLAPSE_RATIO = 0.25  # fixed-noise diversity below this share of the real data's: collapsed


class GANDiverged(DigitlabError):
    """A GAN loss became NaN or infinite."""


class Generator(nn.Module):
    """latent → hidden… → 784, each hidden layer Linear [→ BatchNorm] → activation [→ dropout];
    output tanh (images in [-1, 1]) or sigmoid ([0, 1]), shaped N×1×28×28."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        n_in = config["latent_size"]
        for n_out in config["hidden"]:
            layers.append(Linear(n_in, n_out))
            if config["batchnorm"]:
                layers.append(nn.BatchNorm1d(n_out))
            layers.append(activation(config["activation"]))
            if config["dropout"] > 0:
                layers.append(Dropout(config["dropout"]))
            n_in = n_out
        layers += [
            Linear(n_in, IMAGE_PIXELS),
            nn.Tanh() if config["output"] == "tanh" else nn.Sigmoid(),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, 1, 28, 28)


class Discriminator(nn.Module):
    """784 → hidden… → 1 logit (the sigmoid lives in the BCE-with-logits loss)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        n_in = IMAGE_PIXELS
        for n_out in config["hidden"]:
            layers += [Linear(n_in, n_out), activation(config["activation"])]
            if config["dropout"] > 0:
                layers.append(Dropout(config["dropout"]))
            n_in = n_out
        layers.append(Linear(n_in, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def sample_latent(
    n: int, size: int, kind: str, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """n latent vectors: standard normal, or uniform in [-1, 1]."""
    if kind == "normal":
        return torch.randn(n, size, generator=generator).to(device)
    return (torch.rand(n, size, generator=generator) * 2 - 1).to(device)


def to_generator_range(images: torch.Tensor, output: str) -> torch.Tensor:
    """[0, 1] images → the generator's output range ([-1, 1] for tanh)."""
    return images.mul(2).sub_(1) if output == "tanh" else images


def to_unit_range(images: torch.Tensor, output: str) -> torch.Tensor:
    """Generator output → [0, 1] images."""
    return (images + 1) / 2 if output == "tanh" else images


@dataclass
class StepStats:
    """One D or G step: its loss and the mean D(x) / D(G(z)) probabilities it saw."""

    loss: float
    d_real: float = math.nan
    d_fake: float = math.nan


def train_discriminator(
    D: nn.Module, opt: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor
) -> StepStats:
    """One D step: real images labelled 1, detached fakes labelled 0, BCE on logits summed
    over the two halves as the labs do (loss = BCE(real) + BCE(fake)). Both halves go through
    D in one batch: the same loss and gradients as two passes, at half the per-op overhead."""
    opt.zero_grad(set_to_none=True)
    n = len(real)
    logits = D(torch.cat([real, fake.detach()]))
    targets = torch.cat([logits.new_ones(n), logits.new_zeros(len(fake))])
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / n
    loss.backward()
    opt.step()
    probs = logits.detach().sigmoid()
    return StepStats(loss.item(), probs[:n].mean().item(), probs[n:].mean().item())


def train_generator(D: nn.Module, opt: torch.optim.Optimizer, fake: torch.Tensor) -> StepStats:
    """One G step: the fakes (still attached to G's graph) scored by D as if they were real.
    D's weights are frozen meanwhile, so backward skips the gradients only D would need."""
    opt.zero_grad(set_to_none=True)
    D.requires_grad_(False)
    try:
        logits = D(fake)
        loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        loss.backward()
    finally:
        D.requires_grad_(True)
    opt.step()
    return StepStats(loss.item(), d_fake=logits.detach().sigmoid().mean().item())


def ema_with_warmup(decay: float) -> Callable[[list, list, torch.Tensor], None]:
    """Exponential moving average whose decay ramps up as min(decay, (1 + n) / (10 + n)) over
    the n updates so far, so the average forgets the random initial weights within a few
    hundred steps instead of thousands (a constant 0.999 still weighs them 75% after 290)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        if not torch.is_floating_point(averaged[0]):  # e.g. BatchNorm's step counter
            torch._foreach_copy_(averaged, current)
            return
        steps = int(n)
        d = min(decay, (1 + steps) / (10 + steps))
        torch._foreach_lerp_(averaged, current, 1 - d)

    return update


def diversity(images: torch.Tensor, max_n: int = 500) -> float:
    """Mean pairwise Euclidean distance between images (in [0, 1] pixels), from one matrix
    product in float64 (faster than torch.pdist: 7 ms against 15 ms for 500 images)."""
    n = min(len(images), max_n)
    if n < 2:
        return 0.0
    flat = images[:n].reshape(n, -1).double()
    norms = flat.square().sum(1)
    squared = norms[:, None] + norms[None, :] - 2 * flat @ flat.t()
    squared[squared < 1e-9] = 0  # rounding error of the product: identical images are 0 apart
    distances = squared.fill_diagonal_(0).sqrt_()
    return (distances.sum() / (n * (n - 1))).item()


@dataclass
class GANResult:
    """Trained networks, per-log-point history, fixed-noise snapshots and the collapse check."""

    generator: nn.Module
    discriminator: nn.Module
    history: list[dict[str, float]]
    snapshots: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    diversity_ratio: float = math.nan
    collapsed: bool = False


@dataclass
class _Meter:
    d_loss: list[float] = field(default_factory=list)
    g_loss: list[float] = field(default_factory=list)
    d_real: list[float] = field(default_factory=list)
    d_fake: list[float] = field(default_factory=list)

    def row(self) -> dict[str, float]:
        def mean(values: list[float]) -> float:
            return sum(values) / len(values) if values else math.nan

        return {"d_loss": mean(self.d_loss), "g_loss": mean(self.g_loss),
                "d_real": mean(self.d_real), "d_fake": mean(self.d_fake)}  # fmt: skip


def fit_gan(
    cfg: Any,
    real_images: torch.Tensor,
    seed: int,
    device: torch.device,
    on_log: Callable[[dict[str, float]], None] = lambda row: None,
    on_snapshot: Callable[[int, nn.Module, nn.Module], None] = lambda step, g, saved: None,
) -> GANResult:
    """Train G against D on `real_images` ([0, 1], N×1×28×28) with the schedule in cfg.

    schedule 'epochs': every batch of a shuffled pass gets one D step then one G step on the
    same fakes (lab 5, the GAN notebook). schedule 'rounds': each round makes d_steps D steps
    on random real batches, then g_steps G steps (lab 4). The saved generator is an
    exponential moving average of G's weights when cfg.ema > 0. `on_log` gets a history row
    every epoch / round; `on_snapshot` gets (G step, G, the generator that would be saved)
    at each of the cfg.snapshots fixed-noise snapshots.
    """
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    G = Generator(cfg.generator_config()).to(device)
    D = Discriminator(cfg.discriminator.model_dump()).to(device)
    opt_g, opt_d = make_optimizer(cfg.optimizer_g, G), make_optimizer(cfg.optimizer_d, D)
    ema = (
        AveragedModel(G, multi_avg_fn=ema_with_warmup(cfg.ema), use_buffers=True)
        if cfg.ema > 0
        else None
    )
    real = to_generator_range(real_images, cfg.generator.output).to(device)
    n = len(real)
    batch = min(cfg.batch_size, n)
    fixed = sample_latent(FIXED_NOISE, cfg.latent_size, cfg.latent, rng, device)
    if cfg.schedule == "epochs":
        total_g_steps = cfg.epochs * (n // batch)
        log_every = max(n // batch, 1)
    else:
        total_g_steps = cfg.rounds * cfg.g_steps
        log_every = cfg.g_steps
    snapshot_steps = {round(total_g_steps * (i + 1) / cfg.snapshots) for i in range(cfg.snapshots)}
    result = GANResult(G, D, [])
    meter, g_step, start = _Meter(), 0, time.perf_counter()

    def check(stats: StepStats, which: str) -> None:
        if not math.isfinite(stats.loss):
            raise GANDiverged(
                f"GAN {which} loss became {stats.loss} at generator step {g_step} "
                f"(gan.optimizer_d.lr={cfg.optimizer_d.lr}, gan.optimizer_g.lr={cfg.optimizer_g.lr}): "
                "lower the learning rates"
            )

    def after_g_step(stats: StepStats) -> None:
        nonlocal meter
        check(stats, "generator")
        meter.g_loss.append(stats.loss)
        if ema is not None:
            ema.update_parameters(G)
        if g_step in snapshot_steps:
            saved = ema.module if ema is not None else G
            result.snapshots.append((g_step, sample_images(saved, fixed, cfg.generator.output)))
            on_snapshot(g_step, G, saved)
        if g_step % log_every == 0 or g_step == total_g_steps:
            row = {"step": g_step, **meter.row(), "seconds": time.perf_counter() - start}
            result.history.append(row)
            on_log(row)
            meter = _Meter()

    def d_step(real_batch: torch.Tensor, fake: torch.Tensor) -> None:
        stats = train_discriminator(D, opt_d, real_batch, fake)
        check(stats, "discriminator")
        meter.d_loss.append(stats.loss)
        meter.d_real.append(stats.d_real)
        meter.d_fake.append(stats.d_fake)

    progress = tqdm(total=total_g_steps, desc="train_gan", unit="G step", disable=None)
    G.train()
    D.train()
    while g_step < total_g_steps:
        if cfg.schedule == "epochs":
            order = torch.randperm(n, generator=rng).to(device)
            for i in range(n // batch):
                fake = G(sample_latent(batch, cfg.latent_size, cfg.latent, rng, device))
                d_step(real.index_select(0, order[i * batch : (i + 1) * batch]), fake)
                stats = train_generator(D, opt_g, fake)
                g_step += 1
                progress.update()
                after_g_step(stats)
                if g_step >= total_g_steps:
                    break
        else:
            for _ in range(cfg.d_steps):
                with torch.no_grad():
                    fake = G(sample_latent(batch, cfg.latent_size, cfg.latent, rng, device))
                idx = torch.randint(n, (batch,), generator=rng).to(device)
                d_step(real.index_select(0, idx), fake)
            for _ in range(cfg.g_steps):
                fake = G(sample_latent(batch, cfg.latent_size, cfg.latent, rng, device))
                stats = train_generator(D, opt_g, fake)
                g_step += 1
                progress.update()
                after_g_step(stats)
    progress.close()
    if ema is not None:
        result.generator = ema.module
    final = sample_images(result.generator, fixed, cfg.generator.output)
    result.diversity_ratio, result.collapsed = collapse_check(final, real_images)
    return result


def collapse_check(samples: torch.Tensor, real: torch.Tensor) -> tuple[float, bool]:
    """(diversity of samples / diversity of real images, collapsed?), warning when collapsed."""
    ratio = diversity(samples) / max(diversity(real), 1e-12)
    collapsed = ratio < COLLAPSE_RATIO
    if collapsed:
        warnings.warn(
            f"the generator looks collapsed: its fixed-noise samples are {ratio:.0%} as diverse "
            f"as real images (below {COLLAPSE_RATIO:.0%}); try a lower learning rate, dropout "
            "in G, or another seed",
            stacklevel=2,
        )
    return ratio, collapsed


@torch.inference_mode()
def sample_images(G: nn.Module, z: torch.Tensor, output: str) -> torch.Tensor:
    """Generator samples for latent batch z, in eval mode, as [0, 1] images on the CPU."""
    was_training = G.training
    G.eval()
    images = to_unit_range(G(z), output).clamp(0, 1).cpu()
    G.train(was_training)
    return images


def generate(
    G: nn.Module, n: int, cfg: Any, seed: int, device: torch.device, batch: int = 2000
) -> torch.Tensor:
    """n fresh samples ([0, 1], N×1×28×28) from a seeded latent draw."""
    rng = torch.Generator().manual_seed(seed)
    G = G.to(device)
    chunks = [
        sample_images(
            G,
            sample_latent(min(batch, n - i), cfg["latent_size"], cfg["latent"], rng, device),
            cfg["output"],
        )
        for i in range(0, n, batch)
    ]
    return torch.cat(chunks)
