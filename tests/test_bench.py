"""The benchmark's pieces on real MNIST: pytorch/examples' recipe trains its model,
time-to-quality stops at the target, a revisited setting comes back from DVC's run-cache, the
tables are written from bench.json."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.bench import (
    ExamplesNet,
    classifier_time_to_accuracy,
    examples_time_to_accuracy,
    gan_time_to_decent,
)
from benchmarks.render import END, START, render, update
from digitlab.data import Split, load_split
from digitlab.models import MLP, n_parameters
from digitlab.train import fit_classifier
from helpers import repo_params


def small(split: Split, n: int) -> Split:
    return Split(split.images[:n], split.labels[:n])


def test_pytorch_examples_recipe_learns(raw_mnist: Path) -> None:
    assert n_parameters(ExamplesNet()) == 1_199_882  # as pytorch/examples' mnist/main.py
    result = examples_time_to_accuracy(raw_mnist, seed=0, target=0.99, max_epochs=1, n_train=640)
    (point,) = result["curve"]
    assert point["epoch"] == 1 and point["seconds"] > 0
    assert 0.3 < point["test_acc"] < 0.99 and result["seconds"] is None  # learnt; target missed


def test_classifier_time_to_accuracy_stops_at_the_target(prepared: tuple[Path, dict]) -> None:
    train, val, test = (load_split(prepared[0], name) for name in ("train", "val", "test"))
    cfg = repo_params(
        **{"classifier.arch": "mlp", "classifier.hidden": [32], "classifier.epochs": 5}
    ).classifier
    result = classifier_time_to_accuracy(cfg, small(train, 2000), val, small(test, 1000), 0, 0.5)
    assert len(result["curve"]) == 1  # stopped after the first epoch that reached it
    assert result["curve"][0]["test_acc"] >= 0.5 and result["seconds"] > 0


def test_gan_time_to_decent_judges_every_epoch(prepared: tuple[Path, dict]) -> None:
    train, val = load_split(prepared[0], "train"), load_split(prepared[0], "val")
    params = repo_params(**{"gan.epochs": 2, "gan.discriminator.hidden": [64, 32]})
    classifier = MLP([32], "relu", 0.0)
    fit_classifier(classifier, small(train, 2000), val, params.classifier.model_copy(
        update={"epochs": 1, "scheduler": "none"}), 0, torch.device("cpu"))  # fmt: skip
    real = train.of_digits([3]).images[:640]
    never = gan_time_to_decent(params, real, classifier, "ce", target=1.01, n_samples=200)
    assert [p["g_step"] for p in never["curve"]] == [10, 20] and never["seconds"] is None
    assert all(0 <= p["decent_rate"] <= 1 for p in never["curve"])
    first = gan_time_to_decent(params, real, classifier, "ce", target=0.0, n_samples=200)
    assert len(first["curve"]) == 1 and first["seconds"] == first["curve"][0]["seconds"] > 0


RESULTS = {
    "time_to_99_test_acc": {"digitlab": {"seconds": 40.0}, "pytorch_examples": {"seconds": 200.0}},
    "gan_time_to_90_decent": {"seconds": 3.0},
    "revisit": {"key": "digit", "value": 7, "away_s": 150.0, "back_s": 4.5, "away_ran": ["train_gan"],
                "back_ran": []},
    "noop_repro_s": 0.8,
}  # fmt: skip


def test_tables_are_written_between_the_markers(tmp_path: Path) -> None:
    table = render(RESULTS)
    assert (
        "| seconds to 99.0% test accuracy (reference: pytorch/examples' recipe) | 40.0 s | 200.0 s | 0.20 |"
        in table
    )
    assert "`digit` set to 7 and back (ran no stage) | 4.5 s | 150.0 s going there" in table
    page = tmp_path / "page.md"
    page.write_text(f"intro\n{START}\nold\n{END}\nafter\n")
    update(page, table)
    assert page.read_text() == f"intro\n{START}\n{table}\n{END}\nafter\n"
    page.write_text("no markers")
    with pytest.raises(SystemExit, match="expected one"):
        update(page, table)
