"""The playground: draw a digit and watch the classifier answer, ask the generator for any digit.
A local page and a small JSON API over the networks MLflow's registry holds, run through the
same code `evaluate` and `evaluate_gan` use (inference.py).

    python -m digitlab.play [--port 8000] [--host 127.0.0.1]     # make play

The page and its script are digitlab's own files (static/), served from here: it works offline.
"""

from __future__ import annotations

import argparse
import base64
import io
import math
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from digitlab.inference import predict_probabilities, requested_digits, sample_latent
from digitlab.metrics import decent_rate
from digitlab.params import N_CLASSES, ClassifierArchitecture, GeneratorConfig

STATIC = Path(__file__).parent / "static"
CLASSIFIER, GENERATOR = "digitlab-classifier", "digitlab-generator"
SIDE, BOX, INK = 28, 20, 0.05  # MNIST's field, the box its digits fit in, what counts as ink
MAX_BODY = 256 * 1024  # bytes a request may send: a 28×28 image as JSON is under 10 KB
CPU = torch.device("cpu")


class PlayError(Exception):
    """A request the playground cannot answer, as one line, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- a drawing as MNIST sees it


def prepare_drawing(pixels: torch.Tensor) -> torch.Tensor:
    """A drawing (H×W, white ink on black, in [0, 1]) prepared as MNIST's digits were: its ink
    fitted into a 20×20 box (aspect kept; area-averaged, so edges turn grey), scaled to a
    brightest pixel of 1, and put in a 28×28 field so that its centre of mass sits at the
    field's centre. An empty drawing stays empty. (static/play.js does the same, step by step.)"""
    rows = (pixels > INK).any(1).nonzero().squeeze(1)
    cols = (pixels > INK).any(0).nonzero().squeeze(1)
    field = torch.zeros(SIDE, SIDE)
    if len(rows) == 0:
        return field
    crop = pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].float()
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, math.floor(h * scale + 0.5)), max(1, math.floor(w * scale + 0.5)))
    small = F.adaptive_avg_pool2d(crop[None, None], size)[0, 0]
    small = small / small.max()
    top, left = (SIDE - size[0]) // 2, (SIDE - size[1]) // 2
    ys, xs = torch.arange(size[0], dtype=torch.float32), torch.arange(size[1], dtype=torch.float32)
    mass = small.sum()
    cy = top + float((small.sum(1) * ys).sum() / mass)
    cx = left + float((small.sum(0) * xs).sum() / mass)
    dy = min(max(math.floor((SIDE - 1) / 2 - cy + 0.5), -top), SIDE - size[0] - top)
    dx = min(max(math.floor((SIDE - 1) / 2 - cx + 0.5), -left), SIDE - size[1] - left)
    field[top + dy : top + dy + size[0], left + dx : left + dx + size[1]] = small
    return field


def png(image: torch.Tensor) -> str:
    """A 28×28 image in [0, 1] as a base64 PNG (grey)."""
    from PIL import Image

    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).squeeze().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# ---------------------------------------------------------------- the registry's networks


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
        listed = versions(self.client, name)
        by_alias = [v for v in listed if self.aliases[name] in v.aliases]
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
                "no generator is registered yet: run `make repro`, or for every digit "
                "on demand the conditional line of docs/experiments.md",
            )
        return self.loaded.G


# ---------------------------------------------------------------- what the API answers


def classify(models: Models, images: torch.Tensor) -> list[dict[str, Any]]:
    """The classifier's ten probabilities, its answer and confidence, for N×28×28 images."""
    network, architecture = models.classifier()
    probs = predict_probabilities(network, architecture, images[:, None], CPU)
    return [
        {
            "probabilities": [round(p, 6) for p in row.tolist()],
            "answer": int(row.argmax()),
            "confidence": round(float(row.max()), 6),
        }
        for row in probs
    ]


def as_output(
    images: torch.Tensor, answers: list[dict[str, Any]], fmt: str
) -> list[dict[str, Any]]:
    out = []
    for image, answer in zip(images, answers, strict=True):
        pixels = (
            {"png": png(image)}
            if fmt == "png"
            else {"image": image.squeeze(0).round(decimals=4).tolist()}
        )
        out.append({**pixels, "answer": answer["answer"], "confidence": answer["confidence"]})
    return out


def latents(G: nn.Module, n: int, seed: int) -> torch.Tensor:
    config: GeneratorConfig = G.config
    return sample_latent(
        n, config.latent_size, config.latent, torch.Generator().manual_seed(seed), CPU
    )


def digits_for(G: nn.Module, digit: int | None, n: int) -> torch.Tensor | None:
    """The digits a conditional generator is asked for: `digit`, or all ten in turn."""
    if not G.config.conditional:
        if digit is not None:
            raise PlayError(
                400,
                "digit: this generator is unconditional (it makes only what it was "
                "trained on): leave digit out, or choose a conditional version",
            )
        return None
    return (
        torch.full((n,), digit)
        if digit is not None
        else requested_digits(n, list(range(N_CLASSES)))
    )


def generate_answer(
    models: Models, images: torch.Tensor, asked: torch.Tensor | None, fmt: str, trained_for: str
) -> dict[str, Any]:
    """Samples with the classifier's answers, and the share it judges decent as evaluate_gan
    does (probability ≥ 0.9 of the digit asked for, else of the digit it was trained on)."""
    network, architecture = models.classifier()
    probs = predict_probabilities(network, architecture, images, CPU)
    answers = classify(models, images[:, 0])
    if asked is not None:
        decent = decent_rate(probs, [], 0.9, asked)
    else:
        digits = list(range(N_CLASSES)) if trained_for == "all" else [int(trained_for)]
        decent = decent_rate(probs, digits, 0.9)
    return {"images": as_output(images, answers, fmt), "decent_share": round(decent, 4)}


def trained_digit(models: Models) -> str:
    version = models.loaded.generator
    return version.tags.get("digit", "all") if version else "all"


def port_number(text: str) -> int:
    """A TCP port, 1–65535 (argparse names the option when it is not)."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)


def refuse_taken_port(host: str, port: int) -> None:
    """Stop in one line, before any model loads, when another program holds host:port."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SystemExit(
                f"digitlab: error: {host}:{port} cannot be served ({exc.strerror}): "
                f"choose another port (make play PLAY_PORT={port + 1}, or --port)"
            ) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m digitlab.play", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="127.0.0.1: this machine only (default)"
    )
    parser.add_argument(
        "--port", type=port_number, default=os.environ.get("PLAY_PORT", "8000"), help="8000"
    )
    args = parser.parse_args(argv)
    refuse_taken_port(args.host, args.port)
    import uvicorn

    from digitlab.playapi import create_app

    app = create_app()
    print(f"digitlab playground: http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
