"""The playground's web side: the page, its files, and the JSON API (FastAPI). Every bad request
is a 4xx with one line saying what is allowed; the server goes on serving."""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, field_validator

from digitlab.inference import sample_images
from digitlab.play.answers import classify, digits_for, generate_answer, latents, trained_digit
from digitlab.play.drawing import SIDE
from digitlab.play.registry import CLASSIFIER, GENERATOR, Models, PlayError

STATIC = Path(__file__).parents[1] / "static"
MAX_BODY = 256 * 1024  # bytes a request may send: a 28×28 image as JSON is under 10 KB

Digit = Annotated[int, Field(ge=0, le=9)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ClassifyRequest(_Request):
    image: list[list[float]]  # 28 rows of 28 numbers in [0, 1], white digit on black

    @field_validator("image", mode="before")
    @classmethod
    def _mnist_shaped(cls, image: Any) -> Any:
        rows = image if isinstance(image, list) else None
        if (
            rows is None
            or len(rows) != SIDE
            or any(not isinstance(r, list) or len(r) != SIDE for r in rows)
        ):
            raise ValueError(
                f"must be {SIDE} rows of {SIDE} numbers in [0, 1] (white digit on black)"
            )
        for row in rows:
            for value in row:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"must hold numbers only, not {type(value).__name__}")
                if not math.isfinite(value) or not 0 <= value <= 1:
                    raise ValueError(f"must hold numbers in [0, 1]; {value} is not")
        return [[float(v) for v in row] for row in rows]


class GenerateRequest(_Request):
    digit: Digit | None = None  # a conditional generator's digit; None: every digit in turn
    count: int = Field(default=16, ge=1, le=100)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    format: Literal["array", "png"] = "png"


class WalkRequest(_Request):
    digit: Digit | None = None
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(
        default=[0, 1], min_length=2, max_length=2
    )
    steps: int = Field(default=16, ge=2, le=64)
    format: Literal["array", "png"] = "png"


class SelectRequest(_Request):
    classifier: int | None = None  # a registered version; None: keep
    generator: int | None = None


def one_line(exc: RequestValidationError) -> str:
    """The first problem of a request, as one line naming the field."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "json_invalid":
        return "the body is not valid JSON"
    if err["type"] == "model_attributes_type" and isinstance(err.get("input"), bytes):
        return "the body must be sent as JSON (header Content-Type: application/json)"
    if err["type"] == "model_attributes_type":
        return "the body must be a JSON object"
    return f"{where}: {message}"[:300]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _version(v: Any) -> dict[str, Any]:
    shown = {k: v for k, v in asdict(v).items() if k not in ("params", "metrics")}
    keep = (
        "classifier.arch",
        "classifier.epochs",
        "gan.conditional",
        "gan.arch",
        "gan.epochs",
        "digit",
        "seed",
    )
    shown["params"] = {k: p for k, p in v.params.items() if k in keep}
    shown["metrics"] = {
        k: round(m, 4)
        for k, m in v.metrics.items()
        if k.startswith(("best/", "gan/train_seconds", "train/seconds"))
    }
    return shown


def listing_of(models: Models) -> dict[str, Any]:
    """Every registered version, and the ones in use (None: none registered yet); a network
    not loaded yet is loaded from its default alias first."""
    listed = models.listing()
    for name, kind in ((CLASSIFIER, "classifier"), (GENERATOR, "generator")):
        if getattr(models.loaded, kind) is None and listed[name]:
            with contextlib.suppress(PlayError):  # the page shows why, when it is used
                models.select(name, None)
    generator = models.loaded.generator
    conditional = bool(models.loaded.G is not None and models.loaded.G.config.conditional)
    if not listed[GENERATOR]:
        generator_hint = "no generator is registered yet: run `make repro`"
    elif generator is not None and not conditional:
        made = generator.tags.get("digit", "one digit")
        generator_hint = (
            f"generator version {generator.version} makes only what it was trained on "
            f"(digit: {made}), so the digit picker is off: `make any-digit` trains one for any "
            "digit (about 6 minutes on 2 cores), then reload this page"
        )
    else:
        generator_hint = None
    return {
        "classifier": {
            "versions": [_version(v) for v in listed[CLASSIFIER]],
            "current": models.loaded.classifier.version if models.loaded.classifier else None,
            "hint": None
            if listed[CLASSIFIER]
            else "no classifier is registered yet: run `make repro`",
        },
        "generator": {
            "versions": [_version(v) for v in listed[GENERATOR]],
            "current": generator.version if generator else None,
            "conditional": conditional,
            "hint": generator_hint,
        },
    }


def _guard(app: FastAPI) -> None:
    """Bodies over MAX_BODY get a 413, invalid requests and refusals a 4xx with one line."""

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return _error(413, f"the body may hold at most {MAX_BODY:,} bytes")
        if length is None and request.method == "POST":
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY:
                    return _error(413, f"the body may hold at most {MAX_BODY:,} bytes")
            request._body = body  # what Starlette reads the body from afterwards
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, one_line(exc))

    @app.exception_handler(PlayError)
    async def refused(request: Request, exc: PlayError) -> JSONResponse:
        return _error(exc.status, str(exc))


def _serve_models(app: FastAPI, models: Models) -> None:
    """The page, and the registered versions: listed, and chosen."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "play.html")

    @app.get("/api/models")
    def listing() -> dict[str, Any]:
        """Every registered version, and the ones in use (None: none registered yet)."""
        return listing_of(models)

    @app.post("/api/models")
    def select(request: SelectRequest) -> dict[str, Any]:
        """Use another registered version (404 for one the registry does not hold)."""
        if request.classifier is not None:
            models.select(CLASSIFIER, request.classifier)
        if request.generator is not None:
            models.select(GENERATOR, request.generator)
        return listing_of(models)


