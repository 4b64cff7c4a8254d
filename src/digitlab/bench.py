"""Speed measured side by side in one run: digitlab's loops against the labs' own loops."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from digitlab.data import Split, load_split
from digitlab.files import write_json
from digitlab.models import build_classifier
from digitlab.params import ClassifierParams, GANParams, Params, load_params
from digitlab.train import fit_classifier


def compare(
    ours: Callable[[], object], baseline: Callable[[], object], repeats: int = 3
) -> tuple[float, float]:
    """Best-of-`repeats` seconds of each, the two timed in turn (ours, baseline, ours, …) so
    both see the same machine: on these shared 2-core machines the same epoch can take up to
    twice as long from one minute to the next."""
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for i, fn in enumerate((ours, baseline)):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


def dataloader_epoch(
    model: nn.Module, raw_dir: Path, n_images: int, batch_size: int, seed: int
) -> None:
    """One epoch the way the labs write it: torchvision's MNIST dataset with per-sample
    ToTensor + Normalize, a shuffling DataLoader, Adam, cross-entropy."""
    from torchvision import transforms

    with tempfile.TemporaryDirectory() as root:
        transform = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
        )
        dataset = _torchvision_mnist(raw_dir, root, transform)
        dataset = torch.utils.data.Subset(dataset, range(n_images))  # as many as digitlab's epoch
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()


def classifier_speedup(
    cfg: ClassifierParams, raw_dir: Path, train: Split, val: Split, seed: int
) -> dict[str, float]:
    """Seconds for one epoch (batch 64) through digitlab's loop and through a DataLoader."""
    cfg = cfg.model_copy(update={"batch_size": 64, "epochs": 1, "scheduler": "none"})
    torch.optim.Adam(nn.Linear(1, 1).parameters())  # one-time lazy imports (~1.7 s): not timed
    torch.manual_seed(seed)
    ours, baseline = compare(
        lambda: fit_classifier(
            build_classifier(cfg.architecture()), train, val, cfg, seed, torch.device("cpu")
        ),
        lambda: dataloader_epoch(
            build_classifier(cfg.architecture()), raw_dir, len(train), 64, seed
        ),
    )
    return {"digitlab_s": ours, "dataloader_s": baseline, "speedup": baseline / ours}


def _torchvision_mnist(raw_dir: Path, root: str, transform: Any) -> Any:
    """torchvision's MNIST training set over our raw files (symlinked into its layout)."""
    from torchvision import datasets

    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in raw_dir.iterdir():
        (raw / path.name).symlink_to(path.resolve())
    return datasets.MNIST(root, train=True, download=False, transform=transform)


def notebook_gan_seconds(
    cfg: GANParams, raw_dir: Path, digits: list[int], steps: int, seed: int
) -> float:
    """Seconds for `steps` iterations of the GAN notebook's loop: a DataLoader with per-sample
    ToTensor, noise drawn with numpy, D on real then on detached fakes, G on the same fakes,
    and a generator pass over the fixed noise every iteration."""
    import numpy as np
    from torchvision import transforms

    from digitlab.gan import Discriminator, Generator, make_optimizer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    G, D = Generator(cfg.generator_config()), Discriminator(cfg.discriminator.model_dump())
    g_opt, d_opt = make_optimizer(cfg.optimizer_g, G), make_optimizer(cfg.optimizer_d, D)
    criterion = nn.BCEWithLogitsLoss()
    fixed = torch.from_numpy(rng.uniform(-1, 1, size=(16, cfg.latent_size))).float()
    with tempfile.TemporaryDirectory() as root:
        dataset = _torchvision_mnist(raw_dir, root, transforms.ToTensor())
        keep = torch.isin(dataset.targets, torch.tensor(digits)).nonzero().squeeze(1).tolist()
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, keep),
            batch_size=cfg.batch_size,
            shuffle=True,
            drop_last=True,
        )
        done, samples = 0, []
        start = time.perf_counter()
        while done < steps:
            for real, _ in loader:
                real = real * 2 - 1
                label = torch.ones(len(real))
                D.zero_grad()
                err_real = criterion(D(real).view(-1), label)
                err_real.backward()
                z = torch.from_numpy(rng.uniform(-1, 1, size=(len(real), cfg.latent_size))).float()
                fake = G(z)
                err_fake = criterion(D(fake.detach()).view(-1), label.fill_(0.0))
                err_fake.backward()
                d_opt.step()
                G.zero_grad()
                criterion(D(fake).view(-1), label.fill_(1.0)).backward()
                g_opt.step()
                G.eval()
                samples.append(G(fixed).detach())
                G.train()
                done += 1
                if done == steps:
                    break
        return time.perf_counter() - start


def gan_speedup(
    cfg: GANParams, raw_dir: Path, real: Split, digits: list[int], seed: int
) -> dict[str, float]:
    """G steps per second: digitlab's fit_gan vs the notebook loop, same networks and batch."""
    from digitlab.gan import fit_gan

    cfg = cfg.model_copy(update={"schedule": "epochs", "epochs": 3, "ema": 0.0, "snapshots": 1})
    steps = cfg.epochs * (len(real) // cfg.batch_size)
    ours, baseline = compare(
        lambda: fit_gan(cfg, real.images, seed, torch.device("cpu")),
        lambda: notebook_gan_seconds(cfg, raw_dir, digits, steps, seed),
    )
    return {"digitlab_steps_per_s": steps / ours, "notebook_steps_per_s": steps / baseline,
            "speedup": baseline / ours}  # fmt: skip


def notebook_gan_params(params: Params) -> GANParams:
    """The GAN notebook's networks and optimizers: D 784-128-64-32-1 and G 100-32-64-128-784
    (tanh), LeakyReLU 0.2, dropout 0.3, uniform noise, SGD 0.02 for D, Adam 0.002 for G."""
    gan = params.gan
    return gan.model_copy(update={
        "batch_size": 64, "latent": "uniform", "latent_size": 100,
        "discriminator": gan.discriminator.model_copy(update={"hidden": [128, 64, 32], "dropout": 0.3}),
        "generator": gan.generator.model_copy(update={"hidden": "mirror", "dropout": 0.3, "batchnorm": False, "output": "tanh"}),
        "optimizer_d": gan.optimizer_d.model_copy(update={"name": "sgd", "lr": 0.02, "momentum": 0.0}),
        "optimizer_g": gan.optimizer_g.model_copy(update={"name": "adam", "lr": 0.002, "betas": [0.9, 0.999]}),
    })  # fmt: skip


def run(params: Params, prepared: Path, raw_dir: Path) -> dict:
    """All benchmarks; returns the figures."""
    train, val = load_split(prepared, "train"), load_split(prepared, "val")
    mlp = params.classifier.model_copy(
        update={"arch": "mlp", "hidden": [256], "activation": "relu", "dropout": 0.0, "loss": "ce"}
    )
    digits = params.digits
    real = train.of_digits(digits)
    return {
        "threads": torch.get_num_threads(),
        "classifier_mlp_784_256_10": classifier_speedup(mlp, raw_dir, train, val, params.seed),
        "gan_notebook_networks": gan_speedup(
            notebook_gan_params(params), raw_dir, real, digits, params.seed
        ),
        "gan_default_networks": gan_speedup(params.gan, raw_dir, real, digits, params.seed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("reports/bench.json"))
    args = parser.parse_args()
    params = load_params()
    results = run(params, Path("data/prepared"), Path("data/raw") / params.data.dataset)
    write_json(args.out, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
