"""Classifier metrics: multiclass accuracy, the detector's metrics, the confusion breakdown."""

from __future__ import annotations

import statistics

import pandas as pd
import torch

from digitlab.data import Split
from digitlab.params import N_CLASSES


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


def predictions_frame(probs: torch.Tensor, true: torch.Tensor, digit: int | str) -> pd.DataFrame:
    """predictions.csv: each test image's index, true and predicted digit, and the probability
    of the chosen digit (of the predicted one with digit: all), from which every figure can be
    recomputed (and DVC draws its confusion plot)."""
    predicted = probs.argmax(1)
    score = probs[:, digit] if digit != "all" else probs.max(1).values
    return pd.DataFrame(
        {
            "index": range(len(true)),
            "true": true.numpy(),
            "predicted": predicted.numpy(),
            "score": score.numpy().round(6),
        }
    )


def confusion_frame(confusion: torch.Tensor) -> pd.DataFrame:
    """confusion.csv: rows the true digit, columns the predicted one."""
    index = pd.Index(range(N_CLASSES), name="true")
    return pd.DataFrame(confusion.numpy(), index=index, columns=range(N_CLASSES))


def most_confident_mistakes(probs: torch.Tensor, true: torch.Tensor, n: int = 32) -> torch.Tensor:
    """Indices of the (at most) n wrong answers given with the highest probability."""
    predicted = probs.argmax(1)
    wrong = (predicted != true).nonzero().squeeze(1)
    return wrong[probs[wrong, predicted[wrong]].argsort(descending=True)[:n]]


DETECTOR_HEADLINE = ("accuracy", "precision", "recall", "f1")


def classifier_report(
    true: torch.Tensor, probs: torch.Tensor, digits: list[int]
) -> tuple[dict, dict, torch.Tensor, pd.DataFrame]:
    """(headline metrics, details, the confusion matrix, the breakdown) for the chosen
    digit(s). The headline (metrics.json, what `dvc exp show` compares): multiclass accuracy
    and the detector's accuracy, precision, recall and F1 (their mean over the digits with
    `digit: all`); the details (details.json): every detector's figures and counts, per digit."""
    predicted = probs.argmax(1)
    confusion = confusion_matrix(true, predicted)
    per_digit = {str(d): detector_metrics(confusion, d) for d in digits}
    detector = {
        k: statistics.fmean(row[k] for row in per_digit.values())
        if len(digits) > 1
        else per_digit[str(digits[0])][k]
        for k in DETECTOR_HEADLINE
    }
    metrics = {"accuracy": (predicted == true).double().mean().item(), "detector": detector}
    details = {"n_test": len(true), "per_digit": per_digit}
    table = pd.concat([breakdown(confusion, d) for d in digits], ignore_index=True)
    return metrics, details, confusion, table


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


def diversity(images: torch.Tensor, max_n: int = 1000) -> float:
    """Mean Euclidean distance between pairs of the first `max_n` images (pixels in [0, 1]):
    how different the images are from each other; over the real images' it is the
    diversity ratio (about 1 for a good generator, near 0 for a collapsed one)."""
    n = min(len(images), max_n)
    if n < 2:
        return 0.0
    return torch.pdist(images[:n].reshape(n, -1).double()).mean().item()


def nearest_distances(
    queries: torch.Tensor, references: torch.Tensor, chunk: int = 1000
) -> torch.Tensor:
    """For each query image, the Euclidean distance to its nearest reference image."""
    refs = references.reshape(len(references), -1)
    out = [
        torch.cdist(queries[i : i + chunk].reshape(-1, refs.shape[1]), refs).min(1).values
        for i in range(0, len(queries), chunk)
    ]
    return torch.cat(out)


def class_histogram(predicted: torch.Tensor) -> tuple[list[int], float, int]:
    """Counts of predicted digits, their entropy in bits, and how many digits hold ≥ 1%."""
    counts = torch.bincount(predicted, minlength=N_CLASSES)
    share = counts.double() / counts.sum()
    entropy = -(share[share > 0] * share[share > 0].log2()).sum().item()
    return counts.tolist(), entropy, int((share >= 0.01).sum())


MEMORISATION_QUANTILE = 0.05