def _serve_networks(app: FastAPI, models: Models) -> None:
    """The classifier's answers, and the generator's samples with the classifier's answers."""

    @app.post("/api/classify")
    def classify_one(request: ClassifyRequest) -> dict[str, Any]:
        """A 28×28 image in [0, 1] (white digit on black, as MNIST's) → ten probabilities."""
        return classify(models, torch.tensor(request.image)[None])[0]

    @app.post("/api/generate")
    def generate(request: GenerateRequest) -> dict[str, Any]:
        """`count` fresh samples (of `digit`, for a conditional generator), each with the
        classifier's answer and confidence, and the share judged decent."""
        G = models.generator()
        asked = digits_for(G, request.digit, request.count)
        images = sample_images(G, latents(G, request.count, request.seed), asked)
        return generate_answer(models, images, asked, request.format, trained_digit(models))

    @app.post("/api/digits")
    def all_digits(request: GenerateRequest) -> dict[str, Any]:
        """One noise vector (`seed`) rendered as each of the ten digits (conditional only)."""
        G = models.generator()
        if not G.config.conditional:
            raise PlayError(
                400, "this generator is unconditional: one noise vector makes one digit"
            )
        asked = torch.arange(10)
        images = sample_images(G, latents(G, 1, request.seed).repeat(10, 1), asked)
        return generate_answer(models, images, asked, request.format, "all")

    @app.post("/api/walk")
    def walk(request: WalkRequest) -> dict[str, Any]:
        """`steps` images on the straight line from one seed's noise vector to another's
        (a conditional generator keeps `digit`, 0 unless given)."""
        G = models.generator()
        a, b = (latents(G, 1, seed) for seed in request.seeds)
        t = torch.linspace(0, 1, request.steps)[:, None]
        digit = request.digit if request.digit is not None or not G.config.conditional else 0
        asked = digits_for(G, digit, request.steps)
        images = sample_images(G, a + t * (b - a), asked)
        return generate_answer(models, images, asked, request.format, trained_digit(models))


def create_app(tracking_uri: str | None = None, params_path: Path = Path("params.yaml")) -> FastAPI:
    """The playground over the MLflow store `tracking_uri` (the project's), its defaults the
    `latest-*` aliases of `params_path`'s dataset and digit."""
    from digitlab.params import load_params
    from digitlab.store import tracking_uri as project_uri

    params = load_params(params_path)
    models = Models(tracking_uri or project_uri(), params.data.dataset, params.digit)
    app = FastAPI(title="digitlab playground", docs_url="/api/docs", redoc_url=None)
    _guard(app)
    _serve_models(app, models)
    _serve_networks(app, models)
    return app
