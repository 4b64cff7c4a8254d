"""What the playground answers: the classifier's probabilities for images, the generator's
samples for a digit, each judged as evaluate_gan judges (inference.py, metrics.py)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from digitlab.inference import predict_probabilities, requested_digits, sample_latent
from digitlab.metrics import decent_rate
from digitlab.params import N_CLASSES, GeneratorConfig
from digitlab.play.drawing import png
from digitlab.play.registry import Models, PlayError

CPU = torch.device("cpu")


def classify(models: Models, images: torch.Tensor) -> list[dict[str, Any]]:
    """The classifier's ten probabilities, its answer and confidence, for N×28×28 images."""
    network, architecture = models.classifier()
    probs = predict_probabilities(network, architecture, images[:, None], CPU)
    return [
        {
            "probabilities": [round(p, 6) for p in row.tolist()],
            "answer": int(row.argmax()),
            "confidence": round(float(row.max()), 6),
        }
        for row in probs
    ]


def as_output(
    images: torch.Tensor, answers: list[dict[str, Any]], fmt: str
) -> list[dict[str, Any]]:
    out = []
    for image, answer in zip(images, answers, strict=True):
        pixels = (
            {"png": png(image)}
            if fmt == "png"
            else {"image": image.squeeze(0).round(decimals=4).tolist()}
        )
        out.append({**pixels, "answer": answer["answer"], "confidence": answer["confidence"]})
    return out


def latents(G: nn.Module, n: int, seed: int) -> torch.Tensor:
    config: GeneratorConfig = G.config
    return sample_latent(
        n, config.latent_size, config.latent, torch.Generator().manual_seed(seed), CPU
    )


def digits_for(G: nn.Module, digit: int | None, n: int) -> torch.Tensor | None:
    """The digits a conditional generator is asked for: `digit`, or all ten in turn."""
    if not G.config.conditional:
        if digit is not None:
            raise PlayError(
                400,
                "digit: this generator is unconditional (it makes only what it was "
                "trained on): leave digit out, or choose a conditional version (`make any-digit` "
                "registers one)",
            )
        return None
    return (
        torch.full((n,), digit)
        if digit is not None
        else requested_digits(n, list(range(N_CLASSES)))
    )


def generate_answer(
    models: Models, images: torch.Tensor, asked: torch.Tensor | None, fmt: str, trained_for: str
) -> dict[str, Any]:
    """Samples with the classifier's answers, and the share it judges decent as evaluate_gan
    does (probability ≥ 0.9 of the digit asked for, else of the digit it was trained on)."""
    network, architecture = models.classifier()
    probs = predict_probabilities(network, architecture, images, CPU)
    answers = classify(models, images[:, 0])
    if asked is not None:
        decent = decent_rate(probs, [], 0.9, asked)
    else:
        digits = list(range(N_CLASSES)) if trained_for == "all" else [int(trained_for)]
        decent = decent_rate(probs, digits, 0.9)
    return {"images": as_output(images, answers, fmt), "decent_share": round(decent, 4)}


def trained_digit(models: Models) -> str:
    version = models.loaded.generator
    return version.tags.get("digit", "all") if version else "all"
