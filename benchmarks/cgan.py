"""`make bench-cgan`: digitlab's conditional GAN (docs/experiments.md's all-digit line) next to
PyTorch-GAN's cgan.py, both trained on all ten digits for the same seconds on this machine and
judged by evaluate_gan's metrics with the pipeline's classifier (models/classifier.pt): the
requested-digit decent rate, the per-digit Fréchet ratios, the classifier score. Writes
reports/bench_cgan.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from benchmarks.recipes import recipe_params
from digitlab.checkpoints import load_classifier
from digitlab.data import Split, load_split
from digitlab.files import write_json
from digitlab.gan import fit_gan
from digitlab.inference import generate, judge, requested_digits
from digitlab.metrics import gan_quality
from digitlab.params import ClassifierArchitecture, load_params

CPU = torch.device("cpu")
DIGITS = list(range(10))
# docs/experiments.md's all-digit line: `dvc exp run -S digit=all -S gan.conditional=true …`.
CONDITIONAL_RECIPE: dict[str, Any] = {
    "digit": "all", "gan.conditional": True, "gan.discriminator.hidden": [256, 128],
    "gan.batch_size": 384, "gan.optimizer_d.lr": 0.0007, "gan.optimizer_g.lr": 0.0007,
    "gan.epochs": 120, "gan.ema": 0.9995,
}  # fmt: skip
KEPT = ("decent_rate", "decent_rate_worst", "frechet_ratio", "frechet_ratio_median",
        "classifier_score", "classifier_score_real", "memorised")  # fmt: skip


class CganGenerator(nn.Module):
    """PyTorch-GAN's cgan.py generator: [embedding of the digit (10), noise (100)] → 128 → 256 →
    512 → 1024 → 784, BatchNorm (its eps 0.8) on all but the first block, LeakyReLU 0.2, tanh."""

    def __init__(self, latent_size: int = 100, n_classes: int = 10) -> None:
        super().__init__()
        self.label_emb = nn.Embedding(n_classes, n_classes)

        def block(n_in: int, n_out: int, normalize: bool = True) -> list[nn.Module]:
            norm = [nn.BatchNorm1d(n_out, 0.8)] if normalize else []
            return [nn.Linear(n_in, n_out), *norm, nn.LeakyReLU(0.2, inplace=True)]

        self.model = nn.Sequential(
            *block(latent_size + n_classes, 128, normalize=False), *block(128, 256),
            *block(256, 512), *block(512, 1024), nn.Linear(1024, 784), nn.Tanh(),
        )  # fmt: skip

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([self.label_emb(labels), noise], -1)).view(-1, 1, 28, 28)


class CganDiscriminator(nn.Module):
    """PyTorch-GAN's cgan.py discriminator: [image (784), embedding of the digit (10)] → 512 →
    512 → 512 → 1, dropout 0.4 on the last two hidden layers, LeakyReLU 0.2, no sigmoid (MSE)."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.label_embedding = nn.Embedding(n_classes, n_classes)
        self.model = nn.Sequential(
            nn.Linear(784 + n_classes, 512), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(512, 512), nn.Dropout(0.4), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(512, 512), nn.Dropout(0.4), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(512, 1),
        )  # fmt: skip

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([images.flatten(1), self.label_embedding(labels)], -1))


def train_cgan(real: Split, seed: int, seconds: float) -> tuple[nn.Module, nn.Module, int]:
    """cgan.py's loop on `real` ([0, 1] images scaled to [-1, 1] as its Normalize(0.5, 0.5)
    does): shuffled batches of 64, Adam 2e-4 with betas (0.5, 0.999), MSE, a G step (random
    digits) then a D step, until `seconds` of training. Returns (G, an EMA of G's weights with
    decay 0.999 kept alongside without changing the training, the steps made)."""
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    images = real.images * 2 - 1
    G, D = CganGenerator(), CganDiscriminator()
    ema = AveragedModel(G, multi_avg_fn=get_ema_multi_avg_fn(0.999), use_buffers=True)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    mse = nn.MSELoss()
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for idx in torch.randperm(len(images), generator=rng).split(64):
            imgs, labels = images[idx], real.labels[idx]
            valid, fake = torch.ones(len(imgs), 1), torch.zeros(len(imgs), 1)

            # Train Generator
            opt_g.zero_grad()
            z = torch.randn(len(imgs), 100, generator=rng)
            gen_labels = torch.randint(0, 10, (len(imgs),), generator=rng)
            gen_imgs = G(z, gen_labels)
            mse(D(gen_imgs, gen_labels), valid).backward()
            opt_g.step()
            ema.update_parameters(G)

            # Train Discriminator
            opt_d.zero_grad()
            d_real = mse(D(imgs, labels), valid)
            d_fake = mse(D(gen_imgs.detach(), gen_labels), fake)
            ((d_real + d_fake) / 2).backward()
            opt_d.step()
            steps += 1
            if time.perf_counter() - start >= seconds:
                break
    return G, ema.module, steps


