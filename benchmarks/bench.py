"""`make bench`: time to an answer, side by side. Each comparison runs each of its two
recipes once to warm up, then three times interleaved (ours, theirs, ours, …), and reports every
ratio and their median: digitlab's fast recipe against tuomaso/train_mnist_fast's, and its
default against pytorch/examples' (seconds of training to 99.0% test accuracy, both written here
in plain PyTorch as published); the default GAN against PyTorch-GAN's vanilla GAN (seconds until
the Fréchet ratio, evaluate_gan's judge, drops below 2). Then a revisited setting back from DVC's
run-cache, and a `dvc repro` with nothing to do. Writes reports/bench.json, then the tables in
docs/performance.md (render.py). The clock, the judges and the interleaving are races.py's,
the recipes recipes.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from benchmarks.races import CPU, PEER_CAP, RUNS, TARGETS, FrechetJudge, side_by_side
from benchmarks.recipes import (
    EXAMPLES_EPOCHS,
    FAST_RECIPE,
    classifier_time_to_accuracy,
    examples_time_to_accuracy,
    gan_time_to_frechet,
    pytorch_gan_time_to_frechet,
    recipe_params,
    tuomaso_time_to_accuracy,
)
from benchmarks.render import write_tables
from digitlab.checkpoints import load_classifier
from digitlab.data import Split, load_split
from digitlab.device import device_info
from digitlab.files import write_json
from digitlab.params import (
    Params,
    load_params,
)


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
    """`dvc args` in `repo`, its stages' `python` this one (run outside `make` too); a failure
    raises with the end of what DVC said, not just its code."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PATH": path})  # fmt: skip
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(
            f"dvc {' '.join(args)} in {repo} exited {done.returncode}: " + " | ".join(said)
        )
    return done


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

    def examples_run(mine: dict[str, Any]) -> dict[str, Any]:
        cap = PEER_CAP * (mine["seconds_to_99"] or mine["curve"][-1]["seconds"])
        return examples_time_to_accuracy(
            raw_dir, seed, target, max_epochs=EXAMPLES_EPOCHS, max_seconds=cap
        )

    return {
        "fast_vs_tuomaso": side_by_side(fast_run, tuomaso_run, "seconds_to_99", warm_up, runs),
        "default_vs_examples": side_by_side(
            default_run, examples_run, "seconds_to_99", warm_up_default, runs
        ),
    }


def gan_comparison(params: Params, splits: dict[str, Split], runs: int) -> dict[str, Any] | None:
    """The default GAN against PyTorch-GAN's vanilla GAN: seconds of training until the Fréchet
    ratio drops below 2, judged by the pipeline's classifier (models/classifier.pt); theirs
    stops after PEER_CAP times the time ours took. None before `make repro` made the
    classifier."""
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
        return pytorch_gan_time_to_frechet(real, judge, params.seed, max_seconds=PEER_CAP * took)

    def warm_up() -> None:
        gan_time_to_frechet(short, real, judge, architecture, n_samples=200)
        pytorch_gan_time_to_frechet(real, judge, params.seed, max_seconds=1, n_samples=200)

    return side_by_side(ours, theirs, "seconds_to_frechet_2", warm_up, runs)


def run(
    params: Params, prepared: Path, raw_dir: Path, revisit: tuple[str, Any] | None, runs: int = RUNS
) -> dict:
    """Every benchmark, in one process; returns the figures, with the wall time it took."""
    start = time.perf_counter()
    splits = {name: load_split(prepared, name) for name in ("train", "val", "test")}
    results: dict[str, Any] = {"runs": runs, "peer_cap": PEER_CAP, "hardware": device_info(CPU)}
    results |= classifier_comparisons(params, splits, raw_dir, runs)
    gan = gan_comparison(params, splits, runs)
    if gan is not None:
        results["gan_vs_pytorch_gan"] = gan
    results["noop_repro_s"] = noop_repro_seconds(Path.cwd())
    if revisit is not None:
        results["revisit"] = revisit_seconds(Path.cwd(), *revisit)
    results["wall_seconds"] = time.perf_counter() - start
    return results


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
