"""GAN quality metrics against hand-computed cases and real MNIST."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from digitlab.data import load_split
from digitlab.metrics import (
    class_histogram,
    classifier_score,
    frechet_distance,
    gan_quality,
    mean_pairwise_distance,
    nearest_distances,
)


def test_frechet_distance_of_known_gaussians() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20_000, 4, generator=gen)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([1.0, 2.0, 0.0, 0.0])
    assert frechet_distance(a, a + shift) == pytest.approx(5.0, rel=1e-6)
    # N(0, I) vs N(0, 4I) in 4 dimensions: 4 × (1 + 4 − 2·2) = 4
    b = torch.randn(20_000, 4, generator=gen) * 2
    assert frechet_distance(a, b) == pytest.approx(4.0, rel=0.05)


def test_distances_and_histogram_by_hand() -> None:
    images = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]]).view(3, 1, 1, 2)
    assert mean_pairwise_distance(images) == pytest.approx((5 + 4 + 3) / 3)
    refs = torch.tensor([[0.0, 1.0], [10.0, 10.0]]).view(2, 1, 1, 2)
    assert nearest_distances(images, refs).tolist() == pytest.approx([1.0, math.sqrt(18), 3.0])
    counts, entropy, present = class_histogram(torch.tensor([3] * 98 + [5, 7]))
    assert counts[3] == 98 and present == 3
    assert entropy == pytest.approx(-(0.98 * math.log2(0.98) + 2 * 0.01 * math.log2(0.01)))
    _, uniform_entropy, _ = class_histogram(torch.arange(10).repeat(5))
    assert uniform_entropy == pytest.approx(math.log2(10))


def test_classifier_score_by_hand() -> None:
    sure = torch.eye(10)  # each image surely one digit, all ten equally often: the maximum
    assert classifier_score(sure) == pytest.approx(10.0)
    assert classifier_score(sure[[3] * 10]) == pytest.approx(1.0)  # all the same digit
    assert classifier_score(torch.full((10, 10), 0.1)) == pytest.approx(1.0)  # never sure
    halves = torch.tensor([[0.5, 0.5] + [0.0] * 8, [0.0, 0.0, 1.0] + [0.0] * 7])
    # p(y) = (0.25, 0.25, 0.5): KL = ln 2 for the first image and ln 2 for the second
    assert classifier_score(halves) == pytest.approx(2.0)
    assert classifier_score(sure * 0.3) == pytest.approx(10.0)  # sigmoid outputs: normalized


def test_real_images_pass_as_a_perfect_generator(prepared: tuple[Path, dict]) -> None:
    """Real held-out 3s scored like samples: decent, near the floor, diverse, not memorised."""
    out, _ = prepared
    test = load_split(out, "test").of_digits([3])
    train = load_split(out, "train").of_digits([3])
    val = load_split(out, "val").of_digits([3])
    flat = {
        "samples": val.images.flatten(1),
        "test": test.images.flatten(1),
        "train": train.images.flatten(1),
    }
    probs = torch.nn.functional.one_hot(val.labels, 10).float()
    real_probs = torch.nn.functional.one_hot(test.labels, 10).float()
    metrics = gan_quality(
        val.images, probs, real_probs, flat, test.images, train.images, [3], threshold=0.9
    )
    assert metrics["decent_rate"] == 1.0 and metrics["digits_present"] == 1
    assert 0.5 < metrics["frechet_ratio"] < 3.0  # 511 vs 5,620 images: small-sample bias
    assert 0.9 < metrics["diversity_ratio"] < 1.1
    assert metrics["memorised"] < 0.15
    assert metrics["classifier_score"] == pytest.approx(1.0) == metrics["classifier_score_real"]
    copies = train.images[:500]
    copied = gan_quality(copies, probs[:1].repeat(500, 1), real_probs, {**flat, "samples": copies.flatten(1)},
                         test.images, train.images, [3], threshold=0.9)  # fmt: skip
    assert copied["memorised"] == 1.0
