"""GAN training: one D step, one G step, and one flat loop over a schedule of them (labs 4, 5)."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from digitlab.errors import DigitlabError
from digitlab.inference import requested_digits, sample_images, sample_latent
from digitlab.metrics import diversity
from digitlab.models import Discriminator, Generator, build_discriminator, build_generator
from digitlab.optim import make_optimizer
from digitlab.params import GANParams

FIXED_NOISE = 100  # fixed-noise samples drawn at every snapshot: a 10×10 grid
COLLAPSE_RATIO = 0.25  # fixed-noise diversity below this share of the real data's: collapsed
LOGGED = ("d_loss", "d_real", "d_fake", "g_loss")  # per step, averaged at each log point


class GANDiverged(DigitlabError):
    """A GAN loss became NaN or infinite."""


def to_generator_range(images: torch.Tensor, output: str) -> torch.Tensor:
    """[0, 1] images → the generator's output range ([-1, 1] for tanh)."""
    return images.mul(2).sub_(1) if output == "tanh" else images


def train_discriminator(
    D: Discriminator,
    opt: torch.optim.Optimizer,
    real: torch.Tensor,
    fake: torch.Tensor,
    digits: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One D step: real images labelled 1, detached fakes labelled 0, BCE on logits summed
    over the two halves as the labs do (loss = BCE(real) + BCE(fake)). Both halves go through
    D in one batch: the same loss and gradients as two passes, at half the per-op overhead.
    A conditional D also gets the digits of (the real images, the fakes). Returns (loss, mean
    D(x), mean D(G(z))), on the device: nothing waits for it to be read."""
    opt.zero_grad(set_to_none=True)
    n = len(real)
    logits = D(torch.cat([real, fake.detach()]), torch.cat(digits) if digits else None)
    targets = torch.cat([logits.new_ones(n), logits.new_zeros(len(fake))])
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / n
    loss.backward()
    opt.step()
    probs = logits.detach().sigmoid()
    return torch.stack([loss.detach(), probs[:n].mean(), probs[n:].mean()])


def train_generator(
    D: Discriminator,
    opt: torch.optim.Optimizer,
    fake: torch.Tensor,
    fake_digits: torch.Tensor | None = None,
) -> torch.Tensor:
    """One G step: the fakes (still attached to G's graph, of the digits `fake_digits` for a
    conditional GAN) scored by D as if they were real. D's weights are frozen meanwhile, so
    backward skips the gradients only D would need. Returns its loss, on the device."""
    opt.zero_grad(set_to_none=True)
    D.requires_grad_(False)
    try:
        logits = D(fake, fake_digits)
        loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        loss.backward()
    finally:
        D.requires_grad_(True)
    opt.step()
    return loss.detach()


def ema_weight(decay: float, updates: int) -> float:
    """How much the moving average moves towards G's current weights after `updates` earlier
    updates: 1 - min(decay, (1 + n) / (10 + n)), so it forgets the random initial weights
    within a few hundred steps instead of thousands (a constant 0.999 still weighs them 75%
    after 290)."""
    return 1 - min(decay, (1 + updates) / (10 + updates))


class WarmupEMA:
    """AveragedModel's avg_fn for an exponential moving average warming up as ema_weight();
    it counts its updates itself (step()), as reading AveragedModel's count, a tensor on the
    device, would make the host wait for the GPU at every parameter. Integer buffers
    (BatchNorm's step counter) take the current value."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.updates = 0

    def __call__(
        self, averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor
    ) -> torch.Tensor:
        if not averaged.is_floating_point():
            return current
        return averaged.lerp(current, ema_weight(self.decay, self.updates))


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
            order = torch.randperm(n_real, generator=rng, device=rng.device)
            for i in range(n_real // batch):
                yield Step(order[i * batch : (i + 1) * batch], train_g=True)
    else:
        for _ in range(settings.rounds):
            for _ in range(settings.d_steps):
                yield Step(torch.randint(n_real, (batch,), generator=rng, device=rng.device), False)
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
    diversity_ratio: float = float("nan")
    collapsed: bool = False


@dataclass
class Networks:
    """G and D with their optimizers, and the generator that is saved: G itself, or the moving
    average of its weights (settings.ema > 0)."""

    G: Generator
    D: Discriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    ema: AveragedModel | None
    ema_fn: WarmupEMA | None = None

    @classmethod
    def build(cls, settings: GANParams, device: torch.device) -> Networks:
        G = build_generator(settings.generator_config()).to(device)
        D = build_discriminator(settings.discriminator_config()).to(device)
        opt_g = make_optimizer(settings.optimizer_g, G.parameters())
        opt_d = make_optimizer(settings.optimizer_d, D.parameters())
        ema, ema_fn = None, None
        if settings.ema > 0:
            ema_fn = WarmupEMA(settings.ema)
            ema = AveragedModel(G, avg_fn=ema_fn, use_buffers=True)
        return cls(G, D, opt_g, opt_d, ema, ema_fn)

    def update_ema(self) -> None:
        """The moving average takes in G's weights after a G step."""
        if self.ema is not None and self.ema_fn is not None:
            self.ema.update_parameters(self.G)
            self.ema_fn.updates += 1

    @property
    def saved(self) -> Generator:
        return self.ema.module if self.ema is not None else self.G  # type: ignore[return-value]


@dataclass
class StepLog:
    """Each step's figures, kept on the device and read only at a log point: a history row of
    their means, or GANDiverged naming the first step whose loss was not finite."""

    settings: GANParams
    start: float = field(default_factory=time.perf_counter)
    d: list[tuple[int, torch.Tensor]] = field(
        default_factory=list
    )  # (G steps, (loss, D(x), D(G(z))))
    g: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (G step, loss)

    def row(self, g_step: int) -> dict[str, float]:
        """The means since the last log point, as a history row; then starts again."""
        d = torch.stack([v for _, v in self.d]).tolist() if self.d else []
        g = torch.stack([v for _, v in self.g]).tolist() if self.g else []
        self._check("discriminator", [s for s, _ in self.d], [v[0] for v in d])
        self._check("generator", [s for s, _ in self.g], g)
        columns = {
            "d_loss": [v[0] for v in d],
            "g_loss": g,
            "d_real": [v[1] for v in d],
            "d_fake": [v[2] for v in d],
        }
        means = {k: sum(v) / len(v) if v else float("nan") for k, v in columns.items()}
        self.d, self.g = [], []
        return {"step": g_step, **means, "seconds": time.perf_counter() - self.start}

    def _check(self, network: str, steps: list[int], losses: list[float]) -> None:
        for g_step, loss in zip(steps, losses, strict=True):
            if not math.isfinite(loss):
                lrs = self.settings.optimizer_d.lr, self.settings.optimizer_g.lr
                raise GANDiverged(
                    f"GAN {network} loss became {loss} at generator step {g_step} "
                    f"(gan.optimizer_d.lr={lrs[0]}, gan.optimizer_g.lr={lrs[1]}): lower the "
                    "learning rates"
                )


@dataclass
class _Run:
    """What the training loop reads: the networks, the real images (and digits) on the device,
    the random stream, the fixed noise, and when to snapshot and log."""

    settings: GANParams
    nets: Networks
    real: torch.Tensor
    real_digits: torch.Tensor | None  # a conditional GAN's labels of `real`
    present: torch.Tensor | None  # … and the digits it asks G for
    rng: torch.Generator
    fixed: tuple[torch.Tensor, torch.Tensor | None]  # the fixed noise (and digits)
    snapshot_at: set[int]
    log_every: int
    total: int

    @classmethod
    def start(
        cls,
        settings: GANParams,
        images: torch.Tensor,
        labels: torch.Tensor | None,
        seed: int,
        device: torch.device,
    ) -> _Run:
        if settings.conditional and (labels is None or len(labels) != len(images)):
            raise ValueError("a conditional GAN trains on images with their labels")
        real_digits = labels.to(device) if settings.conditional and labels is not None else None
        present = real_digits.unique() if real_digits is not None else None
        torch.manual_seed(seed)
        rng = torch.Generator(device=device).manual_seed(seed)  # batches drawn on the device
        nets = Networks.build(settings, device)
        real = to_generator_range(images, settings.generator.output).to(device)
        fixed = sample_latent(FIXED_NOISE, settings.latent_size, settings.latent, rng, device)
        # the fixed-noise samples' digits: equal blocks, one grid row per digit for all ten
        fixed_digits = (
            requested_digits(FIXED_NOISE, present.tolist()) if present is not None else None
        )
        total = total_g_steps(settings, len(real))
        snapshot_at = {
            round(total * (i + 1) / settings.snapshots) for i in range(settings.snapshots)
        }
        batch = min(settings.batch_size, len(real))
        log_every = len(real) // batch if settings.schedule == "epochs" else settings.g_steps
        return cls(
            settings,
            nets,
            real,
            real_digits,
            present,
            rng,
            (fixed, fixed_digits),
            snapshot_at,
            log_every,
            total,
        )

    def fakes(self, with_graph: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch of fresh fakes (and the digits G was asked for); a D-only step needs no
        graph through G."""
        s = self.settings
        batch = min(s.batch_size, len(self.real))
        z = sample_latent(batch, s.latent_size, s.latent, self.rng, self.real.device)
        digits = None
        if self.present is not None:
            pick = torch.randint(
                len(self.present), (batch,), generator=self.rng, device=self.rng.device
            )
            digits = self.present[pick.to(self.real.device)]
        with torch.set_grad_enabled(with_graph):
            return self.nets.G(z, digits), digits

    def reals(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = indices.to(self.real.device)
        return self.real[idx], self.real_digits[idx] if self.real_digits is not None else None

    def fixed_samples(self) -> torch.Tensor:
        return sample_images(self.nets.saved, *self.fixed)


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
    run = _Run.start(settings, real_images, labels, seed, device)
    nets, log, g_step = run.nets, StepLog(settings), 0
    result = GANResult(nets.saved, nets.D, [])
    progress = tqdm(total=run.total, desc="train_gan", unit="G step", disable=None)
    for step in schedule(settings, len(run.real), run.rng):
        fake, fake_digits = run.fakes(with_graph=step.train_g)

        # (1) Update D: real images → 1, fakes → 0
        if step.real is not None:
            real, real_digits = run.reals(step.real)
            digits = (real_digits, fake_digits) if real_digits is not None else None
            log.d.append((g_step, train_discriminator(nets.D, nets.opt_d, real, fake, digits)))
        if not step.train_g:
            continue

        # (2) Update G: fakes scored by D as if they were real
        g_step += 1
        log.g.append((g_step, train_generator(nets.D, nets.opt_g, fake, fake_digits)))
        progress.update()
        nets.update_ema()

        # (3) Fixed-noise snapshots, and a history row at each log point
        if g_step in run.snapshot_at:
            result.snapshots.append((g_step, run.fixed_samples()))
            on_snapshot(g_step, nets.saved)
        if g_step % run.log_every == 0 or g_step == run.total:
            result.history.append(log.row(g_step))
            on_log(result.history[-1])
    progress.close()
    result.diversity_ratio, result.collapsed = collapse_check(run.fixed_samples(), real_images)
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
