"""Hostile environments and inputs, with real processes: a tracking server that is down, hangs
or goes away mid-run, `kill` of the dvc process, stop signals at a stage's close-out, damaged
files, settings too big for the machine. Each case checks the exit code, the one last line,
the MLflow run's status and that the outputs are what dvc.lock records."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch

from helpers import (
    changed_stages,
    default_sigint,
    dvc,
    free_port,
    git,
    mlflow_server,
    outputs_snapshot,
    set_param,
    stage_runs,
    stop,
    wait_until_healthy,
)

pytestmark = pytest.mark.slow  # a copy of the repo where DVC, MLflow and servers really run
EVERY_OUTPUT = ("data/raw", "data/prepared", "models", "reports")  # of every stage


@pytest.fixture
def pristine(tiny_repo: tuple[Path, dict[str, str]]) -> Iterator[tuple[Path, dict[str, str]]]:
    """The tiny repo; afterwards its params and outputs are back to the committed baseline:
    Git's files as committed, and every output byte for byte as before the test (`dvc
    checkout` runs only when one differs: each dvc command costs seconds)."""
    path, env = tiny_repo
    before = outputs_snapshot(path, EVERY_OUTPUT)
    yield path, env
    git(path, "checkout", "-q", "--", ".")
    if outputs_snapshot(path, EVERY_OUTPUT) != before:
        dvc(path, env, "checkout", "--force")
    assert git(path, "status", "--porcelain", "--untracked-files=no") == ""
    assert outputs_snapshot(path, EVERY_OUTPUT) == before


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("digitlab: error")]


def run_stage(
    path: Path, env: dict[str, str], stage: str, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python stages/<stage>.py` on its own (no DVC: nothing removes its outputs first)."""
    return subprocess.run([sys.executable, f"stages/{stage}.py"], cwd=path, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


# ---------------------------------------------------------------- tracking servers


class SilentServer:
    """A TCP server on the loopback address that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        deadline = time.monotonic() + 300  # bounded: it stops by itself
        while time.monotonic() < deadline:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.mark.parametrize(("server", "limit"), [("down", 30), ("silent", 60)])
def test_a_tracking_server_that_is_down_or_silent_fails_the_stage_in_seconds(
    pristine: tuple[Path, dict[str, str]], server: str, limit: float
) -> None:
    path, env = pristine
    silent = SilentServer() if server == "silent" else None
    port = silent.port if silent else free_port()  # nothing listens on a free port
    uri = f"http://127.0.0.1:{port}"
    before, runs_before = outputs_snapshot(path), len(stage_runs(path))
    start = time.perf_counter()
    try:
        result = dvc(path, {**env, "MLFLOW_TRACKING_URI": uri}, "repro", "-f", "-s", "evaluate",
                     check=False, timeout=120)  # fmt: skip
    finally:
        if silent:
            silent.close()
    seconds = time.perf_counter() - start
    assert result.returncode != 0
    (line,) = errors(result.stderr)
    assert line.startswith(f"digitlab: error: MLFLOW_TRACKING_URI={uri}: the MLflow store "
                           "cannot be used (")  # fmt: skip
    assert ("connection refused" if server == "down" else "no answer within 10 s") in line
    assert "Traceback" not in result.stderr
    assert seconds < limit, f"took {seconds:.0f} s"
    assert len(stage_runs(path)) == runs_before  # nothing went to the local store either
    dvc(path, env, "checkout", "evaluate")  # what the error line says to run
    assert outputs_snapshot(path) == before


