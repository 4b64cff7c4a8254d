"""GAN training: one D step, one G step, and one flat loop over a schedule of them (labs 4, 5)."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from digitlab.errors import DigitlabError
from digitlab.inference import requested_digits, sample_images, sample_latent
from digitlab.models import Discriminator, Generator
from digitlab.optim import make_optimizer
from digitlab.params import GANParams

FIXED_NOISE = 100  # fixed-noise samples drawn at every snapshot: a 10×10 grid
COLLAPSE_RATIO = 0.25  # fixed-noise diversity below this share of the real data's: collapsed


class GANDiverged(DigitlabError):
    """A GAN loss became NaN or infinite."""


def to_generator_range(images: torch.Tensor, output: str) -> torch.Tensor:
    """[0, 1] images → the generator's output range ([-1, 1] for tanh)."""
    return images.mul(2).sub_(1) if output == "tanh" else images


@dataclass
class StepStats:
    """One D or G step: its loss and the mean D(x) / D(G(z)) probabilities it saw."""

    loss: float
    d_real: float = math.nan
    d_fake: float = math.nan


def train_discriminator(
    D: nn.Module,
    opt: torch.optim.Optimizer,
    real: torch.Tensor,
    fake: torch.Tensor,
    digits: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> StepStats:
    """One D step: real images labelled 1, detached fakes labelled 0, BCE on logits summed
    over the two halves as the labs do (loss = BCE(real) + BCE(fake)). Both halves go through
    D in one batch: the same loss and gradients as two passes, at half the per-op overhead.
    A conditional D also gets the digits of (the real images, the fakes)."""
    opt.zero_grad(set_to_none=True)
    n = len(real)
    logits = D(torch.cat([real, fake.detach()]), torch.cat(digits) if digits else None)
    targets = torch.cat([logits.new_ones(n), logits.new_zeros(len(fake))])
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / n
    loss.backward()
    opt.step()
    probs = logits.detach().sigmoid()
    return StepStats(loss.item(), probs[:n].mean().item(), probs[n:].mean().item())


def train_generator(
    D: nn.Module,
    opt: torch.optim.Optimizer,
    fake: torch.Tensor,
    fake_digits: torch.Tensor | None = None,
) -> StepStats:
    """One G step: the fakes (still attached to G's graph, of the digits `fake_digits` for a
    conditional GAN) scored by D as if they were real. D's weights are frozen meanwhile, so
    backward skips the gradients only D would need."""
    opt.zero_grad(set_to_none=True)
    D.requires_grad_(False)
    try:
        logits = D(fake, fake_digits)
        loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        loss.backward()
    finally:
        D.requires_grad_(True)
    opt.step()
    return StepStats(loss.item(), d_fake=logits.detach().sigmoid().mean().item())


def ema_with_warmup(
    decay: float,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Exponential moving average whose decay ramps up as min(decay, (1 + n) / (10 + n)) over
    the n updates so far, so the average forgets the random initial weights within a few
    hundred steps instead of thousands (a constant 0.999 still weighs them 75% after 290).
    Integer buffers (BatchNorm's step counter) take the current value."""

    def average(averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        if not averaged.is_floating_point():
            return current
        steps = int(n)
        return averaged.lerp(current, 1 - min(decay, (1 + steps) / (10 + steps)))

    return average


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


@dataclass(frozen=True)
class Step:
    """One step of a schedule: a D step on the real images `real` (indices; None: no D step),
    then a G step when `train_g`. The fakes of a step are shared by its D and G steps."""

    real: torch.Tensor | None
    train_g: bool


def schedule(settings: GANParams, n_real: int, rng: torch.Generator) -> Iterator[Step]:
    """'epochs': every batch of a shuffled pass is one D step and one G step (lab 5, the GAN
    notebook). 'rounds': each round makes d_steps D steps on random real batches, then
    g_steps G steps (lab 4)."""
    batch = min(settings.batch_size, n_real)
    if settings.schedule == "epochs":
        for _ in range(settings.epochs):
            order = torch.randperm(n_real, generator=rng)
            for i in range(n_real // batch):
                yield Step(order[i * batch : (i + 1) * batch], train_g=True)
    else:
        for _ in range(settings.rounds):
            for _ in range(settings.d_steps):
                yield Step(torch.randint(n_real, (batch,), generator=rng), train_g=False)
            for _ in range(settings.g_steps):
                yield Step(None, train_g=True)


def total_g_steps(settings: GANParams, n_real: int) -> int:
    """How many G steps the schedule makes."""
    if settings.schedule == "epochs":
        return settings.epochs * (n_real // min(settings.batch_size, n_real))
    return settings.rounds * settings.g_steps


@dataclass
class GANResult:
    """Trained networks, per-log-point history, fixed-noise snapshots and the collapse check."""

    generator: Generator
    discriminator: Discriminator
    history: list[dict[str, float]]
    snapshots: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    diversity_ratio: float = math.nan
    collapsed: bool = False


def _check_finite(stats: StepStats, network: str, g_step: int, settings: GANParams) -> None:
    if not math.isfinite(stats.loss):
        raise GANDiverged(
            f"GAN {network} loss became {stats.loss} at generator step {g_step} "
            f"(gan.optimizer_d.lr={settings.optimizer_d.lr}, "
            f"gan.optimizer_g.lr={settings.optimizer_g.lr}): lower the learning rates"
        )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def fit_gan(
    settings: GANParams,
    real_images: torch.Tensor,
    seed: int,
    device: torch.device,
    labels: torch.Tensor | None = None,
    on_log: Callable[[dict[str, float]], None] = lambda row: None,
    on_snapshot: Callable[[int, Generator], None] = lambda g_step, saved: None,
) -> GANResult:
    """Train G against D on `real_images` ([0, 1], N×1×28×28) following `schedule(settings)`;
    a conditional GAN (settings.conditional) also takes their digits, `labels`, and asks G
    for digits drawn evenly from those present.

    The saved generator is an exponential moving average of G's weights when settings.ema > 0.
    `on_log` gets a history row every epoch / round; `on_snapshot` gets (G step, the generator
    that would be saved) at each of the settings.snapshots fixed-noise snapshots.
    """
    if settings.conditional and (labels is None or len(labels) != len(real_images)):
        raise ValueError("a conditional GAN trains on images with their labels")
    real_digits = labels.to(device) if settings.conditional and labels is not None else None
    present = real_digits.unique() if real_digits is not None else None  # G is asked for these
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    G = Generator(settings.generator_config()).to(device)
    channels = list(settings.channels) if settings.arch == "conv" else None
    D = Discriminator(settings.discriminator, settings.conditional, channels).to(device)
    opt_g = make_optimizer(settings.optimizer_g, G.parameters())
    opt_d = make_optimizer(settings.optimizer_d, D.parameters())
    ema = None
    if settings.ema > 0:
        ema = AveragedModel(G, avg_fn=ema_with_warmup(settings.ema), use_buffers=True)
    saved: Generator = ema.module if ema is not None else G  # type: ignore[assignment]
    real = to_generator_range(real_images, G.config.output).to(device)
    batch = min(settings.batch_size, len(real))
    fixed = sample_latent(FIXED_NOISE, settings.latent_size, settings.latent, rng, device)
    # the fixed-noise samples' digits: equal blocks, one grid row per digit for all ten
    fixed_labels = requested_digits(FIXED_NOISE, present.tolist()) if present is not None else None
    total = total_g_steps(settings, len(real))
    log_every = len(real) // batch if settings.schedule == "epochs" else settings.g_steps
    snapshot_at = {round(total * (i + 1) / settings.snapshots) for i in range(settings.snapshots)}
    result = GANResult(saved, D, [])
    losses: dict[str, list[float]] = {"d_loss": [], "g_loss": [], "d_real": [], "d_fake": []}
    g_step, start = 0, time.perf_counter()
    progress = tqdm(total=total, desc="train_gan", unit="G step", disable=None)
    G.train()
    D.train()
    for step in schedule(settings, len(real), rng):
        z = sample_latent(batch, settings.latent_size, settings.latent, rng, device)
        fake_digits = None
        if present is not None:
            fake_digits = present[torch.randint(len(present), (batch,), generator=rng).to(device)]
        with torch.set_grad_enabled(step.train_g):  # a D-only step needs no graph through G
            fake = G(z, fake_digits)

        # (1) Update D: real images → 1, fakes → 0
        if step.real is not None:
            idx = step.real.to(device)
            digits = (real_digits[idx], fake_digits) if real_digits is not None else None
            d = train_discriminator(D, opt_d, real[idx], fake, digits)
            _check_finite(d, "discriminator", g_step, settings)
            losses["d_loss"].append(d.loss)
            losses["d_real"].append(d.d_real)
            losses["d_fake"].append(d.d_fake)
        if not step.train_g:
            continue

        # (2) Update G: fakes scored by D as if they were real
        g = train_generator(D, opt_g, fake, fake_digits)
        g_step += 1
        progress.update()
        _check_finite(g, "generator", g_step, settings)
        losses["g_loss"].append(g.loss)
        if ema is not None:
            ema.update_parameters(G)
        if g_step in snapshot_at:
            result.snapshots.append((g_step, sample_images(saved, fixed, fixed_labels)))
            on_snapshot(g_step, saved)
        if g_step % log_every == 0 or g_step == total:
            means = {k: _mean(v) for k, v in losses.items()}
            row = {"step": g_step, **means, "seconds": time.perf_counter() - start}
            result.history.append(row)
            on_log(row)
            losses = {k: [] for k in losses}
    progress.close()
    final = sample_images(saved, fixed, fixed_labels)
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
