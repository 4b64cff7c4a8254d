"""The everyday loop, end to end with the real tools: edit params and rerun exactly what reads
them, go back through the run-cache, stop a stage cleanly, see the edit in the diffs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import (
    ALL_STAGES,
    changed_stages,
    client,
    default_sigint,
    dvc,
    git,
    outputs_snapshot,
    ran_stages,
    set_param,
    stage_runs,
)

pytestmark = pytest.mark.slow  # copies of the repo where DVC, MLflow and servers really run


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
    "classifier.arch": ("cnn", {"train_classifier", "evaluate", "evaluate_gan", "report"}),
    "gan.batch_size": (32, {"train_gan", "report"}),
    "gan_eval.threshold": (0.5, {"evaluate_gan", "report"}),
    "device": ("cpu", {"train_classifier", "evaluate", "train_gan", "evaluate_gan", "report"}),
}


@pytest.mark.parametrize("key", list(EDITS))
def test_one_param_edit_marks_exactly_the_stages_that_read_it(
    tiny_repo: tuple[Path, dict[str, str]], key: str
) -> None:
    path, env = tiny_repo
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
    tiny_repo: tuple[Path, dict[str, str]], how: str
) -> None:
    """Ctrl-C reaches DVC and the stage (the terminal signals the whole process group; DVC
    waits for the stage); SIGTERM reaches the stage alone (`kill`, a job runner). Either way
    the run ends FAILED, no temporary file is left, DVC records nothing, and the outputs
    DVC recorded (removed by DVC before the stage ran) come back with the command the error
    line names, so the pipeline is up to date again once the edit is undone."""
    import psutil

    path, env = tiny_repo
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
    tiny_repo: tuple[Path, dict[str, str]],
) -> None:
    """After the stops above, the same edit reruns cleanly; `dvc params diff`, `dvc metrics
    diff` and `dvc plots diff` show it against the committed baseline."""
    path, env = tiny_repo
    set_param(path, "gan.epochs", 2)
    try:
        assert changed_stages(path, env) == {"train_gan", "report"}
        assert ran_stages(dvc(path, env, "repro").stdout) == {"train_gan", "evaluate_gan", "report"}
        params = json.loads(dvc(path, env, "params", "diff", "--json").stdout)
        assert params == {"params.yaml": {"gan.epochs": {"old": 1, "new": 2, "diff": 1}}}
        metrics = json.loads(dvc(path, env, "metrics", "diff", "--json").stdout)
        assert set(metrics) == {"reports/gan/metrics.json"}  # the classifier did not change
        assert {"frechet_ratio", "decent_rate"} <= set(metrics["reports/gan/metrics.json"])
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
