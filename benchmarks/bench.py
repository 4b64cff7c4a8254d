"""`make bench`: time to an answer, side by side. Each comparison runs each of its two
recipes once to warm up, then three times interleaved (ours, theirs, ours, …), and reports every
ratio and their median: digitlab's fast recipe against tuomaso/train_mnist_fast's, and its
default against pytorch/examples' (seconds of training to 99.0% test accuracy, both written here
in plain PyTorch as published); the default GAN against PyTorch-GAN's vanilla GAN (seconds until
the Fréchet ratio, evaluate_gan's judge, drops below 2). Then a revisited setting back from DVC's
run-cache, and a `dvc repro` with nothing to do. Writes reports/bench.json, then the tables in
docs/performance.md (benchmarks/render.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from benchmarks.render import write_tables
from digitlab.checkpoints import load_classifier
from digitlab.data import Split, load_split
from digitlab.device import device_info
from digitlab.files import write_json
from digitlab.gan import fit_gan
from digitlab.inference import generate, predict_logits, predict_probabilities
from digitlab.metrics import decent_rate, frechet_distance
from digitlab.models import build_classifier
from digitlab.params import (
    ClassifierArchitecture,
    ClassifierParams,
    Params,
    load_params,
    parse_params,
)
from digitlab.train import fit_classifier

CPU = torch.device("cpu")
TARGETS = {"99": 0.99, "995": 0.995}  # test accuracy the classifier recipes race to
FRECHET_TARGET = 2.0  # the GAN races until its Fréchet ratio is below this
GAN_SAMPLES = 2000  # generated images per Fréchet judgement
EXAMPLES_EPOCHS = 5  # of pytorch/examples' 14: its 99.0% came at epoch 4 (docs/performance.md)
# digitlab's fast recipe, params only (README, "Experiments"): one epoch, no augmentation.
FAST_RECIPE = {
    "classifier.arch": "fastcnn", "classifier.optimizer.name": "adam",
    "classifier.optimizer.lr": 0.01, "classifier.optimizer.betas": [0.7, 0.9],
    "classifier.scheduler": "onecycle", "classifier.augment.shift": 0,
    "classifier.augment.rotate": 0, "classifier.augment.scale": 0, "classifier.epochs": 1,
    "classifier.batch_size": 128,
}  # fmt: skip


class _Reached(Exception):
    """Raised from a training callback to stop once every target is reached."""


class Stopwatch:
    """Seconds of training: wall time since the start, minus the time spent judging. On a GPU,
    the clock is read once the device has done what was asked of it."""

    def __init__(self, device: torch.device = CPU) -> None:
        self.device = device
        self.start = time.perf_counter()
        self.judging = 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextlib.contextmanager
    def paused(self) -> Iterator[float]:
        """Judge inside the block; yields the training seconds so far."""
        begin = self._now()
        yield begin - self.start - self.judging
        self.judging += self._now() - begin


def seconds_to(curve: list[dict[str, float]], key: str, targets: dict[str, float],
               below: bool = False) -> dict[str, Any]:  # fmt: skip
    """For each named target, `seconds_to_<name>`: the seconds of the first point of `curve`
    whose `key` reached it (is below it with `below`), or None; the curve too."""
    out: dict[str, Any] = {}
    for name, target in targets.items():
        hit = next((p for p in curve if (p[key] < target if below else p[key] >= target)), None)
        out[f"seconds_to_{name}"] = hit["seconds"] if hit else None
    return {**out, "curve": curve}


def _judge_accuracy(
    model: nn.Module, test: Split, curve: list, watch: Stopwatch, epoch: float, targets: dict
) -> None:
    """Append the model's test accuracy at `epoch` to `curve`; stop when the last target is
    reached. The model is left in training mode."""
    with watch.paused() as seconds:
        logits = predict_logits(model, test.images, watch.device)
        model.train()
    accuracy = (logits.argmax(1) == test.labels).double().mean().item()
    curve.append({"epoch": round(epoch, 3), "seconds": seconds, "test_acc": accuracy})
    if accuracy >= max(targets.values()):
        raise _Reached


def classifier_time_to_accuracy(
    cfg: ClassifierParams, train: Split, val: Split, test: Split, seed: int,
    targets: dict[str, float] = TARGETS, checks_per_epoch: int = 1, device: torch.device = CPU,
) -> dict[str, Any]:  # fmt: skip
    """digitlab's training with classifier params `cfg`: training seconds (its validation
    included) until the test accuracy first reaches each target, judged `checks_per_epoch`
    times an epoch."""
    torch.manual_seed(seed)
    model = build_classifier(cfg.architecture())
    batch = len(train.labels) if cfg.batch_size == 0 else min(cfg.batch_size, len(train.labels))
    steps = math.ceil(len(train.labels) / batch)
    every = max(1, steps // checks_per_epoch)
    curve: list[dict[str, float]] = []
    watch = Stopwatch(device)

    def on_step(epoch: int, step: int) -> None:
        if step % every == 0 or step == steps:
            _judge_accuracy(model, test, curve, watch, epoch - 1 + step / steps, targets)

    with contextlib.suppress(_Reached):
        fit_classifier(model, train, val, cfg, seed, device, on_step=on_step)
    return seconds_to(curve, "test_acc", targets)


def _raw_mnist(raw_dir: Path, train: bool) -> Split:
    """MNIST's training (or test) set from our raw files as torchvision reads them, scaled to
    [0, 1] and normalized with MNIST's mean and std, as both reference recipes do."""
    with tempfile.TemporaryDirectory() as root:
        data = _torchvision_mnist(raw_dir, root, None, train=train)
        images = ((data.data.float() / 255 - 0.1307) / 0.3081).unsqueeze(1)
        return Split(images, data.targets.clone())


