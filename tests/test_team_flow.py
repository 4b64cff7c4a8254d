"""A team shares its work, end to end with the real tools: an `mlflow server` on PostgreSQL,
two clones of the repo that each run a queued sweep logging to it and `dvc exp push` to a
shared Git remote and a shared DVC remote, and a third clone that pulls, shows and applies
their experiments and gets the outputs from the DVC remote without training."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from digitlab.store import EXPERIMENT, KIND_TAG, PIPELINE_TAG
from helpers import (
    BIN,
    changed_stages,
    dvc,
    free_port,
    git,
    mlflow_server,
    ran_stages,
    stop,
    wait_until_healthy,
)
from postgres import INSTALL, postgres, postgres_bin
from test_team import SWEEP_STAGES, finished, queue_status

# Clones where DVC, MLflow, PostgreSQL and a server really run. Skipped without PostgreSQL
# before any fixture (the tiny baseline) is built. The first test's set-up runs both sweeps
# (and builds the tiny baseline if no module did yet): more than the 900 s default on a busy
# two-core machine.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        postgres_bin() is None,
        reason=f"Debian's postgresql is not installed (no /usr/lib/postgresql/*/bin): {INSTALL}",
    ),
    pytest.mark.timeout(1800),
]

# Each clone's sweep: experiment name → gan.batch_size (gan.* reaches only train_gan,
# evaluate_gan and report). Batches larger than the tiny baseline's 64: fewer steps.
SWEEPS = {
    "alice": {"alice-bs128": 128},
    "bob": {"bob-bs256": 256},
}
APPLIED = "bob-bs256"  # what the third clone applies
REGISTERED = "digitlab-generator"  # the model train_gan registers
GAN_METRICS = "reports/gan/metrics.json"
STAGE_RUNS = sum(map(len, SWEEPS.values())) * len(SWEEP_STAGES)  # 2 experiments × 3 stages


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Print how long a phase took (shown with pytest -s)."""
    start = time.perf_counter()
    yield
    print(f"\nteam flow: {name}: {time.perf_counter() - start:.0f} s", flush=True)


@dataclass
class Server:
    uri: str  # http://127.0.0.1:<port>
    proc: subprocess.Popen
    log: Path
    started: float  # time.perf_counter() when PostgreSQL started

    def wait(self) -> None:
        """Wait until it answers (it starts while the clones are made: creating MLflow's
        tables in PostgreSQL takes tens of seconds)."""
        wait_until_healthy(self.proc, int(self.uri.rsplit(":", 1)[1]), self.log)
        up = time.perf_counter() - self.started
        print(f"\nteam flow: PostgreSQL and mlflow server up {up:.0f} s after their start")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The team's tracking server, starting: `mlflow server` on a fresh PostgreSQL database."""
    try:
        import psycopg2  # noqa: F401  (MLflow's driver for PostgreSQL)
    except ImportError:
        pytest.fail("psycopg2 is missing: run `make setup` (psycopg2-binary, a dev dependency)")
    folder = tmp_path_factory.mktemp("server")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    started = time.perf_counter()
    with postgres(free_port()) as store:
        port, log = free_port(), folder / "server.log"
        proc = mlflow_server(port, folder, env, log, store)
        try:
            yield Server(f"http://127.0.0.1:{port}", proc, log, started)
        finally:
            stop(proc)


@dataclass
class Team:
    origin: Path  # the shared bare Git repository
    storage: Path  # the shared DVC remote
    env: dict[str, str]  # MLFLOW_TRACKING_URI names the server
    clones: dict[str, Path] = field(default_factory=dict)  # who → their clone
    ran: dict[str, set[str]] = field(default_factory=dict)  # experiment → stages its log ran
    shown: dict[str, dict] = field(default_factory=dict)  # experiment → `dvc exp show` data
    outputs: dict[str, str] = field(default_factory=dict)  # command → its output


def experiments_shown(path: Path, env: dict[str, str]) -> dict[str, dict]:
    """`dvc exp show --json` as {experiment name: {'rev': commit, 'data': its data}}."""
    shown = json.loads(dvc(path, env, "exp", "show", "--json").stdout)
    return {
        exp["name"]: exp["revs"][0]
        for baseline in shown
        for exp in baseline.get("experiments") or []
    }


