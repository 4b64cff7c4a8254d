"""Many runs, one store, end to end with the real tools: concurrent writers on a fresh store,
a queued sweep on two workers, `mlflow ui` in Chromium, a team `mlflow server`."""

from __future__ import annotations

import html
import itertools
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from digitlab.store import KIND_TAG, PIPELINE_TAG
from helpers import (
    BIN,
    ROOT,
    client,
    dvc,
    free_port,
    git,
    mlflow_server,
    ran_stages,
    stage_runs,
    stop,
    wait_until_healthy,
)

pytestmark = pytest.mark.slow  # copies of the repo where DVC, MLflow and servers really run


# ---------------------------------------------------------------- one store, many writers

WRITER = """
import sys, time
from pathlib import Path
import mlflow
from digitlab.params import load_params
from digitlab.tracking import stage_run
params = load_params(sys.argv[1])
while not Path(sys.argv[2]).exists():  # all start together, on a store that does not exist yet
    time.sleep(0.01)
with stage_run("writer", params, {"writer": sys.argv[3]}):
    for step in range(100):
        mlflow.log_metric("m", step, step=step)
    mlflow.log_metrics({"last": 99.0, "other": 1.0})
"""


def test_concurrent_stages_on_a_fresh_store_lose_no_run_and_no_metric(tmp_path: Path) -> None:
    """Four stages of four experiments start at once on a store that does not exist yet
    (MLflow creates its tables in each: without digitlab's store lock all but one fail)."""
    go = tmp_path / "go"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(ROOT / "params.yaml"), str(go), str(i)],
            env={**env, "DVC_ROOT": str(tmp_path), "DVC_EXP_NAME": f"exp{i}"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(4)
    ]
    time.sleep(5)  # imports done
    go.touch()
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(outputs)
    runs = stage_runs(tmp_path)
    assert sorted(r.data.params["writer"] for r in runs) == ["0", "1", "2", "3"]
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 4
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.metrics == {"m": 99.0, "last": 99.0, "other": 1.0}
        history = client(tmp_path).get_metric_history(run.info.run_id, "m")
        assert sorted(m.step for m in history) == list(range(100))
    for parent in parents:  # each pipeline run carries its stage's metrics under the same names
        assert client(tmp_path).get_run(parent).data.metrics == {"m": 99, "last": 99, "other": 1}


# ---------------------------------------------------------------- a queued sweep

SWEEP_STAGES = {"train_gan", "evaluate_gan", "report"}  # what gan.* reaches


def queue_status(path: Path, env: dict[str, str]) -> dict[str, str]:
    """`dvc queue status` as {experiment name: status}."""
    out = dvc(path, env, "queue", "status").stdout
    rows = [line.split() for line in out.splitlines()[1:]]
    return {row[1]: row[-1] for row in rows if row and re.fullmatch(r"[0-9a-f]{7}", row[0])}


def finished(clone: Path) -> set[str]:
    """The experiments with a commit in the clone (a queued one gets it when it succeeds)."""
    refs = git(clone, "for-each-ref", "--format=%(refname)", "refs/exps").split()
    return {ref.rsplit("/", 1)[1] for ref in refs}


def wait_for_queue(
    path: Path, env: dict[str, str], names: list[str], timeout: float = 900
) -> dict[str, str]:
    """Wait until no named experiment is queued or running; their `dvc queue status`. Cheap
    Git look-ups often, `dvc queue status` (seconds of CPU) now and then, for a failed one."""
    deadline, checked = time.monotonic() + timeout, time.monotonic()
    while not set(names) <= finished(path):
        assert time.monotonic() < deadline, f"not done after {timeout} s"
        time.sleep(2)
        if time.monotonic() - checked > 20:
            checked = time.monotonic()
            if "Failed" in {queue_status(path, env).get(n) for n in names}:
                break
    while (status := queue_status(path, env)) and {"Queued", "Running"} & {  # tidying up
        status.get(n) for n in names
    }:
        assert time.monotonic() < deadline, status
        time.sleep(2)
    return status