@torch.no_grad()
def cgan_samples(G: nn.Module, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Samples as cgan.py's sample_image makes them: the generator left in training mode
    (BatchNorm on each batch's statistics), batches of 100 with every digit mixed in (its
    grid has one of each digit per row), mapped to [0, 1]; returned in the order of `labels`."""
    rng = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=rng)
    out = torch.empty(len(labels), 1, 28, 28)
    for idx in order.split(100):
        out[idx] = G(torch.randn(len(idx), 100, generator=rng), labels[idx])
    return ((out + 1) / 2).clamp(0, 1)


class Judge:
    """evaluate_gan's metrics with the pipeline's classifier, for samples of requested digits."""

    def __init__(
        self, classifier: nn.Module, architecture: ClassifierArchitecture, real: dict[str, Split],
        device: torch.device = CPU,
    ) -> None:  # fmt: skip
        self.classifier, self.architecture, self.real = classifier, architecture, real
        self.device = device

    def __call__(self, samples: torch.Tensor, requested: torch.Tensor) -> dict[str, Any]:
        judged = judge(self.classifier, self.architecture, samples, self.real, self.device)
        headline, details = gan_quality(samples, requested, *judged, self.real, DIGITS, 0.9)
        quality = {**headline, **details}
        per_digit = {k: round(row["decent_rate"], 4) for k, row in quality["per_digit"].items()}
        return {**{key: quality[key] for key in KEPT}, "decent_rate_per_digit": per_digit}


def run(prepared: Path, classifier_path: Path, n_samples: int, epochs: int | None) -> dict:
    """Train both on all digits for the same seconds; judge both (and cgan.py with an EMA)."""
    base = load_params()
    recipe = {**CONDITIONAL_RECIPE, **({"gan.epochs": epochs} if epochs else {})}
    params = recipe_params(base, recipe)
    train = load_split(prepared, "train")
    real = {name: load_split(prepared, name) for name in ("test", "train")}
    model, architecture, _ = load_classifier(classifier_path)
    judge = Judge(model, architecture, real)
    threshold = params.gan_eval.threshold
    requested = requested_digits(n_samples, DIGITS)

    start = time.perf_counter()
    ours = fit_gan(params.gan, train.images, params.seed, CPU, train.labels)
    seconds = time.perf_counter() - start
    theirs, theirs_ema, steps = train_cgan(train, params.seed, seconds)
    results = {
        "recipe": recipe,
        "train_seconds": seconds,
        "threshold": threshold,
        "cgan_steps": steps,
        "digitlab": judge(generate(ours.generator, n_samples, params.seed, CPU, requested), requested),
        "pytorch_gan_cgan": judge(cgan_samples(theirs, requested, params.seed), requested),
        "pytorch_gan_cgan_ema": judge(cgan_samples(theirs_ema, requested, params.seed), requested),
    }  # fmt: skip
    return results


def table(results: dict[str, Any]) -> str:
    """The comparison as a Markdown table."""
    rows = (("digitlab", "digitlab conditional"), ("pytorch_gan_cgan", "PyTorch-GAN cgan.py"),
            ("pytorch_gan_cgan_ema", "cgan.py + EMA of G"))  # fmt: skip
    lines = [f"All ten digits, {results['train_seconds']:.0f} s of training each, "
             f"{results['recipe']}:", "",
             "| | requested-digit decent | worst digit | median per-digit Fréchet ratio | "
             "classifier score (real) |", "|---|---|---|---|---|"]  # fmt: skip
    for key, label in rows:
        r = results[key]
        lines.append(f"| {label} | {r['decent_rate']:.1%} | {r['decent_rate_worst']:.1%} | "
                     f"{r['frechet_ratio_median']:.2f} | {r['classifier_score']:.2f} "
                     f"({r['classifier_score_real']:.2f}) |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--classifier", type=Path, default=Path("models/classifier.pt"))
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, help="gan.epochs instead of the recipe's")
    parser.add_argument("--out", type=Path, default=Path("reports/bench_cgan.json"))
    args = parser.parse_args()
    results = run(args.prepared, args.classifier, args.samples, args.epochs)
    write_json(args.out, results)
    print(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
