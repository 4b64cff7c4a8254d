"""The playground (`make play`): its JSON API answers real test images and refuses every bad
request in one line while it goes on serving; in headless Chromium (Playwright, Debian's
browser) a drawn stroke is answered live and a chosen digit's samples are judged as it."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from digitlab.data import load_split
from digitlab.play.api import MAX_BODY
from digitlab.play.drawing import prepare_drawing
from helpers import (
    BIN,
    chromium,
    copy_repo,
    dvc,
    free_port,
    pipeline_env,
    set_param,
    stop,
    wait_until_healthy,
)

pytestmark = pytest.mark.slow  # a classifier and a conditional GAN trained and registered

# The fast recipe's classifier (two epochs) and the conditional all-digit GAN of
# docs/experiments.md, at batch 128 for 4 epochs instead of batch 384 for 120 (about 87% of its
# samples judged decent, as the former PLAY GAN).
PLAY = {
    "classifier.arch": "fastcnn", "classifier.optimizer.name": "adam",
    "classifier.optimizer.lr": 0.01, "classifier.optimizer.betas": [0.7, 0.9],
    "classifier.scheduler": "onecycle", "classifier.augment.shift": 0,
    "classifier.augment.rotate": 0, "classifier.augment.scale": 0, "classifier.epochs": 2,
    "classifier.batch_size": 128,
    "digit": "all", "gan.conditional": True, "gan.discriminator.hidden": [256, 128],
    "gan.batch_size": 128, "gan.optimizer_d.lr": 0.0006, "gan.optimizer_g.lr": 0.0006,
    "gan.epochs": 4,
    "gan.snapshots": 2,
}  # fmt: skip
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]  # fmt: skip


def start_play(repo: Path, env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str, float]:
    """`python -m digitlab.play` in `repo` on a free port; the process, its address and the
    seconds until it answered."""
    port, started = free_port(), time.monotonic()
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(BIN / "python"), "-m", "digitlab.play", "--port", str(port)],
            cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until_healthy(server, port, log, timeout=120, path="/api/models")
    except AssertionError:
        stop(server)
        raise
    return server, f"http://127.0.0.1:{port}", time.monotonic() - started


def call(base: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    """(status, parsed JSON) of a GET (no body) or a POST of `body` as JSON (or `raw` bytes)."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path, data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def play_repo(raw_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A copy of the repo whose registry holds the classifier and the conditional generator
    that `dvc repro train_classifier train_gan` made with PLAY's params."""
    repo = copy_repo(tmp_path_factory.mktemp("play"))
    for key, value in PLAY.items():
        set_param(repo, key, value)
    env = pipeline_env(raw_mnist)
    dvc(repo, env, "repro", "train_classifier", "train_gan")
    return repo, env