class TuomasoNet(nn.Module):
    """tuomaso/train_mnist_fast's final net: conv 24 (5×5) → max-pool → ReLU → conv 32 (3×3)
    → max-pool → ReLU → fc 256 → fc 10, log-softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 24, 5, 1)
        self.conv2 = nn.Conv2d(24, 32, 3, 1)
        self.fc1 = nn.Linear(800, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return F.log_softmax(self.fc2(x), dim=1)


def tuomaso_time_to_accuracy(
    raw_dir: Path, seed: int, targets: dict[str, float] = TARGETS, checks: int = 10,
    epochs: int = 1, n_train: int | None = None, device: torch.device = CPU,
) -> dict[str, Any]:  # fmt: skip
    """tuomaso/train_mnist_fast's recipe as published (8_Final notebook): all 60,000 training
    images normalized and shuffled once into memory, batches cut in that order, batch 256,
    Adam lr 0.01 with betas (0.7, 0.9), OneCycleLR without momentum cycling, one epoch.
    Training seconds until the test accuracy first reaches each target, judged `checks` times
    an epoch."""
    torch.manual_seed(seed)
    train, test = _raw_mnist(raw_dir, train=True), _raw_mnist(raw_dir, train=False)
    order = torch.randperm(len(train.labels))[:n_train]
    images, labels = train.images[order].to(device), train.labels[order].to(device)
    batch_size = 256
    steps = (len(labels) - 1) // batch_size + 1
    model = TuomasoNet().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.7, 0.9))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=0.01, total_steps=steps * epochs, cycle_momentum=False
    )
    curve: list[dict[str, float]] = []
    watch = Stopwatch(device)
    model.train()
    with contextlib.suppress(_Reached):
        for i in range(steps * epochs):
            step = i % steps
            batch = slice(batch_size * step, batch_size * (step + 1))
            optimizer.zero_grad()
            F.nll_loss(model(images[batch]), labels[batch]).backward()
            optimizer.step()
            scheduler.step()
            if (i + 1) % max(1, steps // checks) == 0 or step + 1 == steps:
                _judge_accuracy(model, test, curve, watch, (i + 1) / steps, targets)
    return seconds_to(curve, "test_acc", targets)


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
    raw_dir: Path, seed: int, targets: dict[str, float] = TARGETS, max_epochs: int = 8,
    n_train: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """pytorch/examples' MNIST recipe as its main.py runs it (DataLoader with ToTensor and
    Normalize, batch 64, Adadelta lr 1.0, StepLR gamma 0.7, all 60,000 training images):
    training seconds until the test accuracy, judged after every epoch, first reaches each
    target (at most `max_epochs` epochs)."""
    from torchvision import transforms

    torch.manual_seed(seed)
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
    )
    test = _raw_mnist(raw_dir, train=False)
    curve: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as root, contextlib.suppress(_Reached):
        train_set = _torchvision_mnist(raw_dir, root, transform, train=True)
        if n_train is not None:
            train_set = torch.utils.data.Subset(train_set, range(n_train))
        train_loader = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True)
        model = ExamplesNet()
        optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
        watch = Stopwatch()
        for epoch in range(1, max_epochs + 1):
            model.train()
            for data, labels in train_loader:
                optimizer.zero_grad()
                F.nll_loss(model(data), labels).backward()
                optimizer.step()
            scheduler.step()
            _judge_accuracy(model, test, curve, watch, epoch, targets)
    return seconds_to(curve, "test_acc", targets)


class FrechetJudge:
    """evaluate_gan's judge: the Fréchet distance between the classifier's penultimate
    features of generated images and of real test images of the digit(s), over the same
    distance between real training and real test images (the floor)."""

    def __init__(
        self, classifier: nn.Module, real_train: torch.Tensor, real_test: torch.Tensor,
        device: torch.device = CPU,
    ) -> None:  # fmt: skip
        self.classifier, self.device = classifier, device
        self.test = predict_logits(classifier, real_test, device, features=True)
        train = predict_logits(classifier, real_train, device, features=True)
        self.floor = frechet_distance(train, self.test)

    def ratio(self, samples: torch.Tensor) -> float:
        features = predict_logits(self.classifier, samples, self.device, features=True)
        return frechet_distance(features, self.test) / self.floor


def gan_time_to_frechet(
    params: Params, real: torch.Tensor, judge: FrechetJudge, architecture: ClassifierArchitecture,
    target: float = FRECHET_TARGET, n_samples: int = GAN_SAMPLES,
) -> dict[str, Any]:  # fmt: skip
    """digitlab's GAN at `params`: training seconds until the generator it would save first
    has a Fréchet ratio below `target` on n_samples fresh samples, judged after every epoch
    (every round); its decent rate is recorded alongside (also the seconds to 90% decent)."""
    cfg, device = params.gan, judge.device
    checks = cfg.epochs if cfg.schedule == "epochs" else cfg.rounds
    cfg = cfg.model_copy(update={"snapshots": checks})
    curve: list[dict[str, float]] = []
    watch = Stopwatch(device)

    def on_snapshot(g_step: int, saved: nn.Module) -> None:
        with watch.paused() as seconds:
            samples = generate(saved, n_samples, params.seed, device)
            ratio = judge.ratio(samples)
            probs = predict_probabilities(judge.classifier, architecture, samples, device)
            rate = decent_rate(probs, params.digits, params.gan_eval.threshold)
        curve.append({"check": len(curve) + 1, "g_step": g_step, "seconds": seconds,
                      "frechet_ratio": ratio, "decent_rate": rate})  # fmt: skip
        if ratio < target:
            raise _Reached

    with contextlib.suppress(_Reached):
        fit_gan(cfg, real, params.seed, device, on_snapshot=on_snapshot)
    result = seconds_to(curve, "frechet_ratio", {"frechet_2": target}, below=True)
    result |= seconds_to(curve, "decent_rate", {"90_decent": 0.9})
    return result


class VanillaGenerator(nn.Module):
    """PyTorch-GAN's gan.py generator: 100 → 128 → 256 → 512 → 1024 → 784, BatchNorm (its
    eps 0.8) on all but the first block, LeakyReLU 0.2, tanh."""

    def __init__(self, latent_size: int = 100) -> None:
        super().__init__()

        def block(n_in: int, n_out: int, normalize: bool = True) -> list[nn.Module]:
            norm = [nn.BatchNorm1d(n_out, 0.8)] if normalize else []
            return [nn.Linear(n_in, n_out), *norm, nn.LeakyReLU(0.2, inplace=True)]

        self.model = nn.Sequential(
            *block(latent_size, 128, normalize=False), *block(128, 256), *block(256, 512),
            *block(512, 1024), nn.Linear(1024, 784), nn.Tanh(),
        )  # fmt: skip

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z).view(len(z), 1, 28, 28)


class VanillaDiscriminator(nn.Module):
    """PyTorch-GAN's gan.py discriminator: 784 → 512 → 256 → 1, LeakyReLU 0.2, sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(784, 512), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(512, 256), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(256, 1), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.flatten(1))