def batch_size(data: dict) -> int:
    return data["params"]["params.yaml"]["data"]["gan"]["batch_size"]


def out_md5(lock_text: str, stage: str, path: str) -> str:
    """The md5 a dvc.lock records for one output of one stage."""
    outs = yaml.safe_load(lock_text)["stages"][stage]["outs"]
    return next(out["md5"] for out in outs if out["path"] == path)


def in_cache(repo: Path, md5: str) -> bool:
    return (repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).is_file()


def start_queue(clone: Path, env: dict[str, str], log: Path) -> None:
    """`dvc queue start -j 1`, its output in a file: its worker's parent process inherits the
    command's stdout and stderr, so helpers.dvc (pipes) would wait until the queue is done."""
    with log.open("w") as out:
        result = subprocess.run(
            ["dvc", "queue", "start", "-j", "1"],
            cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=120,
        )  # fmt: skip
    assert result.returncode == 0, log.read_text()


def queue_logs(clone: Path, env: dict[str, str], names: list[str]) -> str:
    """The end of `dvc queue logs` of each named experiment: why it failed."""
    logs = [dvc(clone, env, "queue", "logs", name, check=False) for name in names]
    return "\n".join(
        f"--- {n}:\n{(r.stdout + r.stderr)[-3000:]}" for n, r in zip(names, logs, strict=True)
    )


def wait_for_sweeps(team: Team, server: Server, timeout: float = 900) -> None:
    """Wait until every queued experiment of both clones succeeded: cheap Git look-ups often,
    `dvc queue status` (seconds of CPU) now and then to fail fast on a failed one."""
    deadline, checked = time.monotonic() + timeout, time.monotonic()
    pending = {who: set(sweep) for who, sweep in SWEEPS.items()}
    while any(pending.values()):
        assert server.proc.poll() is None, f"the server exited:\n{server.log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"not done after {timeout} s: {pending}"
        time.sleep(2)
        for who, clone in team.clones.items():
            pending[who] -= finished(clone)
        if time.monotonic() - checked > 20:
            checked = time.monotonic()
            for who, names in pending.items():
                status = queue_status(team.clones[who], team.env) if names else {}
                failed = sorted(n for n in names if status.get(n) == "Failed")
                assert not failed, f"{who}: {status}\n" + queue_logs(
                    team.clones[who], team.env, failed
                )
    for who, clone in team.clones.items():  # its commit made, a task still tidies up
        while (status := queue_status(clone, team.env)) and {"Queued", "Running"} & set(
            status.values()
        ):
            assert time.monotonic() < deadline, f"not done after {timeout} s: {status}"
            time.sleep(2)
        assert {n: status.get(n) for n in SWEEPS[who]} == dict.fromkeys(SWEEPS[who], "Success")