@pytest.fixture(scope="module")
def play(play_repo: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The running playground: (address, process, seconds it took to answer)."""
    repo, env = play_repo
    server, base, seconds = start_play(repo, env, tmp_path_factory.mktemp("log") / "play.log")
    yield base, server, seconds
    stop(server)


def good_image() -> list[list[float]]:
    image = [[0.0] * 28 for _ in range(28)]
    for row in range(4, 24):
        image[row][14] = 1.0
    return image


# ---------------------------------------------------------------- the API


def test_it_answers_quickly_on_the_loopback_address_only(play: Any) -> None:
    base, server, seconds = play
    assert seconds < 45, f"the playground took {seconds:.1f} s to answer"
    listening = {c.laddr for c in psutil.Process(server.pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN}  # fmt: skip
    assert listening and all(address.ip == "127.0.0.1" for address in listening), listening
    status, models = call(base, "/api/models")
    assert status == 200
    assert models["classifier"]["current"] == 1 and models["generator"]["current"] == 1
    assert models["generator"]["conditional"] is True
    (version,) = models["classifier"]["versions"]
    assert (
        "latest-mnist" in version["aliases"] and version["params"]["classifier.arch"] == "fastcnn"
    )


def test_real_test_images_prepared_like_a_drawing_get_their_label(
    play: Any, prepared: tuple[Path, dict]
) -> None:
    base = play[0]
    test = load_split(prepared[0], "test")
    right = 0
    for image, label in zip(test.images[:100], test.labels[:100], strict=True):
        drawing = prepare_drawing(image[0]).tolist()
        status, answer = call(base, "/api/classify", {"image": drawing})
        assert status == 200, answer
        assert len(answer["probabilities"]) == 10
        assert math.isclose(sum(answer["probabilities"]), 1, abs_tol=1e-4)
        right += answer["answer"] == int(label)
    assert right >= 98, f"{right} of 100 test images answered with their label"


BAD_REQUESTS = [
    ("/api/classify", {"image": [[0.0] * 28] * 27}, 422, "must be 28 rows of 28 numbers"),
    ("/api/classify", {"image": [[0.0] * 27] * 28}, 422, "must be 28 rows of 28 numbers"),
    ("/api/classify", {"image": [["white"] * 28] * 28}, 422, "must hold numbers only"),
    ("/api/classify", {"image": [[True] * 28] * 28}, 422, "must hold numbers only"),
    ("/api/classify", {"image": [[math.nan] * 28] * 28}, 422, "numbers in [0, 1]; nan"),
    ("/api/classify", {"image": [[2.0] * 28] * 28}, 422, "numbers in [0, 1]; 2.0"),
    ("/api/classify", {"pixels": []}, 422, "image: Field required"),
    ("/api/classify", [1, 2], 422, "the body must be a JSON object"),
    ("/api/generate", {"digit": 10}, 422, "digit: Input should be less than or equal to 9"),
    ("/api/generate", {"digit": -1}, 422, "digit: Input should be greater than or equal to 0"),
    ("/api/generate", {"digit": "7"}, 422, "digit: Input should be a valid integer"),
    ("/api/generate", {"count": 1000}, 422, "count: Input should be less than or equal to 100"),
    ("/api/generate", {"format": "gif"}, 422, "format: Input should be 'array' or 'png'"),
    ("/api/walk", {"seeds": [1]}, 422, "seeds: List should have at least 2 items"),
    ("/api/models", {"classifier": 99}, 404, "digitlab-classifier has no version 99 (registered: 1)"),
    ("/api/models", {"generator": 7}, 404, "digitlab-generator has no version 7 (registered: 1)"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD_REQUESTS)
def test_a_bad_request_gets_one_line_and_the_next_is_answered(
    play: Any, path: str, body: Any, status: int, message: str
) -> None:
    base = play[0]
    got, answer = call(base, path, body)
    assert (got, answer.keys()) == (status, {"error"}), answer
    assert message in answer["error"] and "\n" not in answer["error"], answer["error"]
    assert call(base, "/api/classify", {"image": good_image()})[0] == 200


def test_bodies_over_the_limit_and_not_json_are_refused(play: Any) -> None:
    base = play[0]
    padded = b'{"image": [' + b" " * MAX_BODY + b"]}"
    assert call(base, "/api/classify", raw=padded) == (
        413, {"error": f"the body may hold at most {MAX_BODY:,} bytes"}
    )  # fmt: skip
    form = urllib.request.Request(base + "/api/classify", data=b'{"image": []}')  # curl -d
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(form, timeout=60)
    assert (refused.value.code, json.loads(refused.value.read())) == (
        422, {"error": "the body must be sent as JSON (header Content-Type: application/json)"}
    )  # fmt: skip
    assert call(base, "/api/classify", raw=b"{not json") == (
        422, {"error": "the body is not valid JSON"}
    )  # fmt: skip
    assert call(base, "/api/classify", {"image": good_image()})[0] == 200


def test_generate_gives_images_with_the_classifiers_answers(play: Any) -> None:
    base = play[0]
    status, made = call(
        base, "/api/generate", {"digit": 4, "count": 8, "seed": 3, "format": "array"}
    )
    assert status == 200, made
    assert len(made["images"]) == 8 and 0 <= made["decent_share"] <= 1
    for sample in made["images"]:
        pixels = torch.tensor(sample["image"])
        assert pixels.shape == (28, 28) and pixels.min() >= 0 and pixels.max() <= 1
        status, answer = call(base, "/api/classify", {"image": sample["image"]})
        assert answer["answer"] == sample["answer"]  # the same classifier, the same answer
    assert (
        call(base, "/api/generate", {"digit": 4, "count": 8, "seed": 3, "format": "array"})[1]
        == made
    )
    status, ten = call(base, "/api/digits", {"seed": 5})
    assert status == 200 and len(ten["images"]) == 10 and "png" in ten["images"][0]
    status, walk = call(
        base, "/api/walk", {"digit": 2, "seeds": [0, 1], "steps": 5, "format": "array"}
    )
    assert status == 200 and len(walk["images"]) == 5
    assert (
        walk["images"][0]["image"]
        == call(base, "/api/generate", {"digit": 2, "count": 1, "seed": 0, "format": "array"})[1][
            "images"
        ][0]["image"]
    )  # the walk starts at seed 0's noise vector


def test_before_any_model_is_registered_the_page_names_the_command(
    tmp_path: Path, raw_mnist: Path
) -> None:
    repo = copy_repo(tmp_path / "empty")
    server, base, _ = start_play(repo, pipeline_env(raw_mnist), tmp_path / "play.log")
    try:
        status, models = call(base, "/api/models")
        assert status == 200 and models["classifier"]["current"] is None
        assert "run `make repro`" in models["classifier"]["hint"]
        status, answer = call(base, "/api/classify", {"image": good_image()})
        assert (
            status == 503 and "no classifier is registered yet: run `make repro`" in answer["error"]
        )
        status, answer = call(base, "/api/generate", {})
        assert status == 503 and "no generator is registered yet" in answer["error"]
    finally:
        stop(server)


# ---------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def page(play: Any) -> Iterator[Any]:
    """The playground in headless Chromium; every URL the page asked for is in page.asked."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = chromium()
    with sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        tab = browser.new_page(viewport={"width": 1200, "height": 1400})
        tab.asked = []
        tab.on("request", lambda request: tab.asked.append(request.url))
        tab.goto(play[0] + "/")
        tab.wait_for_function("document.querySelectorAll('#classifier-version option').length > 0")
        yield tab
        browser.close()


def draw(tab: Any, strokes: list[list[tuple[float, float]]]) -> dict[str, Any]:
    """Draw `strokes` (points in the pad's 0–1 coordinates) with the mouse, after Clear; what
    the page then shows and what it sent."""
    tab.click("#clear")
    answers = tab.evaluate("window.digitlab.answers")
    tab.evaluate("window.digitlab.latencyMs = null")
    box = tab.locator("#pad").bounding_box()
    for stroke in strokes:
        x, y = stroke[0]
        tab.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
        tab.mouse.down()
        for x, y in stroke[1:]:
            tab.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=2)
        tab.mouse.up()
    tab.wait_for_function("window.digitlab.latencyMs !== null")
    return {
        "answer": tab.inner_text("#answer"),
        "latency_ms": tab.evaluate("window.digitlab.latencyMs"),
        "live_answers": tab.evaluate("window.digitlab.answers") - answers,
        "prepared": tab.evaluate("window.digitlab.prepared"),
        "pad": tab.evaluate("""() => {
            const pad = document.getElementById('pad');
            const rgba = pad.getContext('2d').getImageData(0, 0, pad.width, pad.height).data;
            return Array.from({length: pad.width * pad.height}, (_, i) => rgba[4 * i] / 255);
        }"""),
        "bars": [tab.inner_text(f"#p-{d}") for d in range(10)],
    }


