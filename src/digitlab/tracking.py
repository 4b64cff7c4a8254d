"""MLflow runs: one per executed stage, nested under one per pipeline, its models registered once
it has finished (store.py: where they go and how a failing store reads)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from digitlab.flat import flatten, numbers
from digitlab.params import Params
from digitlab.stopping import ignore_stops
from digitlab.store import (
    EXPERIMENT,
    EXPERIMENT_KIND,
    KIND_TAG,
    PIPELINE_TAG,
    Store,
    despite_a_race,
    experiment_name,
    store_lock,
)

PREPARED = Path("data/prepared")


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


def _experiment_id(client: Any, root: Path, local_store: bool) -> str:
    import mlflow

    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        location = (root / "mlartifacts").as_uri() if local_store else None
        try:
            return client.create_experiment(
                EXPERIMENT, artifact_location=location, tags=EXPERIMENT_KIND
            )
        except mlflow.exceptions.MlflowException:  # created meanwhile by another process
            experiment = client.get_experiment_by_name(EXPERIMENT)
    for key, value in EXPERIMENT_KIND.items():  # a store made before digitlab set it
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


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
    flat = flatten(params.model_dump(mode="json"), sep=".")
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


def dvc_hash(path: Path, lock: Path = Path("dvc.lock")) -> str | None:
    """The hash dvc.lock records for the output `path`; None when no stage records it."""
    try:
        stages = yaml.safe_load(lock.read_text())["stages"]
        outs = [out for entry in stages.values() for out in entry.get("outs", [])]
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None
    return next((out.get("md5") for out in outs if out.get("path") == path.as_posix()), None)


def log_prepared_data(dataset: str, context: str) -> None:
    """Record data/prepared as the active run's input, its DVC hash as the digest, so that
    `mlflow ui` shows which data a run used (and runs on the same data share a digest)."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # MLflow registers its local-file source twice and warns
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(PREPARED.resolve()))
    data = MetaDataset(source, name=f"{dataset}-prepared", digest=dvc_hash(PREPARED))
    despite_a_race(mlflow.log_input, data, context=context)


# What a logged model needs to load: digitlab.models imports torch, pydantic and pyyaml.
MODEL_REQUIREMENTS = ("torch", "pydantic", "pyyaml")


@dataclass
class ModelToRegister:
    """A model logged in a stage's run, registered once that run has FINISHED."""

    model_uri: str
    name: str
    alias: str
    tags: dict[str, str]


