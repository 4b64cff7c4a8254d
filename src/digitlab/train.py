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
from digitlab.params import AugmentParams, ClassifierParams


class TrainingDiverged(DigitlabError):
    """The loss became NaN or infinite."""


def classifier_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """ce: softmax cross-entropy; bce: ten sigmoid detectors vs one-hot; mse: sigmoid vs one-hot,
    or, for a regression head (one output), the output vs the digit's value."""
    if logits.shape[1] == 1:
        return F.mse_loss(logits.squeeze(1), labels.to(logits.dtype))
    if kind == "ce":
        return F.cross_entropy(logits, labels)
    target = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.mse_loss(torch.sigmoid(logits), target)


def loss_and_accuracy(
    model: nn.Module, split: Split, kind: str, device: torch.device
) -> tuple[float, float]:
    """Mean loss and multiclass accuracy of the model on a split."""
    logits = predict_logits(model, split.images, device)
    loss = classifier_loss(logits, split.labels, kind).item()
    accuracy = (answers(logits) == split.labels).double().mean().item()
    return loss, accuracy


def random_affine(
    images: torch.Tensor, augment: AugmentParams, generator: torch.Generator
) -> torch.Tensor:
    """Each image turned by its own random angle (±augment.rotate degrees), scaled (±augment.scale)
    and moved (±augment.shift pixels in x and in y) about its centre, by one affine resampling
    (bilinear, zeros outside: background)."""
    n, _, height, width = images.shape
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(augment.rotate)
    zoom = 1 + (torch.rand(n, generator=generator) * 2 - 1) * augment.scale
    # affine_grid's coordinates run from -1 to 1 across the image: one pixel is 2 / size
    move = (torch.rand(n, 2, generator=generator) * 2 - 1) * augment.shift
    move = move * torch.tensor([2 / width, 2 / height])
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, move[:, 0]], 1), torch.stack([sin, cos, move[:, 1]], 1)], 1
    ).to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


@dataclass
class TrainResult:
    """The best-on-validation weights and one history row per epoch."""

    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    history: list[dict[str, float]]


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

    Batches are cut from the tensors already in memory (no DataLoader, no per-sample work).
    batch_size 0 makes one step on the whole training set per epoch, as the labs' loop does.
    `on_step(epoch, step)` runs after every optimizer step, `on_epoch(row)` after every epoch.
    Raises TrainingDiverged, naming the epoch, step and learning rate, on a NaN/inf loss.
    """
    generator = torch.Generator().manual_seed(seed)
    channels_last(model.to(device))
    images, labels = train.images.to(device), train.labels.to(device)
    n = len(labels)
    batch = n if cfg.batch_size == 0 else min(cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    optimizer = make_optimizer(cfg.optimizer, model.parameters())
    scheduler = None
    if cfg.scheduler == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=cfg.optimizer.lr,
            total_steps=cfg.epochs * steps_per_epoch,
            cycle_momentum=False,  # momentum / betas stay as params.yaml sets them
        )
    best: tuple[float, float] = (-1.0, 0.0)
    result = TrainResult({}, 0, [])
    for epoch in tqdm(
        range(1, cfg.epochs + 1), desc="train_classifier", unit="epoch", disable=None
    ):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=generator).to(device)
        # Running sums as Python numbers: on the CPU, a few more tiny tensor ops per step
        # cost more than the .item() they save (thread wake-ups for each op).
        loss_sum, correct = 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * batch : (step + 1) * batch]
            x, y = images.index_select(0, idx), labels.index_select(0, idx)  # 3× faster than [idx]
            if cfg.augment.active:
                x = random_affine(x, cfg.augment, generator)
            logits = model(nhwc(x))
            loss = classifier_loss(logits, y, cfg.loss)
            value = loss.item()
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"classifier loss became {value} at epoch {epoch}, step {step + 1} "
                    f"(classifier.optimizer.lr={cfg.optimizer.lr}): lower the learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            on_step(epoch, step + 1)
            loss_sum += value * len(y)
            correct += int((answers(logits.detach()) == y).sum())
        val_loss, val_acc = loss_and_accuracy(model, val, cfg.loss, device)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / n,
            "train_acc": correct / n,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - start,
        }
        result.history.append(row)
        on_epoch(row)
        if (val_acc, -val_loss) > best:
            best = (val_acc, -val_loss)
            result.best_epoch = epoch
            result.state_dict = copy.deepcopy(
                {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            )
    return result