def test_a_vertical_stroke_is_a_one_and_the_bars_follow_within_300_ms(page: Any) -> None:
    seen = draw(page, [[(0.5, 0.15 + 0.05 * i) for i in range(15)]])
    assert seen["answer"] == "1", seen["bars"]
    assert seen["latency_ms"] <= 300, f"bars updated {seen['latency_ms']:.0f} ms after pointerup"
    assert seen["live_answers"] >= 2  # answered while drawing, not only at the end
    assert sum(float(b.rstrip("%")) for b in seen["bars"]) == pytest.approx(100, abs=0.6)


def test_a_drawn_zero_is_a_zero_prepared_as_python_prepares_it(page: Any) -> None:
    ring = [(0.5 + 0.22 * math.sin(t / 24 * 2 * math.pi), 0.5 - 0.32 * math.cos(t / 24 * 2 * math.pi))
            for t in range(25)]  # fmt: skip
    seen = draw(page, [ring])
    assert seen["answer"] == "0", seen["bars"]
    assert seen["latency_ms"] <= 300
    pad = torch.tensor(seen["pad"]).reshape(280, 280)
    python = prepare_drawing(pad)
    browser = torch.tensor(seen["prepared"])
    assert browser.shape == (28, 28) and python.max() == 1
    assert (browser - python).abs().max() < 1e-3  # the same 28×28 image, to the 4 decimals sent


