"""Classifier metrics: multiclass accuracy, the detector's metrics, the confusion breakdown."""

from __future__ import annotations

import statistics

import pandas as pd
import torch

from digitlab.data import Split
from digitlab.models import N_CLASSES


def confusion_matrix(true: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """10×10 counts: row = true digit, column = predicted digit.

    (One bincount; torchmetrics gives the same numbers but costs 3 s of import per stage.)
    """
    pairs = true.long() * N_CLASSES + predicted.long()
    return torch.bincount(pairs, minlength=N_CLASSES**2).view(N_CLASSES, N_CLASSES)


def detector_metrics(confusion: torch.Tensor, digit: int) -> dict[str, float | int]:
    """Accuracy, precision, recall, F1 and TP / FP / FN / TN of "is it `digit`?".

    The detector says yes exactly when the model's answer (arg-max) is `digit`, so all of
    this is read off row and column `digit` of the confusion matrix.
    """
    total = int(confusion.sum())
    tp = int(confusion[digit, digit])
    fp = int(confusion[:, digit].sum()) - tp
    fn = int(confusion[digit, :].sum()) - tp
    tn = total - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / total,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def breakdown(confusion: torch.Tensor, digit: int) -> pd.DataFrame:
    """The labs' 18 values for `digit`: for each other digit, how many of its images were
    called `digit` (false positives), and how many images of `digit` were called it instead
    (false negatives)."""
    others = [d for d in range(N_CLASSES) if d != digit]
    return pd.DataFrame(
        {
            "digit": digit,
            "other": others,
            "false_positives": [int(confusion[o, digit]) for o in others],
            "false_negatives": [int(confusion[digit, o]) for o in others],
        }
    )


def classifier_report(
    true: torch.Tensor, probs: torch.Tensor, digits: list[int]
) -> tuple[dict, torch.Tensor, pd.DataFrame]:
    """metrics.json content, the confusion matrix and the breakdown for the chosen digit(s)."""
    predicted = probs.argmax(1)
    confusion = confusion_matrix(true, predicted)
    detectors = {str(d): detector_metrics(confusion, d) for d in digits}
    metrics = {
        "accuracy": (predicted == true).double().mean().item(),
        "n_test": len(true),
        "detector": detectors[str(digits[0])] if len(digits) == 1 else detectors,
    }
    table = pd.concat([breakdown(confusion, d) for d in digits], ignore_index=True)
    return metrics, confusion, table


def mlflow_metrics(metrics: dict) -> dict[str, float]:
    """metrics.json → MLflow names: test/accuracy, test/precision… (test/precision_3… for all)."""
    out = {"test/accuracy": metrics["accuracy"]}
    detector = metrics["detector"]
    per_digit = detector if "accuracy" not in detector else {"": detector}
    for digit, values in per_digit.items():
        suffix = f"_{digit}" if digit else ""
        for name, value in values.items():
            key = "detector_accuracy" if name == "accuracy" else name
            out[f"test/{key}{suffix}"] = float(value)
    return out


# ---------------------------------------------------------------- GAN quality


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows = samples):
    |mu_a - mu_b|² + Tr(S_a + S_b - 2 (S_a S_b)^½), in float64; the trace of the square root
    comes from the eigenvalues of S_a^½ S_b S_a^½ (symmetric, so eigvalsh is exact)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(cov_a)
    sqrt_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    middle = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return ((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * middle).item()


def mean_pairwise_distance(images: torch.Tensor, max_n: int = 1000) -> float:
    """Mean Euclidean distance between pairs of images (pixels in [0, 1])."""
    flat = images[:max_n].reshape(min(len(images), max_n), -1).double()
    return torch.pdist(flat).mean().item()


def nearest_distances(
    queries: torch.Tensor, references: torch.Tensor, chunk: int = 1000
) -> torch.Tensor:
    """For each query image, the Euclidean distance to its nearest reference image."""
    refs = references.reshape(len(references), -1)
    out = [torch.cdist(queries[i : i + chunk].reshape(-1, refs.shape[1]), refs).min(1).values
           for i in range(0, len(queries), chunk)]  # fmt: skip
    return torch.cat(out)


def class_histogram(predicted: torch.Tensor) -> tuple[list[int], float, int]:
    """Counts of predicted digits, their entropy in bits, and how many digits hold ≥ 1%."""
    counts = torch.bincount(predicted, minlength=N_CLASSES)
    share = counts.double() / counts.sum()
    entropy = -(share[share > 0] * share[share > 0].log2()).sum().item()
    return counts.tolist(), entropy, int((share >= 0.01).sum())


MEMORISATION_QUANTILE = 0.05


def decent_rate(probs: torch.Tensor, digits: list[int], threshold: float) -> float:
    """Share of samples the classifier gives the chosen digit (any digit when all ten are
    asked for) with probability ≥ threshold."""
    if len(digits) == 1:
        return (probs[:, digits[0]] >= threshold).double().mean().item()
    return (probs.max(1).values >= threshold).double().mean().item()


def classifier_score(probs: torch.Tensor) -> float:
    """The Inception Score with the classifier as the network: exp of the mean KL divergence
    between each image's p(y|x) and their marginal p(y). From 1 (every image judged alike, or
    none surely) to 10 (each image surely one digit, all ten digits equally often). Sigmoid
    outputs (bce, mse) are normalized to sum to 1 first."""
    p = probs.double() / probs.double().sum(1, keepdim=True)
    log_p = p.clamp_min(1e-12).log()
    log_marginal = p.mean(0).clamp_min(1e-12).log()
    return (p * (log_p - log_marginal)).sum(1).mean().exp().item()


def per_digit_quality(
    groups: torch.Tensor,
    probs: torch.Tensor,
    features: dict[str, torch.Tensor],
    labels: dict[str, torch.Tensor],
    digits: list[int],
    threshold: float,
) -> dict[str, dict[str, float | None]]:
    """For each digit k, the samples of group k (the digit asked for, or the digit the
    classifier sees): their share, the share given k with probability ≥ threshold, and the
    Fréchet distance of their features to the real test images of k over k's own floor (real
    training images of k against real test images of k). None where a group has under 2
    samples."""
    table: dict[str, dict[str, float | None]] = {}
    for k in digits:
        mine = groups == k
        test, train = (features[s][labels[s] == k] for s in ("test", "train"))
        floor = frechet_distance(train, test)
        row: dict[str, float | None] = {"share": mine.double().mean().item(), "decent_rate": None,
                                        "frechet": None, "frechet_floor": floor, "frechet_ratio": None}  # fmt: skip
        if int(mine.sum()) >= 2:
            frechet = frechet_distance(features["samples"][mine], test)
            row.update(decent_rate=(probs[mine, k] >= threshold).double().mean().item(),
                       frechet=frechet, frechet_ratio=frechet / floor)  # fmt: skip
        table[str(k)] = row
    return table


def gan_quality(
    samples: torch.Tensor,
    requested: torch.Tensor | None,
    probs: torch.Tensor,
    real_probs: torch.Tensor,
    features: dict[str, torch.Tensor],
    real: dict[str, Split],
    digits: list[int],
    threshold: float,
) -> dict:
    """The GAN's metrics with the classifier as judge.

    decent_rate: share of samples given the digit asked for (`requested`, a conditional
    generator) or the chosen digit (any digit with `digit: all`) with probability ≥ threshold.
    frechet: Fréchet distance between the classifier's penultimate features of samples and of
    real test images of the digit(s); frechet_floor: the same between real training and real
    test images. diversity_ratio: mean pairwise distance among samples / among real test
    images. memorised: share of samples whose nearest training image of their digit is closer
    than 95% of real test images are to theirs (about 5% for a generator that does not copy its
    training images). classifier_score(_real): the Inception Score with the classifier of the
    samples (of the real test images). per_digit: per_digit_quality, grouped by the digit asked
    for, else by the digit the classifier sees; with its worst decent rate and median ratio.
    """
    predicted = probs.argmax(1)
    if requested is not None:
        groups = requested
    else:  # one digit: every sample is meant to be it
        groups = predicted if len(digits) > 1 else torch.full_like(predicted, digits[0])
    if requested is not None:
        decent = (probs.gather(1, requested[:, None]) >= threshold).double().mean().item()
    else:
        decent = decent_rate(probs, digits, threshold)
    counts, entropy, present = class_histogram(predicted)
    test, train = real["test"], real["train"]
    labels = {"test": test.labels, "train": train.labels}
    per_digit = per_digit_quality(groups, probs, features, labels, digits, threshold)
    rated = [row for row in per_digit.values() if row["frechet_ratio"] is not None]
    frechet = frechet_distance(features["samples"], features["test"])
    floor = frechet_distance(features["train"], features["test"])
    memorised = 0
    for k in digits:  # nearest training image of the same digit
        test_nn = nearest_distances(test.images[test.labels == k], train.images[train.labels == k])
        sample_nn = nearest_distances(samples[groups == k], train.images[train.labels == k])
        memorised += int((sample_nn < test_nn.quantile(MEMORISATION_QUANTILE)).sum())
    return {
        "num_samples": len(samples),
        "decent_rate": decent,
        "decent_rate_worst": min((row["decent_rate"] for row in rated), default=0.0),
        "frechet": frechet,
        "frechet_floor": floor,
        "frechet_ratio": frechet / floor,
        "frechet_ratio_median": statistics.median(row["frechet_ratio"] for row in rated)
        if rated
        else None,
        "diversity_ratio": mean_pairwise_distance(samples) / mean_pairwise_distance(test.images),
        "memorised": memorised / len(samples),
        "classifier_score": classifier_score(probs),
        "classifier_score_real": classifier_score(real_probs),
        "predicted_digits": {str(d): n for d, n in enumerate(counts)},
        "entropy_bits": entropy,
        "digits_present": present,
        "per_digit": per_digit,
    }


def flat_metrics(metrics: dict, prefix: str) -> dict[str, float]:
    """Numeric metrics as MLflow names, nested blocks joined: {prefix}/per_digit/3/decent_rate."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flat_metrics(value, f"{prefix}/{key}"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}/{key}"] = float(value)
    return flat
