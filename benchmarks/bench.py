"""`make bench`: time to an answer, measured side by side in one run: seconds until the
classifier reaches 99.0% test accuracy (digitlab's default next to pytorch/examples' MNIST
recipe), until the default GAN is 90% decent, until a revisited setting is back from DVC's
run-cache, and a `dvc repro` with nothing to do. Writes reports/bench.json, then the tables
in README.md and docs/performance.md (benchmarks/render.py)."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from benchmarks.render import write_tables
from digitlab.data import Split, load_split
from digitlab.files import write_json
from digitlab.gan import fit_gan
from digitlab.inference import generate, predict_logits, probabilities
from digitlab.metrics import decent_rate
from digitlab.models import build_classifier, load_classifier
from digitlab.params import ClassifierParams, Params, load_params
from digitlab.train import fit_classifier, loss_and_accuracy

CPU = torch.device("cpu")


class _Reached(Exception):
    """Raised from a training callback to stop once the target is reached."""


def _first_reached(curve: list[dict[str, float]], key: str, target: float) -> dict[str, Any]:
    hit = next((point for point in curve if point[key] >= target), None)
    return {"seconds": hit["seconds"] if hit else None, "target": target, "curve": curve}


def classifier_time_to_accuracy(
    cfg: ClassifierParams, train: Split, val: Split, test: Split, seed: int, target: float
) -> dict[str, Any]:
    """Training seconds (validation included, test evaluation not) until the classifier first
    reaches `target` test accuracy, checked after every epoch."""
    torch.manual_seed(seed)
    model = build_classifier(cfg.architecture())
    curve: list[dict[str, float]] = []

    def on_epoch(row: dict[str, float]) -> None:
        seconds = (curve[-1]["seconds"] if curve else 0.0) + row["seconds"]
        _, accuracy = loss_and_accuracy(model, test, cfg.loss, CPU)
        curve.append({"epoch": row["epoch"], "seconds": seconds, "test_acc": accuracy})
        if accuracy >= target:
            raise _Reached

    with contextlib.suppress(_Reached):
        fit_classifier(model, train, val, cfg, seed, CPU, on_epoch)
    return _first_reached(curve, "test_acc", target)


class ExamplesNet(nn.Module):
    """pytorch/examples' MNIST CNN (mnist/main.py): conv 32 → conv 64 → max-pool → dropout
    0.25 → fc 128 → dropout 0.5 → fc 10, log-softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = F.relu(self.fc1(torch.flatten(self.dropout1(x), 1)))
        return F.log_softmax(self.fc2(self.dropout2(x)), dim=1)


def examples_time_to_accuracy(
    raw_dir: Path, seed: int, target: float, max_epochs: int = 8, n_train: int | None = None
) -> dict[str, Any]:
    """pytorch/examples' MNIST recipe as its main.py runs it (DataLoader with ToTensor and
    Normalize, batch 64, Adadelta lr 1.0, StepLR gamma 0.7, all 60,000 training images):
    training seconds until the test accuracy, checked after every epoch, first reaches
    `target`."""
    from torchvision import transforms

    torch.manual_seed(seed)
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
    )
    curve: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as root:
        train_set = _torchvision_mnist(raw_dir, root, transform, train=True)
        test_set = _torchvision_mnist(raw_dir, root, transform, train=False)
        if n_train is not None:
            train_set = torch.utils.data.Subset(train_set, range(n_train))
        train_loader = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True)
        test_loader = torch.utils.data.DataLoader(test_set, batch_size=1000)
        model = ExamplesNet()
        optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
        seconds = 0.0
        for epoch in range(1, max_epochs + 1):
            start = time.perf_counter()
            model.train()
            for data, labels in train_loader:
                optimizer.zero_grad()
                F.nll_loss(model(data), labels).backward()
                optimizer.step()
            seconds += time.perf_counter() - start
            model.eval()
            with torch.no_grad():
                correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in test_loader)
            curve.append({"epoch": epoch, "seconds": seconds, "test_acc": correct / len(test_set)})
            scheduler.step()
            if curve[-1]["test_acc"] >= target:
                break
    return _first_reached(curve, "test_acc", target)


def gan_time_to_decent(
    params: Params, real: torch.Tensor, classifier: nn.Module, loss: str, target: float,
    n_samples: int = 1000,
) -> dict[str, Any]:  # fmt: skip
    """Training seconds (judging excluded) until the generator digitlab would save first makes
    `target` decent samples (params.gan_eval.threshold), judged by the trained classifier on
    n_samples fresh samples after every epoch (every round)."""
    cfg = params.gan
    checks = cfg.epochs if cfg.schedule == "epochs" else cfg.rounds
    cfg = cfg.model_copy(update={"snapshots": min(checks, 100)})
    curve: list[dict[str, float]] = []
    judging = 0.0
    start = time.perf_counter()

    def on_snapshot(step: int, saved: nn.Module) -> None:
        nonlocal judging
        begin = time.perf_counter()
        samples = generate(saved, n_samples, params.seed, CPU)
        probs = probabilities(predict_logits(classifier, samples, CPU), loss)
        rate = decent_rate(probs, params.digits, params.gan_eval.threshold)
        curve.append({"g_step": step, "seconds": begin - start - judging, "decent_rate": rate})
        judging += time.perf_counter() - begin
        if rate >= target:
            raise _Reached

    with contextlib.suppress(_Reached):
        fit_gan(cfg, real, params.seed, CPU, on_snapshot=on_snapshot)
    return _first_reached(curve, "decent_rate", target)