def test_samples_of_a_chosen_digit_are_judged_as_it(page: Any, play: Any) -> None:
    page.select_option("#digit", "7")
    page.fill("#count", "20")
    page.click("#make")
    page.wait_for_function("document.querySelectorAll('#samples figure').length === 20")
    answers = page.eval_on_selector_all(
        "#samples figure", "fs => fs.map(f => Number(f.dataset.answer))"
    )
    assert sum(a == 7 for a in answers) >= 15, answers
    assert "judged decent" in page.inner_text("#decent")
    page.click("#ten")
    page.wait_for_function("document.querySelectorAll('#samples figure').length === 10")
    answers = page.eval_on_selector_all(
        "#samples figure", "fs => fs.map(f => Number(f.dataset.answer))"
    )
    assert sum(a == d for d, a in enumerate(answers)) >= 7, answers
    page.click("#walk")
    page.wait_for_selector("#walk-frame figure img")
    first = page.get_attribute("#walk-frame img", "src")
    page.fill("#step", "15")
    page.dispatch_event("#step", "input")
    assert page.get_attribute("#walk-frame img", "src") != first
    assert page.is_hidden("#error")
    assert all(url.startswith(play[0]) or url.startswith("data:") for url in page.asked), page.asked


def test_a_taken_port_or_a_bad_one_is_one_line_before_any_model_loads(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [str(BIN / "python"), "-m", "digitlab.play", "--port", str(port)],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert run.returncode == 1 and run.stderr == (
        f"digitlab: error: 127.0.0.1:{port} cannot be served (Address already in use): "
        f"choose another port (make play PLAY_PORT={port + 1}, or --port)\n"
    )
    run = subprocess.run(
        [str(BIN / "python"), "-m", "digitlab.play"], cwd=tmp_path, capture_output=True,
        text=True, timeout=60, env={**os.environ, "PLAY_PORT": "80000"},
    )  # fmt: skip
    assert run.returncode == 2 and run.stderr.endswith(
        "error: argument --port: '80000' is not a port (1-65535)\n"
    )


def test_a_generator_for_one_digit_names_the_command_and_one_for_any_digit_is_the_default(
    play_repo: tuple[Path, dict], tmp_path: Path
) -> None:
    """After the conditional generator, a digit-3 one is registered under the current params'
    alias (the defaults): the page still starts with the one that makes any digit, and chosen,
    the digit-3 one says in one line why the digit picker is off and what makes one."""
    repo, env = play_repo
    params = (repo / "params.yaml").read_text()
    for key, value in {"digit": 3, "gan.conditional": False, "gan.epochs": 1}.items():
        set_param(repo, key, value)
    try:
        dvc(repo, env, "repro", "train_gan")
        server, base, _ = start_play(repo, env, tmp_path / "play.log")
    finally:
        (repo / "params.yaml").write_text(params)
    try:
        status, models = call(base, "/api/models")
        assert status == 200 and [v["version"] for v in models["generator"]["versions"]] == [2, 1]
        assert "latest-mnist-3" in models["generator"]["versions"][0]["aliases"]
        generator = models["generator"]
        assert (generator["current"], generator["conditional"], generator["hint"]) == (
            1,
            True,
            None,
        )
        status, models = call(base, "/api/models", {"generator": 2})
        assert status == 200 and models["generator"]["conditional"] is False
        hint = models["generator"]["hint"]
        assert "makes only what it was trained on (digit: 3)" in hint and "\n" not in hint
        assert "`make any-digit` trains one for any digit" in hint
        status, answer = call(base, "/api/generate", {"digit": 5})
        assert status == 400 and "`make any-digit` registers one" in answer["error"]
    finally:
        stop(server)
