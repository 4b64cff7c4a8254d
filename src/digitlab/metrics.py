"""Classifier metrics: multiclass accuracy, the detector's metrics, the confusion breakdown."""

from __future__ import annotations

import pandas as pd
import torch

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
