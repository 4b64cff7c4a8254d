"""The prepared data: shapes, ranges, the published statistics, a stratified seeded split,
colour images (CIFAR-10's 3×32×32) alike, and loading in milliseconds, on real MNIST."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from digitlab.data import Split, load_split, normalize, split_stats, stratified_split
from digitlab.readers import read_raw


def test_prepared_shapes_dtypes_ranges(prepared: tuple[Path, dict]) -> None:
    out, _ = prepared
    expected = {"train": 55_000, "val": 5_000, "test": 10_000}
    for name, count in expected.items():
        split = load_split(out, name)
        assert split.images.shape == (count, 1, 28, 28)
        assert split.images.dtype == torch.float32
        assert split.labels.dtype == torch.int64
        assert split.images.min().item() == 0.0 and split.images.max().item() == 1.0
        assert set(split.labels.unique().tolist()) == set(range(10))


def test_summary_matches_published_statistics(prepared: tuple[Path, dict]) -> None:
    _, summary = prepared
    assert summary["official_train"]["count"] == 60_000
    assert abs(summary["official_train"]["mean"] - 0.1307) <= 0.001
    assert abs(summary["official_train"]["std"] - 0.3081) <= 0.001
    assert sum(summary["test"]["per_class"].values()) == 10_000
    for c in range(10):
        total = summary["train"]["per_class"][str(c)] + summary["val"]["per_class"][str(c)]
        proportional = total * 5_000 / 60_000
        assert abs(summary["val"]["per_class"][str(c)] - proportional) < 1


def test_val_is_stratified_disjoint_and_seeded(raw_mnist: Path) -> None:
    _, labels = read_raw(raw_mnist, train=True)
    train_idx, val_idx = stratified_split(labels, 5000, seed=0)
    assert len(val_idx) == 5000 and len(train_idx) == 55_000
    assert torch.equal(torch.cat([train_idx, val_idx]).sort().values, torch.arange(60_000))
    again_train, again_val = stratified_split(labels, 5000, seed=0)
    assert torch.equal(val_idx, again_val) and torch.equal(train_idx, again_train)
    _, other_val = stratified_split(labels, 5000, seed=1)
    assert not torch.equal(val_idx, other_val)
    counts = torch.bincount(labels[val_idx], minlength=10).double()
    proportional = torch.bincount(labels, minlength=10).double() * 5000 / 60_000
    assert (counts - proportional).abs().max() < 1
    _, odd_val = stratified_split(labels, 37, seed=0)
    assert len(odd_val) == 37


def test_prepared_split_loads_fast(prepared: tuple[Path, dict]) -> None:
    out, _ = prepared
    start = time.perf_counter()
    split = load_split(out, "train")
    split.images.sum()  # touch every page
    assert time.perf_counter() - start < 1.0


def test_read_normalize_split_give_3x32x32_in_unit_range(cifar: Path) -> None:
    images, labels = read_raw(cifar, train=True, dataset="cifar10")
    prepared = normalize(images)
    assert prepared.shape == (250, 3, 32, 32) and prepared.dtype == torch.float32
    assert prepared.min() == 0.0 and prepared.max() == 1.0
    assert torch.equal(prepared[0, 2], torch.full((32, 32), 128 / 255))
    train_idx, val_idx = stratified_split(labels, 50, seed=0)
    assert len(val_idx) == 50 and torch.bincount(labels[val_idx]).tolist() == [5] * 10
    stats = split_stats(Split(prepared[train_idx], labels[train_idx]))
    assert stats["count"] == 200 and stats["per_class"]["0"] == 20
    # MNIST's N×28×28 still gains its channel axis
    assert normalize(torch.zeros(2, 28, 28, dtype=torch.uint8)).shape == (2, 1, 28, 28)