@dataclass
class StageRun:
    """The active MLflow run of a stage: what the stage logs goes through it, so that a failing
    MLflow call names the store and any other failure names its own cause."""

    run: Any  # mlflow.ActiveRun
    store: Store
    to_register: list[ModelToRegister] = field(default_factory=list)

    @property
    def info(self) -> Any:
        return self.run.info

    @property
    def data(self) -> Any:
        return self.run.data

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params, flattened to dotted names ('gan.optimizer_g.lr')."""
        import mlflow

        with self.store.calls():
            mlflow.log_params(flatten(params, sep="."))

    def log_metrics(
        self, metrics: Mapping[str, Any], prefix: str = "", step: int | None = None
    ) -> None:
        """Every number of a (nested) mapping, under its flat name: {prefix}/a/b."""
        import mlflow

        with self.store.calls():
            mlflow.log_metrics(numbers(flatten(metrics, prefix=prefix)), step=step)

    def log_artifacts(self, paths: list[str | Path], folder: str) -> None:
        """Files (a folder: all its files) copied into the run's artifacts under `folder`."""
        import mlflow

        with self.store.calls():
            for path in map(Path, paths):
                if path.is_dir():
                    mlflow.log_artifacts(str(path), f"{folder}/{path.name}")
                else:
                    mlflow.log_artifact(str(path), folder)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        import mlflow

        with self.store.calls():
            mlflow.set_tags(dict(tags))

    def log_model(
        self,
        model: Any,
        name: str,
        example: Any,
        alias: str,
        tags: Mapping[str, str],
        digit_column: bool = False,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        """Log `model` with mlflow.pytorch behind an InputGuard (non-finite or wrongly shaped
        input refused in one message), its signature and input example taken from `example`
        (real inputs), loadable without digitlab installed (its code travels with it, and
        mlflow.pytorch.load_model gives the InputGuard, the network as its `.model`);
        registered as `name` with `alias` when the run ends FINISHED, never before."""
        import mlflow
        import torch
        from mlflow.models import infer_signature

        import digitlab
        from digitlab.serving import InputGuard

        # weights in the default (NCHW) layout: the saved archive expects contiguous tensors
        model = model.cpu().to(memory_format=torch.contiguous_format).eval()
        guarded = InputGuard(model, tuple(example.shape[1:]), digit_column, dict(config or {}))
        example = example.cpu()
        with torch.inference_mode():
            output = guarded(example)
        inputs = example.numpy()
        pins = [f"{dist}=={metadata.version(dist)}" for dist in MODEL_REQUIREMENTS]
        with self.store.calls():
            info = mlflow.pytorch.log_model(
                guarded,
                name="model",
                signature=infer_signature(inputs, output.numpy()),
                input_example=inputs,
                pip_requirements=pins,  # given: inferring them loads the model again, slowly
                code_paths=[str(Path(digitlab.__file__).parent)],
                # torch.export (pt2, MLflow's default) cannot hold the guard's checks of data
                serialization_format="pickle",
            )
        run_tags = self.run.data.tags
        tags = {"git.commit": run_tags["git.commit"], "dvc.exp": run_tags["dvc.exp"], **tags}
        self.to_register.append(ModelToRegister(info.model_uri, name, alias, dict(tags)))

    def log_generator(self, generator: Any, name: str, params: Params) -> None:
        """The generator as an MLflow model (log_model), its input example seeded latent
        vectors: a conditional one takes the digit in column 0, then the latent vector."""
        import torch

        from digitlab.inference import requested_digits, sample_latent
        from digitlab.serving import DigitFirstGenerator

        cfg, dataset = params.gan, params.data.dataset
        config = generator.config.model_dump(mode="json")
        rng = torch.Generator().manual_seed(params.seed)
        example = sample_latent(5, cfg.latent_size, cfg.latent, rng, torch.device("cpu"))
        if cfg.conditional:
            generator = DigitFirstGenerator(generator)
            example = torch.cat([requested_digits(5, params.digits)[:, None].float(), example], 1)
        kind = "conditional" if cfg.conditional else "unconditional"
        tags = {"dataset": dataset, "digit": str(params.digit), "kind": kind}
        alias = f"latest-{dataset}-{params.digit}"
        self.log_model(generator, name, example, alias, tags, cfg.conditional, config)


def register_models(client: Any, stage: StageRun) -> None:
    """A new version of each registered model, tagged, with its alias moved to it."""
    import mlflow

    for model in stage.to_register:
        version = mlflow.register_model(
            model.model_uri, model.name, await_registration_for=30, tags=model.tags
        )
        despite_a_race(client.set_registered_model_alias, model.name, model.alias, version.version)
        print(f"registered {model.name} version {version.version} (@{model.alias})")


def run_tags(params: Params, root: Path) -> dict[str, str]:
    """The tags of a stage's run and of its pipeline's parent run: git.commit (also as the
    run's source), dvc.exp, digit, dataset."""
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_TYPE

    commit = git_commit(root)
    return {
        "git.commit": commit,
        "dvc.exp": experiment_name(),
        "digit": str(params.digit),
        "dataset": params.data.dataset,
        MLFLOW_GIT_COMMIT: commit,
        MLFLOW_SOURCE_TYPE: "LOCAL",
    }


def _start(stage: str, params: Params, store: Store, system_metrics: bool) -> tuple[Any, Any, str]:
    """(client, the stage's active run, its parent run's id), the parent found or made."""
    import mlflow
    from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_NAME

    tags = run_tags(params, store.root)
    pipeline = pipeline_id(params, tags["git.commit"])
    mlflow.set_tracking_uri(store.uri)
    parent = None
    try:
        with store_lock(store.uri):
            client = mlflow.MlflowClient(store.uri)
            experiment_id = _experiment_id(client, store.root, store.uri.startswith("sqlite:"))
            parent_tags = {**tags, MLFLOW_SOURCE_NAME: "dvc.yaml"}
            parent = _parent_run_id(client, experiment_id, pipeline, parent_tags, params)
        stage_tags = {
            "dvc.stage": stage,
            PIPELINE_TAG: pipeline,
            KIND_TAG: "stage",
            MLFLOW_SOURCE_NAME: f"stages/{stage}.py",
        }
        run = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=stage,
            parent_run_id=parent,
            tags={**tags, **stage_tags},
            log_system_metrics=system_metrics,
        )
    except (*store.errors(), OSError) as exc:
        if parent is not None:  # the stage's run could not start: its pipeline is not running
            with contextlib.suppress(*store.errors(), OSError):
                client.set_terminated(parent, "FAILED")
        raise store.error(exc) from None
    return client, run, parent


def _close(client: Any, stage: StageRun, parent: str, status: str) -> bool:
    """End the stage's run with `status` and summarise it on its parent; False (and a warning
    line) when the store went away meanwhile: the stage's outcome stands."""
    import mlflow

    try:
        mlflow.end_run(status)
    except (*stage.store.errors(), OSError) as exc:
        print(
            f"digitlab: warning: run {stage.info.run_id} ({stage.data.tags['dvc.stage']}) "
            f"could not be closed as {status}: {stage.store.error(exc)}",
            file=sys.stderr,
        )
        return False
    _summarise_on_parent(client, parent, stage.info.run_id, status)
    return True


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Params,
    logged_params: Mapping[str, Any],
    data_context: str | None = None,
    system_metrics: bool = False,
) -> Iterator[StageRun]:
    """Start the MLflow run of one stage, nested under its pipeline's parent run.

    Logs `logged_params` (flattened), data/prepared as the run's input when `data_context`
    ('training', 'testing') is given, CPU and memory use when `system_metrics`, and the tags
    of run_tags() and dvc.stage. The run ends FINISHED, or FAILED when the block raises (an
    exception, Ctrl-C, or SIGTERM under stopping.run_main); only a FINISHED run registers the
    models it logged. Its metrics are then copied onto the parent run. A store that cannot be
    used fails the stage with one TrackingError line, within seconds; any other failure of the
    block passes through unchanged, to be reported as what it is.
    """
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start/stop notes
    store = Store.of_repo()
    client, run, parent = _start(stage, params, store, system_metrics)
    current = StageRun(run, store)
    status = "FAILED"
    try:
        current.log_params(logged_params)
        if data_context:
            with store.calls():
                log_prepared_data(params.data.dataset, data_context)
        yield current
        ignore_stops()  # the stage's work is done: closing its run must not be cut short
        status = "FINISHED"
    except store.errors() as exc:  # an MLflow call the stage made itself
        raise store.error(exc) from None
    finally:
        closed = _close(client, current, parent, status)
    if closed:  # only now: a version's source run is FINISHED
        with store.calls():
            register_models(client, current)
