"""The networks MLflow's registry holds: every version listed with its run's params and metrics,
the `latest-*` aliases of the current params loaded by default, any version on request."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from torch import nn

from digitlab.params import ClassifierArchitecture

CLASSIFIER, GENERATOR = "digitlab-classifier", "digitlab-generator"


class PlayError(Exception):
    """A request the playground cannot answer, as one line, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Version:
    """One registered version: what the page lists about it."""

    name: str
    version: int
    aliases: list[str]
    tags: dict[str, str]
    run_id: str
    params: dict[str, str]
    metrics: dict[str, float]


def versions(client: Any, name: str) -> list[Version]:
    """Every version of a registered model, newest first, with its run's params and metrics."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{name}'")
        aliases = client.get_registered_model(name).aliases if found else {}
    except MlflowException:
        return []
    listed = []
    for v in sorted(found, key=lambda v: -int(v.version)):
        named = [alias for alias, number in aliases.items() if int(number) == int(v.version)]
        try:
            run = client.get_run(v.run_id)
            params, metrics = dict(run.data.params), dict(run.data.metrics)
        except MlflowException:  # the run is gone: the version still is
            params, metrics = {}, {}
        listed.append(Version(name, int(v.version), named, dict(v.tags), v.run_id, params, metrics))
    return listed


def unwrap(guard: nn.Module, kind: str, version: int) -> tuple[nn.Module, dict[str, Any]]:
    """The network behind a registered model's guard, and the config it was logged with."""
    config = getattr(guard, "config", None)
    if not isinstance(config, dict):
        raise PlayError(
            409,
            f"{kind} version {version} was registered before the playground "
            "could read its settings: register a new one (`dvc repro -f train_classifier`)",
        )
    network = guard.model
    return (network.generator if hasattr(network, "generator") else network), config


@dataclass
class Loaded:
    """The networks the page works with: the classifier (its architecture) and the generator."""

    classifier: Version | None = None
    network: nn.Module | None = None
    architecture: ClassifierArchitecture | None = None
    generator: Version | None = None
    G: nn.Module | None = None


class Models:
    """The registry of a tracking URI, the versions loaded (the `latest-*` aliases of the
    current params by default, any registered one on request), loaded once each."""

    def __init__(self, tracking_uri: str, dataset: str, digit: Any) -> None:
        import mlflow

        self.uri = tracking_uri
        self.client = mlflow.MlflowClient(tracking_uri)
        self.aliases = {CLASSIFIER: f"latest-{dataset}", GENERATOR: f"latest-{dataset}-{digit}"}
        self.loaded = Loaded()
        self.lock = threading.Lock()
        self._cache: dict[tuple[str, int], tuple[nn.Module, dict[str, Any]]] = {}

    def listing(self) -> dict[str, list[Version]]:
        return {name: versions(self.client, name) for name in (CLASSIFIER, GENERATOR)}

    def _default(self, name: str) -> Version | None:
        """The version the current params' alias names; for the generator, a conditional one
        of the dataset before it (it answers any digit: `make any-digit`), newest first."""
        listed = versions(self.client, name)
        by_alias = [v for v in listed if self.aliases[name] in v.aliases]
        if name == GENERATOR and not (by_alias and by_alias[0].tags.get("kind") == "conditional"):
            dataset = self.aliases[CLASSIFIER].removeprefix("latest-")
            any_digit = [v for v in listed if v.tags.get("kind") == "conditional"
                         and v.tags.get("dataset") == dataset]  # fmt: skip
            by_alias = any_digit or by_alias
        return (by_alias or listed or [None])[0]

    def _load(self, version: Version) -> tuple[nn.Module, dict[str, Any]]:
        import mlflow

        key = (version.name, version.version)
        if key not in self._cache:
            try:
                guard = mlflow.pytorch.load_model(
                    f"models:/{version.name}/{version.version}", map_location="cpu"
                )
            except Exception as exc:  # a version logged in another format, or damaged
                reason = (
                    str(exc).strip().splitlines()[-1][:200]
                    if str(exc).strip()
                    else type(exc).__name__
                )
                raise PlayError(
                    409, f"{version.name} version {version.version} cannot be loaded: {reason}"
                ) from None
            self._cache[key] = unwrap(guard.eval(), version.name, version.version)
        return self._cache[key]

    def select(self, name: str, number: int | None) -> None:
        """Load `number` of the registered model `name` (None: its default version)."""
        listed = versions(self.client, name)
        if number is None:
            version = self._default(name)
        else:
            version = next((v for v in listed if v.version == number), None)
            if version is None:
                known = ", ".join(str(v.version) for v in listed) or "none"
                raise PlayError(404, f"{name} has no version {number} (registered: {known})")
        if version is None:
            return
        network, config = self._load(version)
        with self.lock:
            if name == CLASSIFIER:
                self.loaded.classifier, self.loaded.network = version, network
                self.loaded.architecture = ClassifierArchitecture.model_validate(config)
            else:
                self.loaded.generator, self.loaded.G = version, network

    def classifier(self) -> tuple[nn.Module, ClassifierArchitecture]:
        if self.loaded.network is None or self.loaded.architecture is None:
            self.select(CLASSIFIER, None)
        if self.loaded.network is None or self.loaded.architecture is None:
            raise PlayError(
                503,
                "no classifier is registered yet: run `make repro` (or `dvc repro train_classifier`)",
            )
        return self.loaded.network, self.loaded.architecture

    def generator(self) -> nn.Module:
        if self.loaded.G is None:
            self.select(GENERATOR, None)
        if self.loaded.G is None:
            raise PlayError(
                503,
                "no generator is registered yet: run `make repro`, or `make any-digit` for one "
                "that makes any digit on demand",
            )
        return self.loaded.G