def pytorch_gan_time_to_frechet(
    real: torch.Tensor, judge: FrechetJudge, seed: int, max_seconds: float,
    target: float = FRECHET_TARGET, n_samples: int = GAN_SAMPLES,
) -> dict[str, Any]:  # fmt: skip
    """PyTorch-GAN's vanilla GAN (gan.py) on the same images ([0, 1], scaled to [-1, 1] as
    its Normalize(0.5, 0.5) does), shuffled every epoch, batch 64, Adam 2e-4 with betas
    (0.5, 0.999), BCE, G step then D step: training seconds until its Fréchet ratio first
    drops below `target`, judged after every epoch on n_samples images made as its script
    makes them (training mode, batches of 64); stops after max_seconds of training."""
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    real = real * 2 - 1
    G, D = VanillaGenerator(), VanillaDiscriminator()
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCELoss()
    curve: list[dict[str, float]] = []
    watch = Stopwatch()
    epoch = 0
    while not curve or curve[-1]["seconds"] < max_seconds:
        epoch += 1
        for idx in torch.randperm(len(real), generator=rng).split(64):
            imgs = real[idx]
            valid, fake = torch.ones(len(imgs), 1), torch.zeros(len(imgs), 1)
            z = torch.randn(len(imgs), 100, generator=rng)

            # Train Generator
            opt_g.zero_grad()
            gen_imgs = G(z)
            bce(D(gen_imgs), valid).backward()
            opt_g.step()

            # Train Discriminator
            opt_d.zero_grad()
            d_loss = (bce(D(imgs), valid) + bce(D(gen_imgs.detach()), fake)) / 2
            d_loss.backward()
            opt_d.step()
        with watch.paused() as seconds, torch.no_grad():
            z = torch.randn(n_samples, 100, generator=torch.Generator().manual_seed(seed))
            samples = torch.cat([(G(chunk) + 1) / 2 for chunk in z.split(64)]).clamp(0, 1)
            ratio = judge.ratio(samples)
        curve.append({"epoch": epoch, "seconds": seconds, "frechet_ratio": ratio})
        if ratio < target:
            break
    return seconds_to(curve, "frechet_ratio", {"frechet_2": target}, below=True)


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


