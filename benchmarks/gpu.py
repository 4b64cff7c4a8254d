"""`python -m benchmarks.gpu`: the GPU check. On any CUDA machine, in at most 8 minutes, with
nothing but torch, torchvision, numpy, pandas, pyyaml, tqdm and pydantic installed (no DVC, no
MLflow), MNIST read from the .gz files in DIGITLAB_RAW_DIR and prepared as `prepare` does; writes
reports/gpu.json and prints its table:

1. seconds of training to 99.0% test accuracy, digitlab's fast recipe against tuomaso's as
   published (judged every tenth of the epoch; a warm-up, then three runs each, interleaved);
2. the default classifier, trained twice: its training seconds, its test accuracy, and whether
   the two runs' weights are identical;
3. the default GAN, trained twice: seconds until its Fréchet ratio (evaluate_gan's judge, the
   classifier of 2) first drops below 2, and whether the two runs are identical;
4. the conditional all-digit line (docs/experiments.md) and a conv conditional GAN with spectral
   norm and a hinge loss, the same seconds each: requested-digit decent rate and median
   per-digit Fréchet ratio;
5. CPU against GPU: the predictions of the classifier of 2 on the 10,000 test images.

`--quick` shrinks every part (small sets, seconds of training) to prove the script end to end,
on the CPU too. `--device cpu` runs it all on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run from a checkout, digitlab not installed
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn  # noqa: E402

from benchmarks.cgan import CONDITIONAL_RECIPE, Judge  # noqa: E402
from benchmarks.races import FrechetJudge, Stopwatch, side_by_side  # noqa: E402
from benchmarks.recipes import (  # noqa: E402
    FAST_RECIPE,
    classifier_time_to_accuracy,
    gan_time_to_frechet,
    recipe_params,
    tuomaso_time_to_accuracy,
)
from benchmarks.render import update  # noqa: E402
from digitlab.data import Split, load_split, prepare  # noqa: E402
from digitlab.device import device_info, pick_device  # noqa: E402
from digitlab.files import write_json  # noqa: E402
from digitlab.gan import fit_gan  # noqa: E402
from digitlab.inference import generate, predict_logits, requested_digits  # noqa: E402
from digitlab.models import build_classifier  # noqa: E402
from digitlab.params import Params, load_params  # noqa: E402
from digitlab.raw import fetch_raw, sources_for  # noqa: E402
from digitlab.readers import read_verified  # noqa: E402
from digitlab.train import fit_classifier  # noqa: E402

DIGITS = list(range(10))
GPU_START, GPU_END = "<!-- gpu:start -->", "<!-- gpu:end -->"


def prepared_mnist(folder: Path) -> tuple[Path, dict[str, Split]]:
    """MNIST from DIGITLAB_RAW_DIR, checked and prepared as `fetch` and `prepare` do (seed 0,
    5,000 validation images): (the raw folder, the splits)."""
    raw = folder / "raw"
    fetch_raw("mnist", raw, sources_for("mnist")[:1], log=lambda line: print(line, flush=True))
    train, test = read_verified(raw, "mnist")
    prepare("mnist", train, test, folder / "prepared", val_size=5000, seed=0)
    return raw, {name: load_split(folder / "prepared", name) for name in ("train", "val", "test")}


def small(split: Split, n: int) -> Split:
    return Split(split.images[:n], split.labels[:n])


def fast_vs_tuomaso(params: Params, splits: dict[str, Split], raw: Path, device: torch.device,
                    quick: bool) -> dict[str, Any]:  # fmt: skip
    """1: the two one-epoch recipes, judged every tenth of their epoch."""
    fast = recipe_params(params, FAST_RECIPE).classifier
    train, val, test = splits["train"], splits["val"], splits["test"]
    n = 2560 if quick else None
    target = {"99": 0.5 if quick else 0.99}
    if quick:
        train = small(train, 2560)

    def ours() -> dict[str, Any]:
        return classifier_time_to_accuracy(fast, train, val, test, 0, target, 10, device)

    def theirs(_: dict[str, Any]) -> dict[str, Any]:
        return tuomaso_time_to_accuracy(raw, 0, target, n_train=n, device=device)

    def warm_up() -> None:
        classifier_time_to_accuracy(fast, small(train, 2560), val, test, 0, target, 2, device)
        tuomaso_time_to_accuracy(raw, 0, target, checks=2, n_train=2560, device=device)

    return side_by_side(ours, theirs, "seconds_to_99", warm_up, runs=1 if quick else 3)


def trained_twice(params: Params, splits: dict[str, Split], device: torch.device,
                  quick: bool) -> tuple[dict[str, Any], nn.Module]:  # fmt: skip
    """2: the default classifier twice; the second model (the judge of 3 and 4)."""
    cfg = params.classifier.model_copy(update={"epochs": 1}) if quick else params.classifier
    train = small(splits["train"], 5000) if quick else splits["train"]
    runs, models = [], []
    for _ in range(2):
        torch.manual_seed(params.seed)
        model = build_classifier(cfg.architecture())
        watch = Stopwatch(device)
        result = fit_classifier(model, train, splits["val"], cfg, params.seed, device)
        with watch.paused() as seconds:
            model.load_state_dict(result.state_dict)
            logits = predict_logits(model, splits["test"].images, device)
        accuracy = (logits.argmax(1) == splits["test"].labels).double().mean().item()
        runs.append({"train_seconds": seconds, "test_accuracy": accuracy})
        models.append(result.state_dict)
    same = all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    return {"runs": runs, "identical": same}, model


def gan_twice(params: Params, splits: dict[str, Split], classifier: nn.Module,
              device: torch.device, quick: bool) -> dict[str, Any]:  # fmt: skip
    """3: the default GAN twice, judged after every epoch until its Fréchet ratio < 2."""
    gan = params.gan.model_copy(update={"epochs": 2}) if quick else params.gan
    short = params.model_copy(update={"gan": gan})
    real = splits["train"].of_digits(params.digits).images
    judge = FrechetJudge(classifier, real, splits["test"].of_digits(params.digits).images, device)
    runs = [gan_time_to_frechet(short, real, judge, params.classifier, n_samples=500 if quick else 2000)
            for _ in range(2)]  # fmt: skip
    ratios = [[point["frechet_ratio"] for point in run["curve"]] for run in runs]
    return {"runs": [{"seconds_to_frechet_2": r["seconds_to_frechet_2"], "curve": r["curve"]}
                     for r in runs], "identical": ratios[0] == ratios[1]}  # fmt: skip


class _Stop(Exception):
    pass


def conditional_for(
    params: Params, train: Split, seconds: float, device: torch.device
) -> nn.Module:
    """The conditional all-digit line, trained `seconds` (checked after every epoch); the
    generator it would save."""
    cfg = recipe_params(params, CONDITIONAL_RECIPE).gan.model_copy(
        update={"epochs": 10_000, "snapshots": 10_000}
    )
    watch, saved = Stopwatch(device), {}

    def on_snapshot(g_step: int, generator: nn.Module) -> None:
        saved["G"] = generator
        with watch.paused() as elapsed:
            if elapsed >= seconds:
                raise _Stop

    with contextlib.suppress(_Stop):
        fit_gan(cfg, train.images, params.seed, device, train.labels, on_snapshot=on_snapshot)
    return saved["G"]


class SNDiscriminator(nn.Module):
    """A projection discriminator of three spectrally normalized convolutions (28 → 14 → 7)."""

    def __init__(self, c: int = 64) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.body = nn.Sequential(
            sn(nn.Conv2d(1, c, 4, 2, 1)), nn.LeakyReLU(0.1),
            sn(nn.Conv2d(c, 2 * c, 4, 2, 1)), nn.LeakyReLU(0.1),
            sn(nn.Conv2d(2 * c, 2 * c, 3, 1, 1)), nn.LeakyReLU(0.1), nn.Flatten(),
        )  # fmt: skip
        self.head = sn(nn.Linear(2 * c * 49, 1))
        self.embed = sn(nn.Embedding(10, 2 * c * 49))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.head(h).squeeze(1) + (self.embed(y) * h).sum(1)


class SNGenerator(nn.Module):
    """[noise, the digit's embedding] → 2c×7×7 → c×14×14 → 1×28×28, BatchNorm and ReLU, tanh."""

    def __init__(self, c: int = 64, latent: int = 128) -> None:
        super().__init__()
        self.latent = latent
        self.embed = nn.Embedding(10, 10)
        self.net = nn.Sequential(
            nn.Linear(latent + 10, 2 * c * 49), nn.BatchNorm1d(2 * c * 49), nn.ReLU(),
            nn.Unflatten(1, (2 * c, 7, 7)),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.ConvTranspose2d(c, 1, 4, 2, 1), nn.Tanh(),
        )  # fmt: skip

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, self.embed(y)], 1))


