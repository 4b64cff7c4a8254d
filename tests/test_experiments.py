"""The everyday loop, end to end with the real tools: edit params and rerun exactly what reads
them, stop a stage cleanly, sweep queued experiments in parallel, compare in `mlflow ui`, log
to a team server."""

from __future__ import annotations

import html
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from digitlab.tracking import KIND_TAG, PIPELINE_TAG
from helpers import (
    ALL_STAGES,
    BIN,
    ROOT,
    TINY,
    changed_stages,
    client,
    copy_repo,
    default_sigint,
    dvc,
    git,
    outputs_snapshot,
    pipeline_env,
    ran_stages,
    set_param,
    stage_runs,
)

pytestmark = pytest.mark.slow  # copies of the repo where DVC, MLflow and servers really run


@pytest.fixture(scope="module")
def loop(raw_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A copy of the repo with TINY params, reproduced once and committed (so that diffs
    compare against this baseline and queued experiments start from it)."""
    repo = copy_repo(tmp_path_factory.mktemp("loop"))
    for key, value in TINY.items():
        set_param(repo, key, value)
    env = pipeline_env(raw_mnist)
    assert ran_stages(dvc(repo, env, "repro").stdout) == ALL_STAGES
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "tiny baseline")
    return repo, env


# ---------------------------------------------------------------- one edit, exact reruns


# Each edit: one key of each params group, and the stages `dvc status` must then call changed:
# those that read the key (report prints all of params.yaml, so it is always among them).
# What `dvc repro` reruns is these and whatever lies downstream of them.
EDITS = {
    "seed": (1, {"prepare", "train_classifier", "train_gan", "evaluate_gan", "report"}),
    "digit": (7, {"evaluate", "train_gan", "evaluate_gan", "report"}),
    "data.val_size": (6000, {"prepare", "report"}),
    "data.dataset": ("fashion_mnist", ALL_STAGES),
    "classifier.optimizer.lr": (0.001, {"train_classifier", "report"}),
    "classifier.arch": ("cnn", {"train_classifier", "evaluate", "report"}),
    "gan.batch_size": (32, {"train_gan", "report"}),
    "gan_eval.threshold": (0.5, {"evaluate_gan", "report"}),
}


@pytest.mark.parametrize("key", list(EDITS))
def test_one_param_edit_marks_exactly_the_stages_that_read_it(
    loop: tuple[Path, dict[str, str]], key: str
) -> None:
    path, env = loop
    value, expected = EDITS[key]
    original = (path / "params.yaml").read_text()
    set_param(path, key, value)
    try:
        assert changed_stages(path, env) == expected
    finally:
        (path / "params.yaml").write_text(original)


# ---------------------------------------------------------------- stopping a stage


def temporary_files(repo: Path) -> list[Path]:
    """Leftovers of digitlab.files' atomic writes (.<name>.<random>.tmp / .old) in the repo."""
    return [
        p
        for p in repo.rglob(".*")
        if p.name.endswith((".tmp", ".old")) and not {".git", ".dvc"} & set(p.parts)
    ]


def wait_for_running_run(repo: Path, stage: str, since_ms: int, timeout: float = 120) -> str:
    """The id of `stage`'s MLflow run started after `since_ms` once it is RUNNING."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = stage_runs(
            repo,
            f"tags.`dvc.stage` = '{stage}' and attributes.status = 'RUNNING' "
            f"and attributes.start_time >= {since_ms}",
        )
        if runs:
            return runs[0].info.run_id
        time.sleep(0.5)
    raise AssertionError(f"no RUNNING {stage} run appeared within {timeout} s")


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stopped_stage_is_failed_in_mlflow_and_its_outputs_come_back(
    loop: tuple[Path, dict[str, str]], how: str
) -> None:
    """Ctrl-C reaches DVC and the stage (the terminal signals the whole process group; DVC
    waits for the stage); SIGTERM reaches the stage alone (`kill`, a job runner). Either way
    the run ends FAILED, no temporary file is left, DVC records nothing, and the outputs
    DVC recorded (removed by DVC before the stage ran) come back with the command the error
    line names, so the pipeline is up to date again once the edit is undone."""
    import psutil

    path, env = loop
    before = outputs_snapshot(path)
    original = (path / "params.yaml").read_text()
    set_param(path, "gan.epochs", 1000)  # long enough to be stopped while training
    since = int(time.time() * 1000)
    proc = subprocess.Popen(
        ["dvc", "repro", "train_gan"],
        cwd=path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=default_sigint,
    )
    try:
        run_id = wait_for_running_run(path, "train_gan", since)
        time.sleep(1)  # into the training loop
        (stage,) = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if p.name().startswith("python") and "stages/train_gan.py" in p.cmdline()
        ]
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            stage.terminate()
        _, stderr = proc.communicate(timeout=120)
        psutil.wait_procs([stage], timeout=60)  # should a shell between them have gone first
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        (path / "params.yaml").write_text(original)
    name = "SIGINT" if how == "ctrl-c" else "SIGTERM"
    assert proc.returncode != 0
    restore = "(`dvc checkout train_gan` restores its last good outputs)"
    assert f"digitlab: error: stopped by {name} {restore}" in stderr
    assert "failed to reproduce 'train_gan'" in stderr
    run = client(path).get_run(run_id)
    assert run.info.status == "FAILED" and run.info.end_time is not None
    parent = client(path).get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED"  # the pipeline's last stage failed
    assert temporary_files(path) == []
    dvc(path, env, "checkout", "train_gan")
    assert outputs_snapshot(path) == before
    assert changed_stages(path, env) == set()


def test_edit_and_rerun_after_a_stop_shows_in_the_diffs(
    loop: tuple[Path, dict[str, str]],
) -> None:
    """After the stops above, the same edit reruns cleanly; `dvc params diff`, `dvc metrics
    diff` and `dvc plots diff` show it against the committed baseline."""
    path, env = loop
    set_param(path, "gan.epochs", 2)
    try:
        assert changed_stages(path, env) == {"train_gan", "report"}
        assert ran_stages(dvc(path, env, "repro").stdout) == {"train_gan", "evaluate_gan", "report"}
        params = json.loads(dvc(path, env, "params", "diff", "--json").stdout)
        assert params == {"params.yaml": {"gan.epochs": {"old": 1, "new": 2, "diff": 1}}}
        metrics = json.loads(dvc(path, env, "metrics", "diff", "--json").stdout)
        assert set(metrics) == {"reports/gan/metrics.json"}  # the classifier did not change
        assert {"frechet", "decent_rate"} <= set(metrics["reports/gan/metrics.json"])
        plots = json.loads(dvc(path, env, "plots", "diff", "--json").stdout)["data"]
        (losses,) = plots["GAN losses"]
        steps = {rev: set() for rev in losses["revisions"]}
        for row in losses["content"]["data"]["values"]:
            steps[row["rev"]].add(int(row["step"]))
        per_epoch = 5620 // 64  # G steps per epoch: digit 3's training images, batch 64
        assert steps == {"HEAD": {per_epoch}, "workspace": {per_epoch, 2 * per_epoch}}
        run = stage_runs(path, "tags.`dvc.stage` = 'train_gan'")[0]
        assert run.info.status == "FINISHED" and run.data.params["gan.epochs"] == "2"
    finally:  # back to the baseline: params and DVC's text outputs from git, the rest from cache
        git(path, "checkout", "-q", "--", ".")
        dvc(path, env, "checkout", "--force")
    assert changed_stages(path, env) == set()


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

SWEEP_STAGES = {"evaluate", "train_gan", "evaluate_gan", "report"}  # what digit and gan.* reach


def queue_status(path: Path, env: dict[str, str]) -> dict[str, str]:
    """`dvc queue status` as {experiment name: status}."""
    out = dvc(path, env, "queue", "status").stdout
    rows = [line.split() for line in out.splitlines()[1:]]
    return {row[1]: row[-1] for row in rows if row and re.fullmatch(r"[0-9a-f]{7}", row[0])}


def test_queued_sweep_with_two_workers_lands_every_run_in_mlflow(
    loop: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    import mlflow

    path, env = loop
    out = dvc(path, env, "exp", "run", "--queue", "-S", "digit=5,7", "-S", "gan.batch_size=128")
    names = re.findall(r"Queued experiment '([^']+)'", out.stdout)
    assert len(names) == 2
    start = time.perf_counter()
    dvc(path, env, "queue", "start", "-j", "2")
    deadline = time.monotonic() + 900
    while (status := queue_status(path, env)) and {"Queued", "Running"} & set(status.values()):
        assert time.monotonic() < deadline, status
        time.sleep(3)
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
    assert sweep == {(5, 128), (7, 128)}

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
        accuracy = data["metrics"]["reports/classifier/metrics.json"]["data"]["accuracy"]
        assert by_stage["evaluate_gan"].data.metrics["gan_eval/decent_rate"] == gan["decent_rate"]
        assert parent.data.metrics["gan_eval/decent_rate"] == gan["decent_rate"]
        assert parent.data.metrics["test/accuracy"] == accuracy
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(proc: subprocess.Popen, port: int, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no answer on port {port} after {timeout} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """End a server started in its own session, with its workers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


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
    loop: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    from helpers import chromium

    if chromium() is None:
        pytest.skip("no Chromium found (install Debian's chromium package; .ci/run does)")
    path, env = loop
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
             f"STAMP={venv / '.installed'}"],
            cwd=path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until_healthy(proc, port, log)
        text = page_text(
            f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs", tmp_path
        )
        assert "digitlab" in text
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
    loop: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    import mlflow

    path, env = loop
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
             "--artifacts-destination", str(tmp_path / "server-artifacts")],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
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