RUNS = 3  # interleaved runs of each recipe of a comparison, after one warm-up of each


def side_by_side(
    ours: Callable[[], dict[str, Any]],
    theirs: Callable[[dict[str, Any]], dict[str, Any]],
    key: str,
    warm_up: Callable[[], None],
    runs: int = RUNS,
) -> dict[str, Any]:
    """One comparison on a noisy machine: `warm_up()` (a short run of each: first calls pay
    for kernels, threads and memory), then `runs` runs of each, interleaved ours, theirs, ours,
    … (`theirs` gets the result of the ours before it), so a slow spell hits both. Each run's
    `key` (seconds to the target; None: not reached), the ratios ours / theirs, their median
    and range (where theirs never got there, the bound ours / theirs' whole time instead), and
    the curves of the last pair."""
    warm_up()
    pairs = []
    for _ in range(runs):
        mine = ours()
        pairs.append((mine, theirs(mine)))
    ratios, bounds = [], []
    for a, b in pairs:
        if a[key] is not None and b[key] is not None:
            ratios.append(a[key] / b[key])
        elif a[key] is not None and b["curve"]:
            bounds.append(a[key] / b["curve"][-1]["seconds"])
    median = statistics.median(ratios) if len(ratios) == runs else None
    return {
        "ours_seconds": [a[key] for a, _ in pairs],
        "theirs_seconds": [b[key] for _, b in pairs],
        "ratios": ratios,
        "median_ratio": median,
        "ratio_range": [min(ratios), max(ratios)] if median is not None else None,
        "ratio_bounds": bounds,
        "curves": {"ours": pairs[-1][0]["curve"], "theirs": pairs[-1][1]["curve"]},
    }