def sn_hinge_for(train: Split, seconds: float, seed: int, device: torch.device) -> nn.Module:
    """The conv recipe: spectral norm in D, hinge loss, Adam 2e-4 betas (0, 0.9), batch 128,
    one D step per G step, an EMA (0.999) of G's weights; trained `seconds`. Its saved G."""
    torch.manual_seed(seed)
    rng = torch.Generator(device=device).manual_seed(seed)
    images, labels = (train.images * 2 - 1).to(device), train.labels.to(device)
    G, D = SNGenerator().to(device), SNDiscriminator().to(device)
    ema = AveragedModel(G, multi_avg_fn=get_ema_multi_avg_fn(0.999), use_buffers=True)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.0, 0.9))
    watch, steps = Stopwatch(device), 0
    while True:
        for idx in torch.randperm(len(images), generator=rng, device=device).split(128):
            z = torch.randn(len(idx), G.latent, generator=rng, device=device)
            y = torch.randint(10, (len(idx),), generator=rng, device=device)
            fake = G(z, y)
            # (1) Update D: hinge on real images and detached fakes
            opt_d.zero_grad(set_to_none=True)
            real_loss = F.relu(1 - D(images[idx], labels[idx])).mean()
            (real_loss + F.relu(1 + D(fake.detach(), y)).mean()).backward()
            opt_d.step()
            # (2) Update G: raise D's score of the fakes
            opt_g.zero_grad(set_to_none=True)
            (-D(fake, y).mean()).backward()
            opt_g.step()
            ema.update_parameters(G)
            steps += 1
            if steps % 50 == 0:  # the clock, read now and then (it waits for the GPU)
                with watch.paused() as elapsed:
                    if elapsed >= seconds:
                        return ema.module.eval()