def test_queued_sweep_with_two_workers_lands_every_run_in_mlflow(
    tiny_repo: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    import mlflow

    path, env = tiny_repo
    out = dvc(path, env, "exp", "run", "--queue", "-S", "gan.batch_size=32,128")
    names = re.findall(r"Queued experiment '([^']+)'", out.stdout)
    assert len(names) == 2
    start = time.perf_counter()
    dvc(path, env, "queue", "start", "-j", "2")
    status = wait_for_queue(path, env, names)
    print(f"\nqueued sweep of 2 experiments, 2 workers: {time.perf_counter() - start:.0f} s")
    assert {name: status.get(name) for name in names} == dict.fromkeys(names, "Success")

    shown = json.loads(dvc(path, env, "exp", "show", "--json").stdout)
    experiments = {
        exp["name"]: exp["revs"][0]["data"]
        for baseline in shown
        for exp in baseline.get("experiments") or []
    }
    assert set(experiments) == set(names)
    sweep = {(d["params"]["params.yaml"]["data"]["digit"],
              d["params"]["params.yaml"]["data"]["gan"]["batch_size"]) for d in experiments.values()}  # fmt: skip
    assert sweep == {(3, 32), (3, 128)}

    baseline = git(path, "rev-parse", "HEAD").strip()
    metric_keys: dict[str, set[frozenset[str]]] = {}
    spans = []
    for name, data in experiments.items():
        logs = dvc(path, env, "queue", "logs", name).stdout
        assert ran_stages(logs) == SWEEP_STAGES
        runs = stage_runs(path, f"tags.`dvc.exp` = '{name}'")
        assert sorted(r.info.run_name for r in runs) == sorted(SWEEP_STAGES)  # one each, no loss
        assert {r.info.status for r in runs} == {"FINISHED"}
        (parent_id,) = {r.data.tags["mlflow.parentRunId"] for r in runs}
        parent = client(path).get_run(parent_id)
        assert parent.data.tags[PIPELINE_TAG] == f"exp:{name}"
        assert parent.info.status == "FINISHED" and parent.data.tags["git.commit"] == baseline
        assert parent.data.params["digit"] == str(data["params"]["params.yaml"]["data"]["digit"])
        by_stage = {r.info.run_name: r for r in runs}
        for stage, run in by_stage.items():
            metric_keys.setdefault(stage, set()).add(frozenset(run.data.metrics))
        gan = data["metrics"]["reports/gan/metrics.json"]["data"]
        assert by_stage["evaluate_gan"].data.metrics["gan_eval/decent_rate"] == gan["decent_rate"]
        assert parent.data.metrics["gan_eval/decent_rate"] == gan["decent_rate"]
        (tmp_path / name).mkdir()
        page = mlflow.artifacts.download_artifacts(
            run_id=by_stage["report"].info.run_id,
            artifact_path="report/index.html",
            dst_path=str(tmp_path / name),
            tracking_uri=f"sqlite:///{path / 'mlflow.db'}",
        )
        assert by_stage["evaluate_gan"].info.run_id in Path(page).read_text()  # its own runs
        spans.append((min(r.info.start_time for r in runs), max(r.info.end_time for r in runs)))
    assert all(len(keys) == 1 for keys in metric_keys.values()), metric_keys  # same names
    spans.sort()
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans)), (
        "the two workers never overlapped"
    )


# ---------------------------------------------------------------- mlflow ui and a team server


def page_text(url: str, tmp: Path) -> str:
    """The text of a page once headless Chromium has run its scripts."""
    from helpers import chromium

    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp / 'profile'}", "--window-size=1600,1200",
         "--virtual-time-budget=15000", "--dump-dom", url],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", result.stdout, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def test_make_ui_lists_the_experiment_and_its_runs_in_chromium(
    tiny_repo: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    from helpers import chromium

    chromium()  # skips without it
    path, env = tiny_repo
    mlflow_client = client(path)
    experiment = mlflow_client.get_experiment_by_name("digitlab")
    runs = mlflow_client.search_runs([experiment.experiment_id], max_results=1000)
    pipelines = {r.info.run_name for r in runs if r.data.tags[KIND_TAG] == "pipeline"}
    experiments = {r.data.tags["dvc.exp"] for r in runs} - {"workspace"}  # the sweep's
    assert {f"pipeline exp:{name}" for name in experiments} <= pipelines
    port = free_port()
    log = tmp_path / "ui.log"
    venv = BIN.parent  # the project's venv, so that `make ui` needs no set-up in the copy
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "ui", f"UI_PORT={port}", f"BIN={BIN}",
             f"STAMP={venv / '.installed'}", "-o", str(venv / ".installed")],  # never remade
            cwd=path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until_healthy(proc, port, log)
        address = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs"
        printed = f"{address}?workflowType=machine_learning"
        assert f"MLflow's UI, the training runs: {printed}" in log.read_text()
        text = page_text(printed, tmp_path)  # MLflow 3.17: without it, GenAI views come first
        assert "digitlab" in text and "Overview" not in text and "Model registry" in text
        for name in pipelines:  # the parent runs; each lists its stage runs when unfolded
            assert name in text, f"{name} is not listed:\n{text[:3000]}"
        assert f"{len(runs)} matching runs" in text
        report = next(r for r in runs if r.info.run_name == "report")
        url = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/artifacts/list?run_id={report.info.run_id}&path=report"
        with urllib.request.urlopen(url, timeout=30) as reply:
            assert [f["path"] for f in json.load(reply)["files"]] == ["report/index.html"]
    finally:
        stop(proc)


def test_a_stage_logs_to_a_team_server_named_by_mlflow_tracking_uri(
    tiny_repo: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    import mlflow

    path, env = tiny_repo
    port = free_port()
    log = tmp_path / "server.log"
    proc = mlflow_server(port, tmp_path, env, log)
    try:
        wait_until_healthy(proc, port, log)
        local_before = len(stage_runs(path))
        uri = f"http://127.0.0.1:{port}"
        result = dvc(path, {**env, "MLFLOW_TRACKING_URI": uri}, "repro", "-f", "-s", "report")
        assert ran_stages(result.stdout) == {"report"}
        server = mlflow.MlflowClient(uri)
        experiment = server.get_experiment_by_name("digitlab")
        (run,) = server.search_runs([experiment.experiment_id], f"tags.`{KIND_TAG}` = 'stage'")
        assert run.info.run_name == "report" and run.info.status == "FINISHED"
        parent = server.get_run(run.data.tags["mlflow.parentRunId"])
        assert parent.data.tags[KIND_TAG] == "pipeline" and parent.info.status == "FINISHED"
        assert [a.path for a in server.list_artifacts(run.info.run_id, "report")] == [
            "report/index.html"
        ]
        assert list((tmp_path / "server-artifacts").rglob("index.html"))  # sent to the server
        assert len(stage_runs(path)) == local_before  # nothing went to the local store
    finally:
        stop(proc)