def classifier_comparisons(
    params: Params, splits: dict[str, Split], raw_dir: Path, runs: int
) -> dict[str, Any]:
    """The fast recipe against tuomaso's, the default against pytorch/examples': seconds of
    training to 99.0% test accuracy (the one-epoch recipes judged every tenth of an epoch)."""
    train, val, test = splits["train"], splits["val"], splits["test"]
    seed, target = params.seed, {"99": TARGETS["99"]}
    fast, default = recipe_params(params, FAST_RECIPE).classifier, params.classifier
    tiny = Split(train.images[:2560], train.labels[:2560])

    def warm_up() -> None:
        classifier_time_to_accuracy(fast, tiny, val, test, seed, target, checks_per_epoch=2)
        tuomaso_time_to_accuracy(raw_dir, seed, target, checks=2, n_train=2560)

    def warm_up_default() -> None:
        one_epoch = default.model_copy(update={"epochs": 1})
        classifier_time_to_accuracy(one_epoch, tiny, val, test, seed, target)
        examples_time_to_accuracy(raw_dir, seed, target, max_epochs=1, n_train=2560)

    def fast_run() -> dict[str, Any]:
        return classifier_time_to_accuracy(
            fast, train, val, test, seed, target, checks_per_epoch=10
        )

    def default_run() -> dict[str, Any]:
        return classifier_time_to_accuracy(default, train, val, test, seed, target)

    def tuomaso_run(_: dict[str, Any]) -> dict[str, Any]:
        return tuomaso_time_to_accuracy(raw_dir, seed, target)

    def examples_run(_: dict[str, Any]) -> dict[str, Any]:
        return examples_time_to_accuracy(raw_dir, seed, target, max_epochs=EXAMPLES_EPOCHS)

    return {
        "fast_vs_tuomaso": side_by_side(fast_run, tuomaso_run, "seconds_to_99", warm_up, runs),
        "default_vs_examples": side_by_side(
            default_run, examples_run, "seconds_to_99", warm_up_default, runs
        ),
    }


def gan_comparison(params: Params, splits: dict[str, Split], runs: int) -> dict[str, Any] | None:
    """The default GAN against PyTorch-GAN's vanilla GAN: seconds of training until the Fréchet
    ratio drops below 2, judged by the pipeline's classifier (models/classifier.pt); theirs
    stops after 3× the time ours took. None before `make repro` made the classifier."""
    classifier_path = Path("models/classifier.pt")
    if not classifier_path.is_file():
        return None
    model, architecture, _ = load_classifier(classifier_path)
    real = splits["train"].of_digits(params.digits).images
    judge = FrechetJudge(model, real, splits["test"].of_digits(params.digits).images)
    short = params.model_copy(update={"gan": params.gan.model_copy(update={"epochs": 1})})

    def ours() -> dict[str, Any]:
        return gan_time_to_frechet(params, real, judge, architecture)

    def theirs(mine: dict[str, Any]) -> dict[str, Any]:
        took = mine["seconds_to_frechet_2"] or mine["curve"][-1]["seconds"]
        return pytorch_gan_time_to_frechet(real, judge, params.seed, max_seconds=3 * took)

    def warm_up() -> None:
        gan_time_to_frechet(short, real, judge, architecture, n_samples=200)
        pytorch_gan_time_to_frechet(real, judge, params.seed, max_seconds=1, n_samples=200)

    return side_by_side(ours, theirs, "seconds_to_frechet_2", warm_up, runs)


def run(
    params: Params, prepared: Path, raw_dir: Path, revisit: tuple[str, Any] | None, runs: int = RUNS
) -> dict:
    """Every benchmark, in one process; returns the figures."""
    splits = {name: load_split(prepared, name) for name in ("train", "val", "test")}
    results: dict[str, Any] = {"runs": runs, "hardware": device_info(CPU)}
    results |= classifier_comparisons(params, splits, raw_dir, runs)
    gan = gan_comparison(params, splits, runs)
    if gan is not None:
        results["gan_vs_pytorch_gan"] = gan
    results["noop_repro_s"] = noop_repro_seconds(Path.cwd())
    if revisit is not None:
        results["revisit"] = revisit_seconds(Path.cwd(), *revisit)
    return results


def recipe_params(params: Params, overrides: dict[str, Any]) -> Params:
    """`params` with dotted-key overrides (as `dvc exp run -S` takes them), validated."""
    raw = params.model_dump()
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[last] = value
    return parse_params(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("reports/bench.json"))
    parser.add_argument("--runs", type=int, default=RUNS, help="interleaved runs of each recipe")
    parser.add_argument("--revisit", default="gan_eval.threshold=0.8",
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
    results = run(params, Path("data/prepared"), raw_dir, revisit, args.runs)
    write_json(args.out, results)
    print(write_tables(results))
    print(f"figures: {args.out}")


if __name__ == "__main__":
    main()
