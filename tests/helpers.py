"""Helpers the test modules share: the repo's params with keys changed, copies of the repo,
DVC, git and MLflow in them, headless Chromium. Every subprocess has a timeout."""

from __future__ import annotations

import html
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from digitlab.data import CLASS_NAMES
from digitlab.errors import DigitlabError
from digitlab.params import Params, parse_params
from digitlab.raw import CIFAR_FILES, RAW_DIR_ENV
from digitlab.store import KIND_TAG

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DVC_TIMEOUT = 900  # seconds for one dvc command (a tiny pipeline takes about a minute)

# Params small enough for a whole `dvc repro` in about a minute.
TINY = {
    "classifier.arch": "mlp",
    "classifier.hidden": [32],
    "classifier.epochs": 1,
    "classifier.batch_size": 256,
    "gan.epochs": 1,
    "gan.discriminator.hidden": [64, 32],
    "gan.snapshots": 2,
    "gan_eval.num_samples": 500,
}
ALL_STAGES = {"fetch", "prepare", "train_classifier", "evaluate", "train_gan", "evaluate_gan",
              "report"}  # fmt: skip
TRAINING_STAGES = {"train_classifier", "train_gan"}


def default_sigint() -> None:
    """preexec_fn for a process stopped with Ctrl-C: SIGINT handled as when a terminal starts
    it, even when the tests run as a background job (which starts with SIGINT ignored, and
    run_main keeps an ignored SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def set_key(raw: dict, key: str, value: object) -> None:
    """Set a dotted key ('gan.discriminator.hidden') in a params.yaml mapping."""
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[last] = value


def repo_params(**changes: object) -> Params:
    """The repo's params.yaml, parsed, with dotted keys changed: repo_params(**{"gan.epochs": 2})."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in changes.items():
        set_key(raw, key, value)
    return parse_params(raw)


def set_param(repo: Path, key: str, value: object) -> None:
    """Set a dotted key in the params.yaml of a copy of the repo."""
    path = repo / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    set_key(raw, key, value)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def pipeline_env(raw_dir: Path) -> dict[str, str]:
    """Environment for running dvc in a copy of the repo: the venv first on PATH, raw files
    offered through the local-directory source, no inherited MLflow / DVC settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env[RAW_DIR_ENV] = str(raw_dir)
    env["DVC_NO_ANALYTICS"] = "1"
    env["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"  # tiny trainings last seconds
    return env


def git(repo: Path, *args: str) -> str:
    """Run git in `repo` as a test user; its stdout."""
    command = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args]
    return subprocess.run(
        command, cwd=repo, check=True, capture_output=True, text=True, timeout=120
    ).stdout


def copy_repo(dest: Path) -> Path:
    """Copy the repo's files (tracked + untracked-not-ignored) to `dest` as a new git repo."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "copy")
    return dest


def clone_repo(baseline: Path, dest: Path) -> Path:
    """A full copy of a reproduced repo: Git history, DVC cache, outputs and MLflow store (whose
    runs keep their artifacts in the baseline's mlartifacts/)."""
    shutil.copytree(baseline, dest, symlinks=True, dirs_exist_ok=True)
    return dest