@pytest.fixture(scope="module")
def team(
    server: Server,
    tiny_repo: tuple[Path, dict[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Team:
    """The shared remotes hold the tiny baseline; two clones each ran a queued sweep (both
    queues at once, one worker each) logging to the server, and pushed their experiments."""
    seed, env = tiny_repo
    folder = tmp_path_factory.mktemp("team")
    # Stages fail on a server that is silent for 10 s (test_reliability proves it); here two
    # queue workers, the server and PostgreSQL share a busy machine, so a slow answer is waited for.
    patient = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "60", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3"}
    team = Team(
        folder / "origin.git",
        folder / "dvc-storage",
        {**env, "MLFLOW_TRACKING_URI": server.uri, **patient},
    )
    with phase("baseline pushed to the shared Git and DVC remotes"):
        git(folder, "init", "-q", "--bare", "-b", "main", str(team.origin))
        dvc(seed, env, "remote", "add", "-d", "storage", str(team.storage))
        git(seed, "add", ".dvc/config")
        git(seed, "commit", "-qm", "the team's DVC remote")
        git(seed, "push", "-q", str(team.origin), "HEAD:main")
        dvc(seed, env, "push", "--run-cache")
    with phase("two clones: git clone, dvc pull, queue a sweep"):
        for who, sweep in SWEEPS.items():
            clone = team.clones[who] = folder / who
            git(folder, "clone", "-q", str(team.origin), who)
            dvc(clone, team.env, "pull")
            for name, size in sweep.items():
                out = dvc(clone, team.env, "exp", "run", "--queue", "-n", name,
                          "-S", f"gan.batch_size={size}").stdout  # fmt: skip
                assert f"Queued experiment '{name}'" in out, out
    server.wait()
    with phase(f"both sweeps ({sum(map(len, SWEEPS.values()))} experiments, 2 workers)"):
        for clone in team.clones.values():  # both queues at once: two writers on the server
            start_queue(clone, team.env, folder / f"{clone.name}-queue-start.log")
        try:
            wait_for_sweeps(team, server)
        except BaseException:  # no worker left running after the test
            for clone in team.clones.values():
                dvc(clone, team.env, "queue", "stop", "--kill", check=False, timeout=120)
            raise
    with phase("dvc exp push from both clones"):
        for who, clone in team.clones.items():
            for name in SWEEPS[who]:
                team.ran[name] = ran_stages(dvc(clone, team.env, "queue", "logs", name).stdout)
            team.shown.update(experiments_shown(clone, team.env))
            out = dvc(clone, team.env, "exp", "push", "origin")
            team.outputs[f"{who}$ dvc exp push origin"] = out.stdout + out.stderr
    return team


def test_the_server_holds_every_stage_run_of_both_clones(team: Team, server: Server) -> None:
    import mlflow

    names = [name for sweep in SWEEPS.values() for name in sweep]
    assert set(team.shown) == set(names)
    assert {name: batch_size(team.shown[name]["data"]) for name in names} == {
        name: size for sweep in SWEEPS.values() for name, size in sweep.items()
    }
    assert team.ran == dict.fromkeys(names, SWEEP_STAGES)  # what the queue logs say ran

    client = mlflow.MlflowClient(server.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    stages = [r for r in runs if r.data.tags[KIND_TAG] == "stage"]
    parents = {r.info.run_id: r for r in runs if r.data.tags[KIND_TAG] == "pipeline"}
    assert len(runs) == len(stages) + len(parents)
    # Exactly one run per stage each experiment ran: none lost, none twice.
    expected = sorted((name, stage) for name in names for stage in team.ran[name])
    assert sorted((r.data.tags["dvc.exp"], r.info.run_name) for r in stages) == expected
    assert len(stages) == STAGE_RUNS
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(p.data.tags[PIPELINE_TAG] for p in parents.values()) == sorted(
        f"exp:{name}" for name in names
    )
    for run in stages:
        name = run.data.tags["dvc.exp"]
        parent = parents[run.data.tags["mlflow.parentRunId"]]  # under its own pipeline run
        assert parent.data.tags[PIPELINE_TAG] == run.data.tags[PIPELINE_TAG] == f"exp:{name}"
        assert parent.data.params["gan.batch_size"] == str(batch_size(team.shown[name]["data"]))
        metrics = team.shown[name]["data"]["metrics"][GAN_METRICS]["data"]
        if run.info.run_name == "evaluate_gan":
            assert run.data.metrics["gan_eval/decent_rate"] == metrics["decent_rate"]
            assert parent.data.metrics["gan_eval/decent_rate"] == metrics["decent_rate"]
        if run.info.run_name == "train_gan":  # every logged step arrived, once
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "gan/d_loss")]
            assert steps and len(steps) == len(set(steps)), steps
        if run.info.run_name == "report":  # its page went to the server's artifact store
            assert [a.path for a in client.list_artifacts(run.info.run_id, "report")] == [
                "report/index.html"
            ]
    for clone in team.clones.values():  # nothing went to a local store
        assert not (clone / "mlflow.db").exists()
        assert not (clone / "mlartifacts").exists()

    # The model registry: one version of the generator per experiment, from its train_gan run.
    versions = client.search_model_versions(f"name='{REGISTERED}'")
    trained = {
        r.data.tags["dvc.exp"]: r.info.run_id for r in stages if r.info.run_name == "train_gan"
    }
    assert {v.tags["dvc.exp"]: v.run_id for v in versions} == trained
    assert len(versions) == len(trained) and {v.status for v in versions} == {"READY"}

    # Where the sweeps' time went (pytest -s): each stage run's seconds, and the wall time.
    for name in names:
        took = {r.info.run_name: (r.info.end_time - r.info.start_time) / 1000
                for r in stages if r.data.tags["dvc.exp"] == name}  # fmt: skip
        print(f"team flow: {name}: " + ", ".join(f"{k} {v:.0f} s" for k, v in sorted(took.items())))
    span = max(r.info.end_time for r in stages) - min(r.info.start_time for r in stages)
    print(f"team flow: first stage start to last stage end: {span / 1000:.0f} s")
    # The two clones wrote to the server at the same time.
    spans = {
        who: [(min(r.info.start_time for r in stages if r.data.tags["dvc.exp"] == name),
               max(r.info.end_time for r in stages if r.data.tags["dvc.exp"] == name))
              for name in sweep]
        for who, sweep in SWEEPS.items()
    }  # fmt: skip
    assert any(a[0] < b[1] and b[0] < a[1] for a in spans["alice"] for b in spans["bob"]), spans


def test_a_third_clone_pulls_shows_and_applies_an_experiment_without_training(
    team: Team, server: Server, tmp_path: Path
) -> None:
    import mlflow

    env = team.env  # were anything to train, its runs would reach the server
    clone = tmp_path / "carol"
    with phase("third clone: git clone, dvc exp pull, dvc exp show"):
        git(tmp_path, "clone", "-q", str(team.origin), clone.name)
        out = dvc(clone, env, "exp", "pull", "origin", "--no-cache")  # Git only: a quick look
        team.outputs["carol$ dvc exp pull origin --no-cache"] = out.stdout + out.stderr
        shown = experiments_shown(clone, env)
        columns = ["--drop", ".*", "--keep", "Experiment|decent_rate|frechet_ratio|gan.batch_size"]
        table = dvc(clone, {**env, "COLUMNS": "100"}, "exp", "show", "--no-pager", *columns)
        team.outputs[f"carol$ dvc exp show {' '.join(columns)}"] = table.stdout
    assert set(shown) == set(team.shown)  # every experiment of both clones
    for name, exp in shown.items():  # with the same commit, params and metrics
        assert exp["rev"] == team.shown[name]["rev"]
        assert exp["data"]["params"] == team.shown[name]["data"]["params"]
        assert exp["data"]["metrics"] == team.shown[name]["data"]["metrics"]
    generators = {
        name: out_md5(
            git(clone, "show", f"{exp['rev']}:dvc.lock"), "train_gan", "models/generator.pt"
        )
        for name, exp in shown.items()
    }
    assert len(set(generators.values())) == len(generators)  # four different models

    with phase(f"third clone: dvc exp pull origin {APPLIED}, dvc exp apply {APPLIED}"):
        out = dvc(clone, env, "exp", "pull", "origin", APPLIED)  # now with its outputs
        team.outputs[f"carol$ dvc exp pull origin {APPLIED}"] = out.stdout + out.stderr
        out = dvc(clone, env, "exp", "apply", APPLIED)
        team.outputs[f"carol$ dvc exp apply {APPLIED}"] = out.stdout + out.stderr
        out = dvc(clone, env, "pull")  # nothing left to download
        team.outputs["carol$ dvc pull"] = out.stdout + out.stderr
    assert not ran_stages(out.stdout)
    assert changed_stages(clone, env) == set()  # outputs match dvc.lock: nothing to rerun
    lock = (clone / "dvc.lock").read_text()
    assert lock == git(clone, "show", f"{shown[APPLIED]['rev']}:dvc.lock")
    model = clone / "models" / "generator.pt"
    assert hashlib.md5(model.read_bytes()).hexdigest() == generators[APPLIED]
    metrics = json.loads((clone / GAN_METRICS).read_text())
    assert metrics == shown[APPLIED]["data"]["metrics"][GAN_METRICS]["data"]
    # Only the applied experiment's outputs came down, from the DVC remote.
    assert {name: in_cache(clone, md5) for name, md5 in generators.items()} == {
        name: name == APPLIED for name in generators
    }
    # Nothing trained or logged: the server holds the sweeps' runs only, and no local store.
    client = mlflow.MlflowClient(server.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    stages = client.search_runs([experiment.experiment_id], f"tags.`{KIND_TAG}` = 'stage'")
    assert len(stages) == STAGE_RUNS
    assert not (clone / "mlflow.db").exists()
    # The server holds the applied experiment's training history as its history.csv has it.
    (trained,) = [r for r in stages
                  if r.data.tags["dvc.exp"] == APPLIED and r.info.run_name == "train_gan"]  # fmt: skip
    with (clone / "reports" / "gan" / "history.csv").open() as history:
        rows = [(int(row["step"]), float(row["d_loss"])) for row in csv.DictReader(history)]
    logged = client.get_metric_history(trained.info.run_id, "gan/d_loss")
    assert sorted((m.step, m.value) for m in logged) == rows

    for command, text in team.outputs.items():  # for the README (pytest -s)
        print(f"\n{command}\n{text.rstrip()}")


RACERS = 8
# One run of a stage logging data/prepared (a digest no run logged before) and moving a new
# alias of model argv[3] to version 1, as a stage's registration does, all at once: each
# process says it is ready (MLflow imported) in a file, then waits for the start time the
# test writes in file argv[2] once every one is ready; the aliases move 10 s after that.
LOG_DATASET = """
import os, sys, time
from pathlib import Path
import mlflow
from digitlab.tracking import despite_a_race, log_prepared_data
go = Path(sys.argv[2])
(go.parent / f"ready-{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.01)
at = float(go.read_text())
time.sleep(max(0.0, at - time.time()))
with mlflow.start_run(experiment_id=sys.argv[1]):
    log_prepared_data("mnist", "training")
time.sleep(max(0.0, at + 10 - time.time()))
despite_a_race(mlflow.MlflowClient().set_registered_model_alias, sys.argv[3], "latest-mnist", 1)
"""


def test_runs_writing_one_new_dataset_and_alias_at_once_all_succeed(
    server: Server, tmp_path: Path
) -> None:
    """Several stages that log the same new dataset and move one new alias at the same moment
    (two clones' queues do) all succeed: MLflow's SQL store refuses all but one insert of a
    new key."""
    server.wait()
    digest = hashlib.md5(str(tmp_path).encode()).hexdigest()
    (tmp_path / "dvc.lock").write_text(
        yaml.safe_dump(
            {"stages": {"prepare": {"outs": [{"path": "data/prepared", "md5": digest}]}}}
        )
    )
    import mlflow

    client = mlflow.MlflowClient(server.uri)
    experiment = client.create_experiment(f"datasets-{digest}")
    model = client.create_registered_model(f"raced-{digest}").name
    registering = client.create_run(experiment).info.run_id
    client.create_model_version(model, source=f"runs:/{registering}/model", run_id=registering)
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri}
    go = tmp_path / "go"
    runs = [
        subprocess.Popen([str(BIN / "python"), "-c", LOG_DATASET, experiment, str(go), model], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(RACERS)
    ]  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < RACERS:
        assert time.monotonic() < deadline and all(r.poll() is None for r in runs), "not ready"
        time.sleep(0.1)
    (tmp_path / "go.part").write_text(str(time.time() + 1))  # a second for all to read it
    (tmp_path / "go.part").rename(go)  # whole, never half written
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0] * RACERS, "\n".join(outputs)
    logged = client.search_runs([experiment])
    logged = [run for run in logged if run.info.run_id != registering]
    assert len(logged) == RACERS, "\n".join(outputs)
    assert all([d.dataset.digest for d in run.inputs.dataset_inputs] == [digest] for run in logged)
    assert client.get_registered_model(model).aliases == {"latest-mnist": "1"}
