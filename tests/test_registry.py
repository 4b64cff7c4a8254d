"""MLflow's model registry: a stage's models are registered only when its run FINISHED, and
served they refuse input that is not finite or not their shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import BIN, ROOT, client, free_port, stage_runs, stop, wait_until_healthy

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


def test_the_served_model_refuses_input_that_is_not_finite_or_not_its_shape(tmp_path: Path) -> None:
    """`mlflow models serve` of the registered classifier: NaN pixels or a wrong shape get a 400
    with one clear message, and the next good request its probabilities."""
    assert run_stage(tmp_path, "finish").returncode == 0
    port, log = free_port(), tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # its uvicorn
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", "models:/test-classifier@latest-mnist",
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until_healthy(server, port, log, path="/ping")

        def post(images: list) -> tuple[int, dict]:
            body = json.dumps({"inputs": images}).encode()  # NaN as JSON's NaN token
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                             {"Content-Type": "application/json"})  # fmt: skip
            try:
                with urllib.request.urlopen(request, timeout=30) as reply:
                    return reply.status, json.loads(reply.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read())

        image = [[[0.0] * 28 for _ in range(28)]]
        broken = [[[0.0] * 28 for _ in range(27)] + [[float("nan")] * 28]]
        status, answer = post([image, broken])
        assert status == 400 and "28 input values are not finite numbers" in answer["message"]
        status, answer = post([[[0.0] * 784]])
        assert status == 400 and "shape" in answer["message"]
        status, answer = post([image])
        assert status == 200 and len(answer["predictions"][0]) == 10
    finally:
        stop(server)