def noop_repro_seconds(root: Path) -> float | None:
    """Seconds of `dvc repro` with nothing to do; None when the pipeline is not up to date
    (the benchmark does not run stages)."""
    dvc = [sys.executable, "-m", "dvc"]
    status = subprocess.run([*dvc, "status", "--json"], cwd=root, capture_output=True, text=True)
    if status.returncode != 0 or json.loads(status.stdout or "{}"):
        return None
    start = time.perf_counter()
    subprocess.run([*dvc, "repro"], cwd=root, check=True, capture_output=True)
    return time.perf_counter() - start


def _dvc(repo: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True,
                          text=True, timeout=timeout, check=True)  # fmt: skip


def _set_param(repo: Path, key: str, value: Any) -> None:
    path = repo / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[last] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def revisit_seconds(root: Path, key: str, value: Any) -> dict[str, Any] | None:
    """In a copy of the repo sharing its DVC cache: set `key` to `value`, `dvc repro`, set it
    back, `dvc repro`; seconds of each repro and the stages the last one ran (none: all came
    back from DVC's run-cache). None when the pipeline is not up to date."""
    status = _dvc(root, "status", "--json")
    if json.loads(status.stdout or "{}"):
        return None
    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True,
                           check=True, timeout=60).stdout.split("\0")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        for name in filter(None, files):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, repo / name)
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True, timeout=60)
        _dvc(repo, "cache", "dir", "--local", str(root / ".dvc" / "cache"))
        _dvc(repo, "checkout")
        original = yaml.safe_load((repo / "params.yaml").read_text())
        old = original
        for part in key.split("."):
            old = old[part]
        timings: dict[str, Any] = {"key": key, "value": value}
        for name, setting in (("away_s", value), ("back_s", old)):
            _set_param(repo, key, setting)
            start = time.perf_counter()
            out = _dvc(repo, "repro").stdout
            timings[name] = time.perf_counter() - start
            ran = [
                line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")
            ]
            timings[name.replace("_s", "_ran")] = ran
    return timings


def _torchvision_mnist(raw_dir: Path, root: str, transform: Any, train: bool = True) -> Any:
    """torchvision's MNIST training (or test) set over our raw files, symlinked into its
    layout under `root`."""
    from torchvision import datasets

    raw = Path(root) / "MNIST" / "raw"
    if not raw.is_dir():
        raw.mkdir(parents=True)
        for path in raw_dir.iterdir():
            (raw / path.name).symlink_to(path.resolve())
    return datasets.MNIST(root, train=train, download=False, transform=transform)


def run(params: Params, prepared: Path, raw_dir: Path, revisit: tuple[str, Any] | None) -> dict:
    """Every benchmark, in one process; returns the figures."""
    train, val, test = (load_split(prepared, name) for name in ("train", "val", "test"))
    seed = params.seed
    results: dict[str, Any] = {"threads": torch.get_num_threads()}
    results["time_to_99_test_acc"] = {
        "digitlab": classifier_time_to_accuracy(params.classifier, train, val, test, seed, 0.99),
        "pytorch_examples": examples_time_to_accuracy(raw_dir, seed, 0.99),
    }
    classifier_path = Path("models/classifier.pt")
    if classifier_path.is_file():
        classifier, architecture, _ = load_classifier(classifier_path)
        real = train.of_digits(params.digits).images
        results["gan_time_to_90_decent"] = gan_time_to_decent(
            params, real, classifier, architecture.loss, 0.9
        )
    results["noop_repro_s"] = noop_repro_seconds(Path.cwd())
    if revisit is not None:
        results["revisit"] = revisit_seconds(Path.cwd(), *revisit)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("reports/bench.json"))
    parser.add_argument("--revisit", default="digit=7",
                        help="KEY=VALUE to set and set back in a copy of the repo ('' skips)")  # fmt: skip
    args = parser.parse_args()
    # A few epochs are too few for a GAN: its collapse warning says nothing about speed.
    warnings.filterwarnings("ignore", message="the generator looks collapsed")
    params = load_params()
    raw_dir = Path("data/raw") / params.data.dataset
    revisit = None
    if args.revisit:
        key, value = args.revisit.split("=", 1)
        revisit = (key, yaml.safe_load(value))
    results = run(params, Path("data/prepared"), raw_dir, revisit)
    write_json(args.out, results)
    print(write_tables(results))
    print(f"figures: {args.out}")


if __name__ == "__main__":
    main()
