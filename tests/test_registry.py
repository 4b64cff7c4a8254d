"""MLflow's model registry: a stage's models are registered only when its run FINISHED."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, client, stage_runs

pytestmark = pytest.mark.slow  # a real MLflow store, models logged twice (about 20 s)

STAGE = """
import sys
import torch
from digitlab.models import build_classifier
from digitlab.params import load_params
from digitlab.tracking import stage_run
params = load_params(sys.argv[1])
model = build_classifier(params.classifier.architecture())
with stage_run("train_classifier", params, {}) as run:
    run.log_model(model, "test-classifier", torch.rand(2, 1, 28, 28), "latest-mnist",
                  {"dataset": "mnist"})
    if sys.argv[2] == "fail":
        raise RuntimeError("training diverged")
"""


def run_stage(store: Path, outcome: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    return subprocess.run(
        [sys.executable, "-c", STAGE, str(ROOT / "params.yaml"), outcome],
        env={**env, "DVC_ROOT": str(store)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_failed_run_registers_nothing_and_a_finished_one_a_version(tmp_path: Path) -> None:
    failed = run_stage(tmp_path, "fail")
    assert failed.returncode == 1 and "training diverged" in failed.stderr
    store = client(tmp_path)
    (run,) = stage_runs(tmp_path)
    assert run.info.status == "FAILED"
    assert store.search_model_versions("name = 'test-classifier'") == []  # logged, not registered

    finished = run_stage(tmp_path, "finish")
    assert finished.returncode == 0, finished.stderr
    assert "registered test-classifier version 1 (@latest-mnist)" in finished.stdout
    (version,) = store.search_model_versions("name = 'test-classifier'")
    newest = stage_runs(tmp_path)[0]
    assert newest.info.status == "FINISHED" and version.run_id == newest.info.run_id
    assert store.get_model_version_by_alias("test-classifier", "latest-mnist").version == 1
    assert version.tags["dataset"] == "mnist" and version.tags["dvc.exp"] == "workspace"