@torch.no_grad()
def sn_samples(
    G: SNGenerator, requested: torch.Tensor, seed: int, device: torch.device
) -> torch.Tensor:
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(len(requested), G.latent, generator=rng)
    out = [G(z[i : i + 2000].to(device), requested[i : i + 2000].to(device)).cpu()
           for i in range(0, len(requested), 2000)]  # fmt: skip
    return ((torch.cat(out) + 1) / 2).clamp(0, 1)


def conditional_race(params: Params, splits: dict[str, Split], classifier: nn.Module,
                     device: torch.device, seconds: float, n_samples: int) -> dict[str, Any]:  # fmt: skip
    """4: both conditional GANs for the same seconds, judged alike."""
    train = small(splits["train"], 6000) if n_samples < 10_000 else splits["train"]
    real = {name: splits[name] for name in ("test", "train")}
    judge = Judge(classifier, params.classifier, real, device)
    requested = requested_digits(n_samples, DIGITS)
    ours = conditional_for(params, train, seconds, device)
    theirs = sn_hinge_for(train, seconds, params.seed, device)
    kept = ("decent_rate", "decent_rate_worst", "frechet_ratio_median", "classifier_score")
    ours_judged = judge(generate(ours, n_samples, params.seed, device, requested), requested)
    theirs_judged = judge(sn_samples(theirs, requested, params.seed, device), requested)
    return {
        "seconds": seconds,
        "digitlab": {k: ours_judged[k] for k in kept},
        "sn_hinge_conv": {k: theirs_judged[k] for k in kept},
    }


