"""One-off, run at the last commit that had them: digitlab's speed tricks (column-major wide
Linear weights, uniform-drawn Dropout masks, LeanAdam / LeanSGD calling torch's private fused
kernels) against stock PyTorch (nn.Linear, nn.Dropout, torch.optim.Adam / SGD with fused=True),
timed in turn in one process: the default CNN epoch, lab 5's GAN step, the notebook GAN step."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

import digitlab.train
from digitlab.bench import as_written_in_the_labs, lab5_gan_params, notebook_gan_params
from digitlab.data import load_split
from digitlab.gan import (
    Discriminator,
    Generator,
    sample_latent,
    train_discriminator,
    train_generator,
)
from digitlab.models import build_classifier
from digitlab.optim import make_optimizer
from digitlab.params import load_params

CPU = torch.device("cpu")


def stock_optimizer(cfg, model):
    weight_decay = getattr(cfg, "weight_decay", 0.0)
    if cfg.name == "adam":
        betas = tuple(getattr(cfg, "betas", (0.9, 0.999)))
        return torch.optim.Adam(
            model.parameters(), lr=cfg.lr, betas=betas, weight_decay=weight_decay, fused=True
        )
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=weight_decay, fused=True
    )


def cnn_epoch(params, train, val, stock: bool) -> float:
    cfg = params.classifier.model_copy(update={"epochs": 1})
    torch.manual_seed(0)
    model = build_classifier(cfg.architecture())
    if stock:
        model = as_written_in_the_labs(model)
    digitlab.train.make_optimizer = stock_optimizer if stock else make_optimizer
    start = time.perf_counter()
    digitlab.train.fit_classifier(model, train, val, cfg, 0, CPU)
    return time.perf_counter() - start


def gan_steps(cfg, real, stock: bool, steps: int) -> float:
    torch.manual_seed(0)
    G, D = Generator(cfg.generator_config()), Discriminator(cfg.discriminator.model_dump())
    make = stock_optimizer if stock else make_optimizer
    if stock:
        G, D = as_written_in_the_labs(G), as_written_in_the_labs(D)
    opt_g, opt_d = make(cfg.optimizer_g, G), make(cfg.optimizer_d, D)
    rng = torch.Generator().manual_seed(0)
    batch = real[: cfg.batch_size]
    for _ in range(5):  # warm-up
        fake = G(sample_latent(cfg.batch_size, cfg.latent_size, cfg.latent, rng, CPU))
        train_discriminator(D, opt_d, batch, fake)
        train_generator(D, opt_g, fake)
    start = time.perf_counter()
    for _ in range(steps):
        fake = G(sample_latent(cfg.batch_size, cfg.latent_size, cfg.latent, rng, CPU))
        train_discriminator(D, opt_d, batch, fake)
        train_generator(D, opt_g, fake)
    return (time.perf_counter() - start) / steps


def main() -> None:
    params = load_params()
    train, val = load_split("data/prepared", "train"), load_split("data/prepared", "val")
    real = train.of_digits([3]).images * 2 - 1
    results: dict[str, dict[str, list[float]]] = {}
    rounds = [
        ("default CNN epoch (s)", lambda stock: cnn_epoch(params, train, val, stock), 3),
        ("lab 5's GAN step (ms)", lambda stock: 1e3 * gan_steps(lab5_gan_params(params), real, stock, 200), 5),
        ("notebook GAN step (ms)", lambda stock: 1e3 * gan_steps(notebook_gan_params(params), real, stock, 500), 5),
    ]  # fmt: skip
    for name, fn, repeats in rounds:
        times = {"tricks": [], "stock": []}
        for _ in range(repeats):
            for variant in ("tricks", "stock"):
                times[variant].append(fn(variant == "stock"))
        results[name] = times
        best = {k: min(v) for k, v in times.items()}
        print(f"{name}: tricks best {best['tricks']:.3f}, stock best {best['stock']:.3f}, "
              f"tricks gain {best['stock'] / best['tricks'] - 1:+.1%}; all {times}", flush=True)  # fmt: skip
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "reports/tricks.json")
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
