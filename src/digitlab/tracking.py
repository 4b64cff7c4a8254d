"""MLflow conventions: one store for the repo, one run per executed stage, a parent per pipeline."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from digitlab.errors import DigitlabError, ignore_stops
from digitlab.params import Params

EXPERIMENT = "digitlab"
PIPELINE_TAG = "digitlab.pipeline"
KIND_TAG = "digitlab.kind"  # 'pipeline' on parent runs, 'stage' on stage runs
WORKSPACE = "workspace"  # the dvc.exp tag of runs that no DVC experiment started


def repo_root() -> Path:
    """The main repository root: DVC_ROOT when DVC runs the stage (queued experiments run
    in temporary copies and DVC points this at the original), else the nearest folder
    upwards holding dvc.yaml."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return here


def tracking_uri(root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI if set, else the SQLite store at <root>/mlflow.db."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or repo_root()) / 'mlflow.db'}"
    )


def experiment_name() -> str:
    """The DVC experiment this stage runs in (DVC_EXP_NAME), else 'workspace'."""
    return os.environ.get("DVC_EXP_NAME") or WORKSPACE


def git_commit(cwd: Path | None = None) -> str:
    """The commit the pipeline runs on: an experiment's baseline (DVC_EXP_BASELINE_REV; a queued
    one may run after HEAD has moved on), else HEAD; 'none' outside a repo or before the
    first commit."""
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        return os.environ["DVC_EXP_BASELINE_REV"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "none"
    return out.stdout.strip() if out.returncode == 0 else "none"


def pipeline_id(params: Params, commit: str) -> str:
    """Groups the stage runs of one pipeline: the DVC experiment name when DVC gives one,
    else a hash of the params and the git commit."""
    exp = os.environ.get("DVC_EXP_NAME")
    if exp:
        return f"exp:{exp}"
    blob = json.dumps(params.model_dump(mode="json"), sort_keys=True) + commit
    return "params:" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def flatten(obj: Mapping[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a.b': 1}"""
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, sep, f"{name}{sep}"))
        else:
            flat[name] = value
    return flat


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on `<db>.lock` beside a SQLite store (nothing for other stores).

    Processes that create a SQLite store at the same moment (two queue workers on a fresh
    repo) both run MLflow's schema migration and all but one fail; setting up under this lock
    serialises that, and the experiment and parent-run look-ups. Later writes need no lock:
    MLflow waits up to 20 s for a busy SQLite database.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock = Path(uri.removeprefix("sqlite:///") + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _experiment_id(client: Any, root: Path, local_store: bool) -> str:
    import mlflow

    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    location = (root / "mlartifacts").as_uri() if local_store else None
    try:
        return client.create_experiment(EXPERIMENT, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created meanwhile by another process
        return client.get_experiment_by_name(EXPERIMENT).experiment_id


def _parent_run_id(
    client: Any, experiment_id: str, pipeline: str, tags: dict[str, str], params: Params
) -> str:
    """The pipeline's parent run, created with every param (so that comparing parent runs
    compares whole pipelines) or found again; RUNNING while one of its stages runs."""
    from mlflow.entities import Param

    query = f"tags.`{PIPELINE_TAG}` = '{pipeline}' and tags.`{KIND_TAG}` = 'pipeline'"
    found = client.search_runs([experiment_id], filter_string=query, max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"pipeline {pipeline}",
        tags={**tags, PIPELINE_TAG: pipeline, KIND_TAG: "pipeline"},
    )
    flat = flatten(params.model_dump(mode="json"))
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in flat.items()])
    return run.info.run_id


def _summarise_on_parent(client: Any, parent: str, run_id: str, status: str) -> None:
    """Copy the stage run's latest metrics onto the parent run under the same names, and end
    the parent with the stage's status and time: parent runs then line up in the compare view
    with one row per pipeline, and show how its last stage ended."""
    from mlflow.entities import Metric

    try:
        now = int(time.time() * 1000)
        metrics = client.get_run(run_id).data.metrics
        if metrics:
            client.log_batch(parent, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
        client.set_terminated(parent, status, end_time=now)
    except Exception as exc:  # the stage's own run is complete: say so, do not fail the stage
        print(f"digitlab: warning: could not update the pipeline run: {exc}", file=sys.stderr)


# MLflow's HTTP client retries 7 times with growing back-off and waits up to 120 s for each
# answer: a tracking server that is down or hangs would stall a stage for minutes. These
# defaults fail in seconds; set the variables yourself to choose otherwise.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


class TrackingError(DigitlabError):
    """The MLflow store cannot be reached or used."""


def _store_errors() -> tuple[type[BaseException], ...]:
    """What MLflow raises when its store is down, hangs, refuses or is damaged."""
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    return MlflowException, requests.RequestException, sqlalchemy.exc.SQLAlchemyError, OSError


def store_error(uri: str, exc: BaseException) -> TrackingError:
    """One line naming the store (the variable when it is set) and why it cannot be used."""
    text = str(exc)
    if "Connection refused" in text or "Failed to establish" in text:
        reason = "connection refused: is the server running?"
    elif "timed out" in text.lower() or "Read timed out" in text:
        reason = f"no answer within {os.environ['MLFLOW_HTTP_REQUEST_TIMEOUT']} s"
    else:
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        reason = (lines[0] if lines else type(exc).__name__)[:300]
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return TrackingError(
            f"MLFLOW_TRACKING_URI={uri}: the MLflow store cannot be used ({reason})"
        )
    db = uri.removeprefix("sqlite:///")
    return TrackingError(
        f"{db}: the MLflow store cannot be used ({reason}); if it is damaged, move it away "
        f"(mv {db} {db}.bad) and a new one is made"
    )


@contextlib.contextmanager
def stage_run(stage: str, params: Params, logged_params: Mapping[str, Any]) -> Iterator[Any]:
    """Start the MLflow run of one stage, nested under its pipeline's parent run.

    Logs `logged_params` (flattened) and the tags dvc.stage, git.commit, dvc.exp, digit,
    dataset. The run ends FINISHED, or FAILED when the block raises (an exception, Ctrl-C, or
    SIGTERM under errors.run_main); its metrics are then copied onto the parent run. A store
    that cannot be used fails the stage with one TrackingError line, within seconds.
    """
    import mlflow

    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    errors = _store_errors()
    root = repo_root()
    uri = tracking_uri(root)
    commit = git_commit(root)
    tags = {
        "git.commit": commit,
        "dvc.exp": experiment_name(),
        "digit": str(params.digit),
        "dataset": params.data.dataset,
    }
    pipeline = pipeline_id(params, commit)
    parent = None
    try:
        mlflow.set_tracking_uri(uri)
        with store_lock(uri):
            client = mlflow.MlflowClient(uri)
            experiment_id = _experiment_id(client, root, local_store=uri.startswith("sqlite:"))
            parent = _parent_run_id(client, experiment_id, pipeline, tags, params)
        run = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=stage,
            parent_run_id=parent,
            tags={**tags, "dvc.stage": stage, PIPELINE_TAG: pipeline, KIND_TAG: "stage"},
        )
    except errors as exc:
        if parent is not None:  # the stage's run could not start: its pipeline is not running
            with contextlib.suppress(*errors):
                client.set_terminated(parent, "FAILED")
        raise store_error(uri, exc) from None
    status = "FAILED"
    try:
        mlflow.log_params(flatten(logged_params))
        yield run
        ignore_stops()  # the stage's work is done: closing its run must not be cut short
        status = "FINISHED"
    except errors as exc:
        raise store_error(uri, exc) from None
    finally:
        try:
            mlflow.end_run(status)
        except errors as exc:  # the store went away: the stage's outcome stands, say so
            print(f"digitlab: warning: run {run.info.run_id} ({stage}) could not be closed as "
                  f"{status}: {store_error(uri, exc)}", file=sys.stderr)  # fmt: skip
        else:
            _summarise_on_parent(client, parent, run.info.run_id, status)