def decent_rate(
    probs: torch.Tensor, digits: list[int], threshold: float, requested: torch.Tensor | None = None
) -> float:
    """Share of samples the classifier gives, with probability ≥ threshold, the digit asked
    for (`requested`: a conditional generator's), else the chosen digit (any digit when all
    ten are asked for)."""
    if requested is not None:
        return (probs.gather(1, requested[:, None]) >= threshold).double().mean().item()
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
        row: dict[str, float | None] = {
            "share": mine.double().mean().item(),
            "decent_rate": None,
            "frechet": None,
            "frechet_floor": floor,
            "frechet_ratio": None,
        }
        if int(mine.sum()) >= 2:
            frechet = frechet_distance(features["samples"][mine], test)
            row.update(
                decent_rate=(probs[mine, k] >= threshold).double().mean().item(),
                frechet=frechet,
                frechet_ratio=frechet / floor,
            )
        table[str(k)] = row
    return table


GAN_HEADLINE = (
    "decent_rate",
    "decent_rate_worst",
    "frechet_ratio",
    "frechet_ratio_median",
    "classifier_score",
    "classifier_score_real",
    "digits_present",
)
# The flat names of the files DVC compares (metrics.json of evaluate and of evaluate_gan): what
# `dvc exp show` and the lab tables show. Everything else is a detail (details.json).
HEADLINE = {
    "classifier": ("accuracy", *(f"detector/{name}" for name in DETECTOR_HEADLINE)),
    "gan": GAN_HEADLINE,
}


def sample_groups(
    predicted: torch.Tensor, requested: torch.Tensor | None, digits: list[int]
) -> torch.Tensor:
    """The digit each sample stands for: the one asked for (a conditional generator), else the
    chosen digit, or with every digit the one the classifier sees."""
    if requested is not None:
        return requested
    return predicted if len(digits) > 1 else torch.full_like(predicted, digits[0])


def memorised_share(
    samples: torch.Tensor, groups: torch.Tensor, real: dict[str, Split], digits: list[int]
) -> float:
    """Share of samples whose nearest training image of their digit is closer than 95% of real
    test images are to theirs (about 5% for a generator that does not copy its images)."""
    test, train = real["test"], real["train"]
    memorised = 0
    for k in digits:
        references = train.images[train.labels == k]
        test_nn = nearest_distances(test.images[test.labels == k], references)
        sample_nn = nearest_distances(samples[groups == k], references)
        memorised += int((sample_nn < test_nn.quantile(MEMORISATION_QUANTILE)).sum())
    return memorised / len(samples)


def gan_quality(
    samples: torch.Tensor,
    requested: torch.Tensor | None,
    probs: torch.Tensor,
    real_probs: torch.Tensor,
    features: dict[str, torch.Tensor],
    real: dict[str, Split],
    digits: list[int],
    threshold: float,
) -> tuple[dict, dict]:
    """(headline metrics, details) of the GAN, with the classifier as judge.

    decent_rate: share of samples given the digit asked for (`requested`, a conditional
    generator) or the chosen digit (any digit with `digit: all`) with probability ≥ threshold.
    frechet: Fréchet distance between the classifier's penultimate features of samples and of
    real test images of the digit(s); frechet_floor: the same between real training and real
    test images. diversity_ratio: diversity() of the samples over the real test images'.
    memorised: memorised_share(). classifier_score(_real): the Inception Score with the
    classifier of the samples (of the real test images). per_digit: per_digit_quality, grouped
    by sample_groups(); with its worst decent rate and median Fréchet ratio.
    """
    predicted = probs.argmax(1)
    groups = sample_groups(predicted, requested, digits)
    counts, entropy, present = class_histogram(predicted)
    labels = {split: real[split].labels for split in ("test", "train")}
    per_digit = per_digit_quality(groups, probs, features, labels, digits, threshold)
    rated = [row for row in per_digit.values() if row["frechet_ratio"] is not None]
    frechet = frechet_distance(features["samples"], features["test"])
    floor = frechet_distance(features["train"], features["test"])
    ratios = [row["frechet_ratio"] for row in rated]
    quality = {
        "num_samples": len(samples),
        "decent_rate": decent_rate(probs, digits, threshold, requested),
        "decent_rate_worst": min((row["decent_rate"] for row in rated), default=0.0),
        "frechet": frechet,
        "frechet_floor": floor,
        "frechet_ratio": frechet / floor,
        "frechet_ratio_median": statistics.median(ratios) if ratios else None,
        "diversity_ratio": diversity(samples) / diversity(real["test"].images),
        "memorised": memorised_share(samples, groups, real, digits),
        "classifier_score": classifier_score(probs),
        "classifier_score_real": classifier_score(real_probs),
        "predicted_digits": {str(d): n for d, n in enumerate(counts)},
        "entropy_bits": entropy,
        "digits_present": present,
        "per_digit": per_digit,
    }
    headline = {k: quality[k] for k in GAN_HEADLINE}
    return headline, {k: v for k, v in quality.items() if k not in headline}