def cpu_vs_device(classifier: nn.Module, test: Split, device: torch.device) -> dict[str, Any]:
    """5: the same weights' answers on the 10,000 test images, on the CPU and on `device`."""
    on_device = predict_logits(classifier, test.images, device).argmax(1)
    on_cpu = predict_logits(classifier.cpu(), test.images, torch.device("cpu")).argmax(1)
    return {"images": len(test), "answers_differ": int((on_device != on_cpu).sum())}


def table(results: dict[str, Any]) -> str:
    """The check's figures as Markdown."""
    fast, cls, gan, race = (
        results[k] for k in ("fast_vs_tuomaso", "classifier", "gan", "conditional")
    )
    seconds = lambda values: " / ".join("–" if v is None else f"{v:.2f}" for v in values) + " s"  # noqa: E731
    median = fast["median_ratio"]
    lines = [
        f"On {results['hardware']['name']} (torch {results['hardware']['torch']}, CUDA {results['hardware']['cuda']}):",
        "", "| check | figures |", "|---|---|",
        f"| 99.0%: fast recipe / tuomaso recipe, seconds of training | {seconds(fast['ours_seconds'])} / "
        f"{seconds(fast['theirs_seconds'])}; median ratio {'n/a' if median is None else f'{median:.2f}×'} |",
        "| default classifier, twice: seconds of training, test accuracy | " + "; ".join(
            f"{r['train_seconds']:.1f} s, {r['test_accuracy']:.2%}" for r in cls["runs"])
        + f"; {'identical' if cls['identical'] else 'different'} weights |",
        "| default GAN, twice: seconds to a Fréchet ratio < 2 | "
        + seconds([r["seconds_to_frechet_2"] for r in gan["runs"]])
        + f"; {'identical' if gan['identical'] else 'different'} runs |",
        f"| all ten digits, {race['seconds']:.0f} s each: requested-digit decent, median per-digit Fréchet ratio | "
        f"digitlab {race['digitlab']['decent_rate']:.1%}, {race['digitlab']['frechet_ratio_median']:.2f}; "
        f"SN + hinge conv {race['sn_hinge_conv']['decent_rate']:.1%}, {race['sn_hinge_conv']['frechet_ratio_median']:.2f} |",
        f"| CPU vs this device: answers that differ on the {results['cpu_vs_device']['images']:,} test images | "
        f"{results['cpu_vs_device']['answers_differ']} |",
    ]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny settings: the script end to end")
    parser.add_argument("--conditional-seconds", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=Path("reports/gpu.json"))
    args = parser.parse_args()
    start = time.perf_counter()
    device = pick_device(args.device)
    params = load_params(ROOT / "params.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        raw, splits = prepared_mnist(Path(tmp))
        results: dict[str, Any] = {"hardware": device_info(device), "quick": args.quick}
        results["fast_vs_tuomaso"] = fast_vs_tuomaso(params, splits, raw, device, args.quick)
        results["classifier"], judge = trained_twice(params, splits, device, args.quick)
        results["gan"] = gan_twice(params, splits, judge, device, args.quick)
        seconds = 3.0 if args.quick else args.conditional_seconds
        n_samples = 1000 if args.quick else 10_000
        results["conditional"] = conditional_race(params, splits, judge, device, seconds, n_samples)
        results["cpu_vs_device"] = cpu_vs_device(judge, splits["test"], device)
    results["total_seconds"] = time.perf_counter() - start
    write_json(args.out, results)
    print(table(results))
    if device.type == "cuda" and not args.quick:  # the figures docs/performance.md quotes
        update(ROOT / "docs/performance.md", table(results), GPU_START, GPU_END)
    print(f"gpu check: {results['total_seconds']:.0f} s in all; {args.out}")


if __name__ == "__main__":
    main()
