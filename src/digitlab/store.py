"""Where MLflow records go and how its failures read: one store for the repo (its SQLite file,
or MLFLOW_TRACKING_URI), the tags that group runs, and one line for each way a store fails."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from digitlab.errors import DigitlabError, os_error_line

EXPERIMENT = "digitlab"


PIPELINE_TAG = "digitlab.pipeline"


KIND_TAG = "digitlab.kind"  # 'pipeline' on parent runs, 'stage' on stage runs


WORKSPACE = "workspace"  # the dvc.exp tag of runs that no DVC experiment started


# How MLflow 3 marks an experiment that trains models (not a GenAI one). Its 3.17 UI still
# opens an experiment on the GenAI overview unless the address asks for
# `?workflowType=machine_learning`, which is the address `make ui` prints.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


RACE_ATTEMPTS = 4  # tries of one write to MLflow: see despite_a_race


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


@dataclass(frozen=True)
class Store:
    """The MLflow store a stage logs to, and one line for each way it can fail: what MLflow
    raises when its store is down, hangs, refuses or is damaged, or cannot be written."""

    uri: str
    root: Path
    named_by_env: bool  # MLFLOW_TRACKING_URI names it (read before MLflow sets it itself)

    @classmethod
    def of_repo(cls) -> Store:
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        root = repo_root()
        return cls(tracking_uri(root), root, bool(os.environ.get("MLFLOW_TRACKING_URI")))

    @staticmethod
    def errors() -> tuple[type[BaseException], ...]:
        import requests
        import sqlalchemy.exc
        from mlflow.exceptions import MlflowException

        return MlflowException, requests.RequestException, sqlalchemy.exc.SQLAlchemyError

    def error(self, exc: BaseException) -> TrackingError:
        """One line naming the store (the variable, when the user set it) and why it cannot
        be used; a file MLflow could not write is named with the reason."""
        text = str(exc)
        name = f"MLFLOW_TRACKING_URI={self.uri}" if self.named_by_env else self.uri
        if isinstance(exc, OSError):
            return TrackingError(f"{os_error_line(exc)} (writing to the MLflow store {name})")
        if "Connection refused" in text or "Failed to establish" in text:
            reason = "connection refused: is the server running?"
        elif "timed out" in text.lower():
            reason = f"no answer within {os.environ['MLFLOW_HTTP_REQUEST_TIMEOUT']} s"
        else:
            lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
            reason = (lines[0] if lines else type(exc).__name__)[:300]
        if self.named_by_env:
            return TrackingError(f"{name}: the MLflow store cannot be used ({reason})")
        db = self.uri.removeprefix("sqlite:///")
        return TrackingError(
            f"{db}: the MLflow store cannot be used ({reason}); if it is damaged, move it away "
            f"(mv {db} {db}.bad) and a new one is made"
        )

    @contextlib.contextmanager
    def calls(self) -> Iterator[None]:
        """MLflow calls in this block that fail (an OSError inside MLflow included) become one
        TrackingError line."""
        try:
            yield
        except (*self.errors(), OSError) as exc:
            raise self.error(exc) from None


def despite_a_race(write: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    """`write(*args, **kwargs)` to the MLflow server, tried again where another run inserted
    the same new key at the same moment (a dataset, an alias: MLflow's SQL store checks, then
    inserts, so the second insert fails on the unique key); by then the key exists."""
    import mlflow

    for attempt in range(RACE_ATTEMPTS):
        try:
            write(*args, **kwargs)
            return
        except mlflow.exceptions.MlflowException as exc:
            if attempt == RACE_ATTEMPTS - 1 or "unique constraint" not in str(exc).lower():
                raise
            time.sleep(0.2 * (attempt + 1))
