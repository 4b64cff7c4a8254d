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
    diversity,
    frechet_distance,
    gan_quality,
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
    assert diversity(images) == pytest.approx((5 + 4 + 3) / 3)
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
    real = {"test": test, "train": train}
    headline, details = gan_quality(val.images, None, probs, real_probs, flat, real, [3], 0.9)
    metrics = {**headline, **details}
    assert metrics["decent_rate"] == 1.0 and metrics["digits_present"] == 1
    assert 0.5 < metrics["frechet_ratio"] < 3.0  # 511 vs 5,620 images: small-sample bias
    assert 0.9 < metrics["diversity_ratio"] < 1.1
    assert metrics["memorised"] < 0.15
    assert metrics["classifier_score"] == pytest.approx(1.0) == metrics["classifier_score_real"]
    copies = train.images[:500]
    _, copied = gan_quality(copies, None, probs[:1].repeat(500, 1), real_probs,
                         {**flat, "samples": copies.flatten(1)}, real, [3], threshold=0.9)  # fmt: skip
    assert copied["memorised"] == 1.0


def test_real_images_of_every_digit_pass_as_a_perfect_conditional_generator(
    prepared: tuple[Path, dict],
) -> None:
    """Real held-out images of all ten digits, each 'asked for' as its own digit: decent for
    every digit, near each digit's floor; asked for as the next digit: never decent."""
    out, _ = prepared
    real = {"test": load_split(out, "test"), "train": load_split(out, "train")}
    val = load_split(out, "val")
    means = torch.stack(
        [real["train"].images[real["train"].labels == d].mean(0) for d in range(10)]
    )
    judge = lambda images: torch.softmax(-torch.cdist(images.flatten(1), means.flatten(1)), 1)  # noqa: E731
    features = {name: images.flatten(1)[:, ::8] for name, images in
                (("samples", val.images), ("test", real["test"].images), ("train", real["train"].images))}  # fmt: skip
    probs = torch.nn.functional.one_hot(val.labels, 10).float()
    headline, details = gan_quality(val.images, val.labels, probs, judge(real["test"].images),
                                    features, real, list(range(10)), threshold=0.9)  # fmt: skip
    metrics = {**headline, **details}
    assert metrics["decent_rate"] == 1.0 == metrics["decent_rate_worst"]
    per_digit = metrics["per_digit"]
    assert sorted(per_digit) == [str(d) for d in range(10)]
    shares = torch.tensor([row["share"] for row in per_digit.values()], dtype=torch.float64)
    assert torch.allclose(shares, val.labels.bincount().double() / len(val))
    assert all(0.5 < row["frechet_ratio"] < 3.0 for row in per_digit.values())  # ~500 vs ~5,500
    assert 0.5 < metrics["frechet_ratio_median"] < 3.0
    assert metrics["memorised"] < 0.15
    wrong, _ = gan_quality(val.images, (val.labels + 1) % 10, probs, probs, features, real,
                        list(range(10)), threshold=0.9)  # fmt: skip
    assert wrong["decent_rate"] == 0.0 == wrong["decent_rate_worst"]
    assert wrong["frechet_ratio_median"] > 3 * metrics["frechet_ratio_median"]
