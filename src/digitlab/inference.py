"""Using trained models: batched predictions and features of the classifier, samples of the
generator. No training code here, so evaluation stages do not rerun when training changes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from digitlab.data import Split
from digitlab.errors import DigitlabError
from digitlab.models import Generator, nhwc
from digitlab.params import N_CLASSES, ClassifierArchitecture


def eval_batch(device: torch.device) -> int:
    """Images per forward pass when predicting: on the CPU a small batch keeps a conv layer's
    activations in cache (see docs/performance.md); a GPU wants larger batches."""
    return 256 if device.type == "cpu" else 2048


@torch.inference_mode()
def predict_logits(
    model: nn.Module, images: torch.Tensor, device: torch.device, features: bool = False
) -> torch.Tensor:
    """Logits (or penultimate-layer features) for all images, in eval mode, in batches of
    `eval_batch(device)`; returned on the CPU."""
    model.eval()
    fn = model.features if features else model
    size = eval_batch(device)
    out = [fn(nhwc(images[i : i + size].to(device))).cpu() for i in range(0, len(images), size)]
    return torch.cat(out)


def answers(outputs: torch.Tensor, head: str = "classes") -> torch.Tensor:
    """The digit each row of outputs names: the arg-max of ten outputs, or a regression head's
    single value rounded and clamped to 0-9."""
    if head == "regression":
        return outputs.squeeze(1).round().clamp(0, N_CLASSES - 1).long()
    return outputs.argmax(1)


def probabilities(logits: torch.Tensor, arch: ClassifierArchitecture) -> torch.Tensor:
    """Per-digit probabilities: softmax for ce, each detector's sigmoid for bce and mse; a
    regression head's answer as a certain one-hot row (it gives no probabilities)."""
    if arch.head == "regression":
        return F.one_hot(answers(logits, arch.head), N_CLASSES).float()
    return logits.softmax(dim=1) if arch.loss == "ce" else torch.sigmoid(logits)


def predict_probabilities(
    model: nn.Module, arch: ClassifierArchitecture, images: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """The classifier's per-digit probabilities for all images (on the CPU)."""
    return probabilities(predict_logits(model, images, device), arch)


def judge(
    model: nn.Module,
    arch: ClassifierArchitecture,
    samples: torch.Tensor,
    real: dict[str, Split],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """What evaluate_gan's metrics read off the classifier: its probabilities for the samples
    and for the real test images, and the penultimate features of samples, real test and real
    training images."""
    images = {"samples": samples, "test": real["test"].images, "train": real["train"].images}
    probs, real_probs = (
        predict_probabilities(model, arch, images[k], device) for k in ("samples", "test")
    )
    features = {k: predict_logits(model, v, device, features=True) for k, v in images.items()}
    return probs, real_probs, features


def sample_latent(
    n: int, size: int, kind: str, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """n latent vectors: standard normal, or uniform in [-1, 1]; drawn where `generator` lives
    (the device itself, in training: no copy per step), then on `device`."""
    where = generator.device
    if kind == "normal":
        return torch.randn(n, size, generator=generator, device=where).to(device)
    return (torch.rand(n, size, generator=generator, device=where) * 2 - 1).to(device)


def to_unit_range(images: torch.Tensor, output: str) -> torch.Tensor:
    """Generator output → [0, 1] images."""
    return (images + 1) / 2 if output == "tanh" else images


def requested_digits(n: int, digits: list[int]) -> torch.Tensor:
    """n labels, an equal share (± 1) for each digit asked for, in blocks: digits[0] first."""
    bad = [d for d in digits if not (type(d) is int and 0 <= d < N_CLASSES)]
    if bad or not digits:
        raise DigitlabError(f"a conditional generator makes digits 0-9, not {bad or digits}")
    return torch.tensor(digits)[torch.arange(n) * len(digits) // n]


@torch.inference_mode()
def sample_images(
    G: Generator, z: torch.Tensor, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Generator samples for latent batch z (and digits `labels` for a conditional one), in
    eval mode, as [0, 1] images on the CPU."""
    was_training = G.training
    G.eval()
    labels = labels.to(z.device) if labels is not None else None
    images = to_unit_range(G(z, labels), G.config.output).clamp(0, 1).cpu()
    G.train(was_training)
    return images


def generate(
    G: Generator,
    n: int,
    seed: int,
    device: torch.device,
    labels: torch.Tensor | None = None,
    batch: int = 2000,
) -> torch.Tensor:
    """n fresh samples ([0, 1], N×1×28×28) from a seeded latent draw; a conditional
    generator makes the digits `labels` (see requested_digits)."""
    if G.config.conditional and (labels is None or len(labels) != n):
        raise DigitlabError("a conditional generator needs one requested digit per sample")
    rng = torch.Generator().manual_seed(seed)
    G = G.to(device)
    latent = G.config.latent_size, G.config.latent
    chunks = [
        sample_images(
            G,
            sample_latent(min(batch, n - i), *latent, rng, device),
            labels[i : i + batch] if G.config.conditional else None,
        )
        for i in range(0, n, batch)
    ]
    return torch.cat(chunks)