def dvc(
    repo: Path, env: dict[str, str], *args: str, check: bool = True, timeout: float = DVC_TIMEOUT
) -> subprocess.CompletedProcess:
    """Run dvc in `repo`; with check, a failure raises with its output."""
    result = subprocess.run(
        ["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def ran_stages(output: str) -> set[str]:
    """The stages a `dvc repro` output says it ran."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def changed_stages(repo: Path, env: dict[str, str]) -> set[str]:
    """The stages `dvc status` calls changed."""
    return set(json.loads(dvc(repo, env, "status", "--json").stdout))


def client(repo: Path) -> Any:
    """An MLflow client on the repo's SQLite store."""
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")


def mlflow_runs(repo: Path) -> list:
    """Every run in the repo's store (stages and pipeline parents), newest first."""
    experiment = client(repo).get_experiment_by_name("digitlab")
    return list(
        client(repo).search_runs(
            [experiment.experiment_id], max_results=1000, order_by=["attributes.start_time DESC"]
        )
    )


def stage_runs(repo: Path, query: str = "") -> list:
    """Stage runs (not pipeline parents) in the repo's store, newest first."""
    mlflow_client = client(repo)
    experiment = mlflow_client.get_experiment_by_name("digitlab")
    kind = f"tags.`{KIND_TAG}` = 'stage'"
    return list(
        mlflow_client.search_runs(
            [experiment.experiment_id],
            filter_string=f"{kind} and {query}" if query else kind,
            max_results=1000,
            order_by=["attributes.start_time DESC"],
        )
    )


def outputs_snapshot(
    repo: Path, folders: tuple[str, ...] = ("models", "reports", "data/prepared")
) -> dict[str, bytes]:
    """The bytes of every file under models/, reports/ and data/prepared/ (or `folders`)."""
    return {
        str(p.relative_to(repo)): p.read_bytes()
        for folder in folders
        for p in sorted((repo / folder).rglob("*"))
        if p.is_file()
    }


def alias_bomb(levels: int = 9) -> str:
    """A YAML flow sequence whose last item expands to 10**levels leaves (a "billion laughs"):
    each level's anchor is ten aliases of the one before."""
    items = ["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    items += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return f"[{', '.join(items)}]"


# ---------------------------------------------------------------- CIFAR-10, generated

PER_BATCH = 50  # images per generated batch: 250 training images, 50 test images


def write_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    """A batch pickled like CIFAR-10's python version (bytes keys, N×3072 uint8 rows)."""
    names = [f"image_{i}.png".encode() for i in range(len(labels))]
    batch = {b"batch_label": path.name.encode(), b"labels": labels, b"data": data,
             b"filenames": names}  # fmt: skip
    path.write_bytes(pickle.dumps(batch))


def make_cifar(directory: Path) -> Path:
    """The seven python-version files, random pixels, labels 0-9 in turn; the first training
    image has its red plane all 255, green 0 and blue 128."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in CIFAR_FILES[:-1]:
        data = rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8)
        if name == "data_batch_1":
            data[0, :1024], data[0, 1024:2048], data[0, 2048:] = 255, 0, 128
        write_batch(directory / name, data, [i % 10 for i in range(PER_BATCH)])
    meta = {b"label_names": [n.encode() for n in CLASS_NAMES["cifar10"]], b"num_vis": 3072,
            b"num_cases_per_batch": PER_BATCH}  # fmt: skip
    (directory / "batches.meta").write_bytes(pickle.dumps(meta))
    return directory


def one_line_error(call, *args) -> str:
    with pytest.raises(DigitlabError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- servers


def free_port() -> int:
    """A TCP port free on the loopback address."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(
    proc: subprocess.Popen, port: int, log: Path, timeout: float = 120, path: str = "/health"
) -> None:
    """Wait until a server answers `path` with 200, failing with its log if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no answer on port {port} after {timeout} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """End a server started in its own session, with its workers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def mlflow_server(
    port: int, folder: Path, env: dict[str, str], log: Path, store: str | None = None
) -> subprocess.Popen:
    """A real `mlflow server` on `store` (a SQLAlchemy URI; default a SQLite file in
    `folder`), artifacts in `folder`/server-artifacts, in its own session (stop())."""
    store = store or f"sqlite:///{folder / 'server.db'}"
    with log.open("w") as out:
        return subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", store,
             "--artifacts-destination", str(folder / "server-artifacts")],
            cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


# ---------------------------------------------------------------- headless Chromium

# Injected first in <head>: records console errors, uncaught errors and failed resource loads
# (capturing 'error' listener), then on load reports every image that did not decode.
CHECK = """<script>
const digitlabErrors = [];
const originalError = console.error;
console.error = (...args) => { digitlabErrors.push(args.join(' ')); originalError(...args); };
window.addEventListener('error', e => digitlabErrors.push(e.message || ('failed to load ' + (e.target.src || e.target.href))), true);
window.addEventListener('load', () => {
  const images = [...document.images];
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const out = document.createElement('pre');
  out.id = 'digitlab-check';
  out.textContent = JSON.stringify({images: images.length, broken, errors: digitlabErrors});
  document.body.appendChild(out);
});
</script>"""


def skip_without(package: str) -> None:
    """Skip the test: a Debian package it needs is missing (`make test` installs it as root)."""
    pytest.skip(f"Debian's {package} is not installed: run `sudo make system-deps`")


def chromium() -> str:
    """The path of a Chromium-like browser; without one, the test is skipped."""
    names = ("chromium", "chromium-browser", "google-chrome")
    found = next((shutil.which(n) for n in names if shutil.which(n)), None)
    if found is None:
        skip_without("chromium")
    return found


def render(page: Path, tmp: Path) -> tuple[dict, list[str]]:
    """Load a page in headless Chromium; return the in-page image check and console errors."""
    checked = tmp / "checked.html"
    text = page.read_text()
    head = re.search(r"<head[^>]*>", text)
    at = head.end() if head else 0
    checked.write_text(text[:at] + CHECK + text[at:])
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=10000", "--dump-dom", checked.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    match = re.search(r'<pre id="digitlab-check">(.*?)</pre>', result.stdout, re.S)
    assert match, f"the page did not finish loading:\n{result.stderr[-2000:]}"
    check = json.loads(html.unescape(match.group(1)))
    return check, check.pop("errors")
