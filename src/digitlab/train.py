"""Classifier training: batches cut from in-memory tensors, seeded, best-on-validation weights."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from digitlab.data import Split
from digitlab.errors import DigitlabError
from digitlab.inference import answers, predict_logits
from digitlab.models import channels_last, nhwc
from digitlab.optim import make_optimizer
from digitlab.params import AugmentParams, ClassifierArchitecture, ClassifierParams


class TrainingDiverged(DigitlabError):
    """The loss became NaN or infinite."""


def classifier_loss(
    logits: torch.Tensor, labels: torch.Tensor, arch: ClassifierArchitecture
) -> torch.Tensor:
    """ce: softmax cross-entropy; bce: ten sigmoid detectors vs one-hot; mse: sigmoid vs one-hot,
    or, for a regression head (one output), the output vs the digit's value."""
    if arch.head == "regression":
        return F.mse_loss(logits.squeeze(1), labels.to(logits.dtype))
    if arch.loss == "ce":
        return F.cross_entropy(logits, labels)
    target = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    if arch.loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.mse_loss(torch.sigmoid(logits), target)


def loss_and_accuracy(
    model: nn.Module, split: Split, arch: ClassifierArchitecture, device: torch.device
) -> tuple[float, float]:
    """Mean loss and multiclass accuracy of the model on a split."""
    logits = predict_logits(model, split.images, device)
    loss = classifier_loss(logits, split.labels, arch).item()
    accuracy = (answers(logits, arch.head) == split.labels).double().mean().item()
    return loss, accuracy


def random_affine(
    images: torch.Tensor, augment: AugmentParams, generator: torch.Generator
) -> torch.Tensor:
    """Each image turned by its own random angle (±augment.rotate degrees), scaled (±augment.scale)
    and moved (±augment.shift pixels in x and in y) about its centre, by one affine resampling
    (bilinear, zeros outside: background)."""
    n, _, height, width = images.shape
    where = generator.device
    angle = (torch.rand(n, generator=generator, device=where) * 2 - 1) * math.radians(
        augment.rotate
    )
    zoom = 1 + (torch.rand(n, generator=generator, device=where) * 2 - 1) * augment.scale
    # affine_grid's coordinates run from -1 to 1 across the image: one pixel is 2 / size
    move = (torch.rand(n, 2, generator=generator, device=where) * 2 - 1) * augment.shift
    move = move * torch.tensor([2 / width, 2 / height], device=where)
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, move[:, 0]], 1), torch.stack([sin, cos, move[:, 1]], 1)], 1
    ).to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


def make_scheduler(
    cfg: ClassifierParams, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """classifier.scheduler: none, or onecycle (torch's OneCycleLR over every step, without
    its momentum cycling: betas / momentum stay as params.yaml sets them)."""
    if cfg.scheduler != "onecycle":
        return None
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.optimizer.lr, total_steps=total_steps, cycle_momentum=False
    )


@dataclass
class Epoch:
    """One pass of training: each step's loss and correct answers, on the device (read once,
    at its end), and each step's batch size."""

    losses: list[torch.Tensor]
    correct: list[torch.Tensor]
    sizes: list[int]

    def summary(self, epoch: int, cfg: ClassifierParams) -> tuple[float, float]:
        """(mean training loss, training accuracy); TrainingDiverged names the first step
        whose loss was not finite."""
        losses = torch.stack(self.losses).tolist()
        for step, value in enumerate(losses, 1):
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"classifier loss became {value} at epoch {epoch}, step {step} "
                    f"(classifier.optimizer.lr={cfg.optimizer.lr}): lower the learning rate"
                )
        n = sum(self.sizes)
        loss_sum = 0.0
        for value, size in zip(losses, self.sizes, strict=True):
            loss_sum += value * size
        return loss_sum / n, int(torch.stack(self.correct).sum()) / n


@dataclass
class Optimization:
    """How training steps: the optimizer, the learning-rate schedule, the batch size, and the
    random stream that orders and augments the batches."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    batch: int
    generator: torch.Generator

    @classmethod
    def build(
        cls, cfg: ClassifierParams, model: nn.Module, n: int, seed: int, device: torch.device
    ) -> Optimization:
        generator = torch.Generator(device=device).manual_seed(seed)  # drawn on the device
        batch = n if cfg.batch_size == 0 else min(cfg.batch_size, n)
        optimizer = make_optimizer(cfg.optimizer, model.parameters())
        scheduler = make_scheduler(cfg, optimizer, cfg.epochs * math.ceil(n / batch))
        return cls(optimizer, scheduler, batch, generator)

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()


def train_epoch(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    cfg: ClassifierParams,
    opt: Optimization,
    on_step: Callable[[int], None],
) -> Epoch:
    """One pass over the training tensors in seeded random batches cut in memory (no
    DataLoader), each augmented when cfg.augment is on; `on_step(step)` after each step."""
    images, labels = data
    model.train()
    order = torch.randperm(len(labels), generator=opt.generator, device=opt.generator.device)
    epoch = Epoch([], [], [])
    for step, idx in enumerate(order.split(opt.batch), 1):
        x, y = images.index_select(0, idx), labels.index_select(0, idx)  # 3× faster than [idx]
        if cfg.augment.active:
            x = random_affine(x, cfg.augment, opt.generator)
        logits = model(nhwc(x))
        loss = classifier_loss(logits, y, cfg)
        opt.step(loss)
        on_step(step)
        epoch.losses.append(loss.detach())
        epoch.correct.append((answers(logits.detach(), cfg.head) == y).sum())
        epoch.sizes.append(len(y))
    return epoch


@dataclass
class TrainResult:
    """The best-on-validation weights and one history row per epoch."""

    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    history: list[dict[str, float]]

    def record(self, row: dict[str, float], model: nn.Module) -> None:
        """Add an epoch's row; keep the model's weights (copied off the device) when they did
        best so far on validation: the highest accuracy, then the lowest loss."""
        self.history.append(row)
        best = max(self.history, key=lambda r: (r["val_acc"], -r["val_loss"]))
        if best is row:
            self.best_epoch = int(row["epoch"])
            self.state_dict = copy.deepcopy(
                {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            )


def fit_classifier(
    model: nn.Module,
    train: Split,
    val: Split,
    cfg: ClassifierParams,
    seed: int,
    device: torch.device,
    on_epoch: Callable[[dict[str, float]], None] = lambda row: None,
    on_step: Callable[[int, int], None] = lambda epoch, step: None,
) -> TrainResult:
    """Train `model` for cfg.epochs epochs; keep the weights with the best validation accuracy.

    batch_size 0 makes one step on the whole training set per epoch, as the labs' loop does.
    `on_step(epoch, step)` runs after every optimizer step, `on_epoch(row)` after every epoch.
    Raises TrainingDiverged, naming the epoch, step and learning rate, on a NaN/inf loss.
    """
    channels_last(model.to(device))
    data = train.images.to(device), train.labels.to(device)  # moved once; batches cut there
    opt = Optimization.build(cfg, model, len(train), seed, device)
    result = TrainResult({}, 0, [])
    for epoch in tqdm(
        range(1, cfg.epochs + 1), desc="train_classifier", unit="epoch", disable=None
    ):
        start = time.perf_counter()
        done = train_epoch(model, data, cfg, opt, lambda step, epoch=epoch: on_step(epoch, step))
        train_loss, train_acc = done.summary(epoch, cfg)
        val_loss, val_acc = loss_and_accuracy(model, val, cfg, device)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": opt.optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - start,
        }
        result.record(row, model)
        on_epoch(row)
    return result