def test_a_server_that_goes_away_mid_run_fails_cleanly(
    pristine: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    import mlflow

    path, env = pristine
    before = outputs_snapshot(path)
    set_param(path, "gan.epochs", 1000)  # long enough for the server to go while it trains
    port, log = free_port(), tmp_path / "server.log"
    server = mlflow_server(port, tmp_path, env, log)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(server, port, log)
        proc = subprocess.Popen([sys.executable, "stages/train_gan.py"], cwd=path,
                                env={**env, "MLFLOW_TRACKING_URI": uri}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        client = mlflow.MlflowClient(uri)
        deadline = time.monotonic() + 120
        while not _running_runs(client):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.5)
        time.sleep(2)  # into training, logging to the server
    finally:
        stop(server)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert last_line(stderr).startswith(
        f"digitlab: error: MLFLOW_TRACKING_URI={uri}: the MLflow store cannot be used ("
    )
    assert "could not be closed as FAILED" in stderr  # which run could not be logged
    assert "Traceback" not in stderr
    git(path, "checkout", "-q", "--", "params.yaml")
    assert outputs_snapshot(path) == before  # the stage failed before replacing anything


def _running_runs(client: object) -> list:
    try:
        experiment = client.get_experiment_by_name("digitlab")  # type: ignore[attr-defined]
        if experiment is None:
            return []
        return client.search_runs(  # type: ignore[attr-defined]
            [experiment.experiment_id],
            "attributes.status = 'RUNNING' and tags.`dvc.stage` = 'train_gan'",
        )
    except Exception:
        return []


# ---------------------------------------------------------------- stopping


def test_killing_dvc_stops_its_stage_and_restores_the_outputs(
    pristine: tuple[Path, dict[str, str]],
) -> None:
    path, env = pristine
    before = outputs_snapshot(path)
    set_param(path, "gan.epochs", 1000)  # still training when dvc goes (tiny params end in 1 s)
    since = int(time.time() * 1000)
    proc = subprocess.Popen(["dvc", "repro", "-f", "-s", "train_gan"], cwd=path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not stage_runs(
            path, f"tags.`dvc.stage` = 'train_gan' and attributes.start_time >= {since}"
        ):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.5)
        stages = [p for p in psutil.Process(proc.pid).children(recursive=True)
                  if "stages/train_gan.py" in " ".join(p.cmdline())]  # fmt: skip
        assert stages
        proc.terminate()  # `kill <pid of dvc>`: DVC ends at once, without its stage
        proc.communicate(timeout=30)
        killed = time.monotonic()
        _, alive = psutil.wait_procs(stages, timeout=10)
        assert alive == [], f"stage still running {time.monotonic() - killed:.0f} s after dvc"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        git(path, "checkout", "-q", "--", "params.yaml")
    (run,) = stage_runs(
        path, f"tags.`dvc.stage` = 'train_gan' and attributes.start_time >= {since}"
    )
    assert run.info.status == "FAILED"
    assert "train_gan" not in changed_stages(path, env)
    assert outputs_snapshot(path) == before


def test_a_stop_at_the_close_out_ends_finished_or_failed_never_between(
    pristine: tuple[Path, dict[str, str]],
) -> None:
    """SIGTERM timed around the stage's last line, while its MLflow run closes: each time
    either exit 0 with a FINISHED run, or 143 with the one line and a FAILED run."""
    path, env = pristine
    rng = random.Random(0)
    outcomes = set()
    for attempt in range(4):
        since = int(time.time() * 1000)
        proc = subprocess.Popen([sys.executable, "stages/report.py"], cwd=path,
                                env={**env, "PYTHONUNBUFFERED": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=default_sigint)  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("report: reports/index.html"):  # the stage's last line
                time.sleep(rng.uniform(0, 0.3) if attempt else 0)
                proc.send_signal(signal.SIGTERM)
                break
        _, stderr = proc.communicate(timeout=60)
        (run,) = stage_runs(
            path, f"tags.`dvc.stage` = 'report' and attributes.start_time >= {since}"
        )
        assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
        if proc.returncode == 0:
            assert run.info.status == "FINISHED" and errors(stderr) == []
        else:
            assert proc.returncode == 143 and run.info.status == "FAILED"
            assert last_line(stderr) == "digitlab: error: stopped by SIGTERM"
        outcomes.add(proc.returncode)
    assert outcomes <= {0, 143}


# ---------------------------------------------------------------- failed writes


def test_a_checkpoint_past_the_file_size_limit_names_itself_not_the_store(
    pristine: tuple[Path, dict[str, str]],
) -> None:
    """`dvc repro -f -s train_gan` under `ulimit -f` 1.5 MB above mlflow.db's size: the store
    can grow, a generator of about 2.9 MB cannot be written. One line naming the file and
    why, nothing about mlflow.db, no traceback; the restore command it names works."""
    path, env = pristine
    before = outputs_snapshot(path)
    set_param(path, "gan.discriminator.hidden", [512, 512])  # G: 100-512-512-784, 2.9 MB
    limit_kb = ((path / "mlflow.db").stat().st_size + 1_500_000) // 1024
    try:
        result = subprocess.run(
            ["bash", "-c", f"ulimit -f {limit_kb}; exec dvc repro -f -s train_gan"],
            cwd=path, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        git(path, "checkout", "-q", "--", "params.yaml")
    assert result.returncode != 0
    (line,) = errors(result.stderr)
    assert line == (
        "digitlab: error: models/generator.pt: cannot be written (file too large: the file-size "
        "limit of this process (ulimit -f) is reached) (`dvc checkout train_gan` restores its "
        "last good outputs)"
    )
    assert "mlflow.db" not in result.stderr and "Traceback" not in result.stderr
    dvc(path, env, "checkout", "train_gan")  # as the line says
    assert outputs_snapshot(path) == before


def test_a_late_failure_leaves_no_unsaved_outputs_so_the_restore_hint_works(
    pristine: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """The artifact store fails once train_gan has written its checkpoints: the line names
    the MLflow store's file and why (no advice to move mlflow.db), the stage removes what it
    wrote, and `dvc checkout train_gan`, as printed, brings the last good outputs back."""
    path, env = pristine
    before = outputs_snapshot(path)
    # a new store, whose artifacts go to this clone's mlartifacts/ (the clone's own store keeps
    # them in the shared baseline's); a file stands where that folder should be
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    artifacts = path / "mlartifacts"
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.write_text("a file where MLflow's artifact folder should be")
    try:
        result = dvc(path, {**env, "MLFLOW_TRACKING_URI": store}, "repro", "-f", "-s", "train_gan",
                     check=False)  # fmt: skip
    finally:
        artifacts.unlink()
    assert result.returncode != 0
    (line,) = errors(result.stderr)
    assert line.startswith("digitlab: error: mlartifacts")
    assert (
        f"a file is where a folder is needed (writing to the MLflow store MLFLOW_TRACKING_URI={store})"
        in line
    )
    assert "mv " not in line and "Traceback" not in result.stderr
    assert line.endswith("(`dvc checkout train_gan` restores its last good outputs)")
    assert not (path / "models/generator.pt").exists()  # written, then removed: unsaved
    dvc(path, env, "checkout", "train_gan")
    assert outputs_snapshot(path) == before


# ---------------------------------------------------------------- damaged files


def _damage_split(path: Path) -> None:
    target = path / "data/prepared/test.pt"
    target.write_bytes(target.read_bytes()[:1000])


def _mismatched_generator(path: Path) -> None:
    target = path / "models/generator.pt"
    checkpoint = torch.load(target, weights_only=True)
    checkpoint["config"]["hidden"] = [7, 7]
    torch.save(checkpoint, target)


def _classifier_without_config(path: Path) -> None:
    target = path / "models/classifier.pt"
    checkpoint = torch.load(target, weights_only=True)
    del checkpoint["config"]
    torch.save(checkpoint, target)


def _classifier_of_another_dataset(path: Path) -> None:
    target = path / "models/classifier.pt"
    checkpoint = torch.load(target, weights_only=True)
    checkpoint["dataset"] = "fashion_mnist"
    torch.save(checkpoint, target)


DAMAGES = {
    "truncated split": ("evaluate", _damage_split,
                        "data/prepared/test.pt: damaged or not a prepared split; run `dvc repro -f prepare`"),
    "generator that does not fit its settings": ("evaluate_gan", _mismatched_generator,
                                                 "models/generator.pt: weights do not fit the saved settings ("),
    "classifier without settings": ("evaluate", _classifier_without_config,
                                    "models/classifier.pt: its saved settings are missing or damaged"),
    "classifier of another dataset": ("evaluate_gan", _classifier_of_another_dataset,
                                      "models/classifier.pt was trained on data.dataset='fashion_mnist' but params.yaml has 'mnist'"),
    "mlflow.db that is not a database": ("evaluate", lambda p: (p / "mlflow.db").write_bytes(b"not sqlite" * 100),
                                         "mlflow.db: the MLflow store cannot be used ("),
    "params.yaml that is a directory": ("evaluate", lambda p: ((p / "params.yaml").unlink(), (p / "params.yaml").mkdir()),
                                        "params.yaml: is a directory, expected the params file"),
    "params.yaml that is not UTF-8": ("evaluate", lambda p: (p / "params.yaml").write_bytes(b"seed: \xff\xfe\n"),
                                      "params.yaml: not UTF-8 text"),
}  # fmt: skip


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_file_gets_one_line_and_nothing_else_changes(
    pristine: tuple[Path, dict[str, str]], damage: str
) -> None:
    path, env = pristine
    stage, harm, expected = DAMAGES[damage]
    db = path / "mlflow.db"
    saved_db = db.read_bytes()
    harm(path)
    damaged = outputs_snapshot(path)
    try:
        result = run_stage(path, env, stage)
    finally:
        if (path / "params.yaml").is_dir():
            (path / "params.yaml").rmdir()
        db.write_bytes(saved_db)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in last_line(result.stderr)
    assert last_line(result.stderr).startswith("digitlab: error: ")
    assert outputs_snapshot(path) == damaged  # the stage wrote nothing


def test_a_file_tracking_uri_gets_one_line(pristine: tuple[Path, dict[str, str]]) -> None:
    path, env = pristine
    before = outputs_snapshot(path)
    uri = (path / "mlruns").as_uri()
    result = run_stage(path, {**env, "MLFLOW_TRACKING_URI": uri}, "evaluate")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert last_line(result.stderr).startswith(
        f"digitlab: error: MLFLOW_TRACKING_URI={uri}: the MLflow store cannot be used ("
    )
    assert outputs_snapshot(path) == before


def test_evaluate_gan_refuses_a_judge_that_does_not_match_params(
    pristine: tuple[Path, dict[str, str]],
) -> None:
    path, env = pristine
    before = outputs_snapshot(path)
    set_param(path, "classifier.arch", "cnn")  # models/classifier.pt is the tiny MLP
    result = run_stage(path, env, "evaluate_gan")
    assert result.returncode == 1
    assert last_line(result.stderr) == (
        "digitlab: error: models/classifier.pt was trained with classifier.arch='mlp' but "
        "params.yaml has 'cnn': run `dvc repro train_classifier`"
    )
    assert outputs_snapshot(path) == before


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"gan.generator.hidden": [10_000_000]}, "gan.generator.hidden = [10000000] is not allowed"),
        ({"gan.discriminator.hidden": [65_536] * 3}, "gan.discriminator.hidden makes the discriminator too big"),
        ({"classifier.arch": "cnn", "classifier.batch_size": 1_000_000_000},  # the default CNN
         "classifier.batch_size gives batches of 55,000 images"),
    ],
)  # fmt: skip
def test_settings_too_big_for_memory_are_refused_before_any_work(
    pristine: tuple[Path, dict[str, str]], changes: dict[str, object], expected: str
) -> None:
    path, env = pristine
    before = outputs_snapshot(path)
    for key, value in changes.items():
        set_param(path, key, value)
    start = time.perf_counter()
    result = dvc(path, env, "repro", check=False, timeout=120)
    seconds = time.perf_counter() - start
    assert result.returncode != 0
    (line,) = errors(result.stderr)
    assert expected in line and "Traceback" not in result.stderr
    assert seconds < 16, f"took {seconds:.1f} s"  # 5.4 s measured alone (its bar: 10 s)
    git(path, "checkout", "-q", "--", "params.yaml")
    dvc(path, env, "checkout")  # what the error line says
    assert outputs_snapshot(path) == before
