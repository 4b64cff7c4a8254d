"""What a race reads: the clock (training seconds, judging left out), the judges (test accuracy,
evaluate_gan's Fréchet ratio), and one comparison run interleaved on a noisy machine."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from digitlab.data import Split
from digitlab.inference import predict_logits
from digitlab.metrics import frechet_distance

CPU = torch.device("cpu")


TARGETS = {"99": 0.99, "995": 0.995}  # test accuracy the classifier recipes race to


FRECHET_TARGET = 2.0  # the GAN races until its Fréchet ratio is below this


GAN_SAMPLES = 2000  # generated images per Fréchet judgement


class Reached(Exception):
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


def judge_accuracy(
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
        raise Reached


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


RUNS = 3  # interleaved runs of each recipe of a comparison, after one warm-up of each
# A slower peer (pytorch/examples, PyTorch-GAN) stops after this many times the seconds ours
# took: "not reached in N s", a bound on the ratio, keeps `make bench` within 25 minutes.
PEER_CAP = 1.5


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
    and range (where theirs never got there, the bound ours / theirs' whole time instead, and
    the median of ratios and bounds as a bound on the median), and the curves of the last
    pair."""
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
    # a bound is an upper one (theirs would have taken longer): with it, the median of every
    # pair's ratio or bound is an upper bound on the median ratio
    bound = statistics.median(ratios + bounds) if bounds and len(ratios + bounds) == runs else None
    return {
        "ours_seconds": [a[key] for a, _ in pairs],
        "theirs_seconds": [b[key] for _, b in pairs],
        "theirs_stopped_at": [b["curve"][-1]["seconds"] if b["curve"] else None for _, b in pairs],
        "ratios": ratios,
        "median_ratio": median,
        "ratio_range": [min(ratios), max(ratios)] if median is not None else None,
        "ratio_bounds": bounds,
        "median_ratio_at_most": bound,
        "curves": {"ours": pairs[-1][0]["curve"], "theirs": pairs[-1][1]["curve"]},
    }
