"""MLflow conventions: one store for the repo, one run per executed stage, a parent per pipeline."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from digitlab.params import Params

EXPERIMENT = "digitlab"
PIPELINE_TAG = "digitlab.pipeline"
KIND_TAG = "digitlab.kind"  # 'pipeline' on parent runs, 'stage' on stage runs


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


def git_commit(cwd: Path | None = None) -> str:
    """The current git commit, or 'none' outside a repo or before the first commit."""
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


def _experiment_id(client: Any, root: Path, local_store: bool) -> str:
    import mlflow

    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    location = (root / "mlartifacts").as_uri() if local_store else None
    try:
        return client.create_experiment(EXPERIMENT, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel stage
        return client.get_experiment_by_name(EXPERIMENT).experiment_id


def _parent_run_id(client: Any, experiment_id: str, pipeline: str, tags: dict[str, str]) -> str:
    query = f"tags.`{PIPELINE_TAG}` = '{pipeline}' and tags.`{KIND_TAG}` = 'pipeline'"
    found = client.search_runs([experiment_id], filter_string=query, max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"pipeline {pipeline}",
        tags={**tags, PIPELINE_TAG: pipeline, KIND_TAG: "pipeline"},
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@contextlib.contextmanager
def stage_run(stage: str, params: Params, logged_params: Mapping[str, Any]) -> Iterator[Any]:
    """Start the MLflow run of one stage, nested under its pipeline's parent run.

    Logs `logged_params` (flattened) and the tags dvc.stage, git.commit, dvc.exp, digit,
    dataset. The run ends FINISHED, or FAILED when the block raises.
    """
    import mlflow

    root = repo_root()
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    experiment_id = _experiment_id(client, root, local_store=uri.startswith("sqlite:"))
    commit = git_commit(root)
    tags = {
        "git.commit": commit,
        "dvc.exp": os.environ.get("DVC_EXP_NAME", "workspace"),
        "digit": str(params.digit),
        "dataset": params.data.dataset,
    }
    pipeline = pipeline_id(params, commit)
    parent = _parent_run_id(client, experiment_id, pipeline, tags)
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=stage,
        parent_run_id=parent,
        tags={**tags, "dvc.stage": stage, PIPELINE_TAG: pipeline, KIND_TAG: "stage"},
    ) as run:
        mlflow.log_params(flatten(logged_params))
        yield run
