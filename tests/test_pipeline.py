"""End to end: `dvc repro` in a temporary copy of the repo, on real MNIST, with MLflow checked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import copy_repo, pipeline_env

from digitlab.data import load_split


def dvc(
    repo: Path, env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess:
    result = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def set_param(repo: Path, key: str, value: object) -> None:
    path = repo / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[last] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def changed_stages(repo: Path, env: dict[str, str]) -> set[str]:
    status = json.loads(dvc(repo, env, "status", "--json").stdout)
    return set(status)


def mlflow_runs(repo: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("digitlab")
    return list(client.search_runs([experiment.experiment_id], max_results=1000))


@pytest.fixture(scope="module")
def repo(raw_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A copy of the repo where `dvc repro` has run once with the default params."""
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    env = pipeline_env(raw_mnist)
    result = dvc(repo, env, "repro")
    assert ran_stages(result.stdout) >= {"fetch", "prepare"}
    return repo, env


def test_repro_writes_lock_outputs_and_metrics(repo: tuple[Path, dict[str, str]]) -> None:
    path, env = repo
    lock = yaml.safe_load((path / "dvc.lock").read_text())
    assert {"fetch", "prepare"} <= set(lock["stages"])
    fetch_outs = {o["path"]: o for o in lock["stages"]["fetch"]["outs"]}
    assert fetch_outs["data/raw/mnist"]["nfiles"] == 4
    assert lock["stages"]["prepare"]["params"]["params.yaml"]["data"] == {
        "dataset": "mnist",
        "val_size": 5000,
    }
    assert len(load_split(path / "data/prepared", "val")) == 5000
    assert (path / "reports/data/examples.png").stat().st_size > 1000
    metrics = dvc(path, env, "metrics", "show").stdout
    assert "reports/data/summary.json" in metrics
    assert "55000" in metrics and "official_train.mean" in metrics


def test_prepare_is_deterministic(
    repo: tuple[Path, dict[str, str]], prepared: tuple[Path, dict]
) -> None:
    path, _ = repo
    fixture_dir, summary = prepared
    for name in ("train", "val"):
        a, b = load_split(path / "data/prepared", name), load_split(fixture_dir, name)
        assert torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images)
    assert json.loads((path / "reports/data/summary.json").read_text()) == summary


def test_mlflow_has_one_run_per_stage_under_a_pipeline_parent(
    repo: tuple[Path, dict[str, str]],
) -> None:
    path, _ = repo
    runs = mlflow_runs(path)
    by_name = {r.info.run_name: r for r in runs}
    assert {"fetch", "prepare"} <= set(by_name)
    prepare = by_name["prepare"]
    assert prepare.info.status == "FINISHED"
    assert prepare.data.tags["dvc.stage"] == "prepare"
    assert prepare.data.tags["dataset"] == "mnist"
    assert len(prepare.data.tags["git.commit"]) == 40
    assert prepare.data.params["data.val_size"] == "5000"
    assert prepare.data.metrics["val/count"] == 5000
    parent_id = prepare.data.tags["mlflow.parentRunId"]
    assert by_name["fetch"].data.tags["mlflow.parentRunId"] == parent_id
    assert by_name["fetch"].data.tags["fetch.source"] in {"local-dir", "existing"}
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    artifacts = {a.path for a in client.list_artifacts(prepare.info.run_id, "data")}
    assert artifacts == {"data/examples.png", "data/summary.json"}


def test_second_repro_runs_nothing_fast(repo: tuple[Path, dict[str, str]]) -> None:
    path, env = repo
    start = time.perf_counter()
    result = dvc(path, env, "repro")
    elapsed = time.perf_counter() - start
    assert ran_stages(result.stdout) == set()
    assert elapsed < 5, f"no-op repro took {elapsed:.1f} s"


def test_bad_dataset_fails_in_one_line_and_keeps_data(repo: tuple[Path, dict[str, str]]) -> None:
    path, env = repo
    before = {p.name: p.stat().st_mtime_ns for p in (path / "data/raw/mnist").iterdir()}
    set_param(path, "data.dataset", "cifar100")
    try:
        result = dvc(path, env, "repro", check=False)
        assert result.returncode != 0
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("digitlab: error")]
        assert errors == [
            "digitlab: error: params.yaml: data.dataset = 'cifar100' is not allowed: "
            "Input should be 'mnist' or 'fashion_mnist'"
        ]
    finally:
        set_param(path, "data.dataset", "mnist")
    after = {p.name: p.stat().st_mtime_ns for p in (path / "data/raw/mnist").iterdir()}
    assert after == before
    assert not (path / "data/raw/cifar100").exists()


def test_val_size_change_reruns_prepare_only(repo: tuple[Path, dict[str, str]]) -> None:
    path, env = repo
    set_param(path, "data.val_size", 6000)
    try:
        assert changed_stages(path, env) == {"prepare"}
        result = dvc(path, env, "repro")
        assert ran_stages(result.stdout) == {"prepare"}
        assert len(load_split(path / "data/prepared", "val")) == 6000
        diff = dvc(path, env, "params", "diff").stdout
        assert "data.val_size" in diff and "6000" in diff
    finally:
        set_param(path, "data.val_size", 5000)
        dvc(path, env, "repro")


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"),
    reason="Debian's dataset-fashion-mnist is not installed (make test installs it as root)",
)
def test_fashion_mnist_flows_through_the_same_stages(repo: tuple[Path, dict[str, str]]) -> None:
    path, env = repo
    set_param(path, "data.dataset", "fashion_mnist")
    try:
        result = dvc(path, env, "repro")
        assert ran_stages(result.stdout) == {"fetch", "prepare"}
        assert "fetch: trying debian" in result.stdout
        train = load_split(path / "data/prepared", "train")
        assert train.images.shape == (55_000, 1, 28, 28) and train.images.dtype == torch.float32
        summary = json.loads((path / "reports/data/summary.json").read_text())
        assert summary["dataset"] == "fashion_mnist"
        assert summary["test"]["per_class"] == {str(c): 1000 for c in range(10)}
        assert (path / "data/raw/mnist").is_dir()  # the MNIST files stay for a switch back
    finally:
        set_param(path, "data.dataset", "mnist")
        shutil.rmtree(path / "data/raw/fashion_mnist", ignore_errors=True)
