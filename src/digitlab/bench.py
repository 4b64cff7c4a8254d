"""`make bench`: speed measured side by side in one run, against the labs' own loops, against
pytorch/examples' MNIST recipe and against the machine's matrix-product peak."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from digitlab.data import Split, load_split
from digitlab.files import write_json
from digitlab.models import Dropout, Linear, build_classifier, load_classifier
from digitlab.params import ClassifierParams, GANParams, Params, load_params
from digitlab.train import classifier_loss, fit_classifier, loss_and_accuracy

CPU = torch.device("cpu")


def compare(*loops: Callable[[], object], repeats: int = 3) -> tuple[float, ...]:
    """Best-of-`repeats` seconds of each loop, the loops timed in turn (ours, baseline, ours,
    …) so all see the same machine: on these shared 2-core machines the same epoch can take up
    to twice as long from one minute to the next."""
    best = [math.inf] * len(loops)
    for _ in range(repeats):
        for i, fn in enumerate(loops):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return tuple(best)


def as_written_in_the_labs(model: nn.Module) -> nn.Module:
    """The model with torch's own nn.Linear and nn.Dropout in place of digitlab's faster
    ones (column-major weights, uniform-drawn masks): the baseline loops run the network as
    the labs write it."""
    for name, child in model.named_children():
        if isinstance(child, Linear):
            plain = nn.Linear(child.in_features, child.out_features, child.bias is not None)
            plain.load_state_dict(child.state_dict())
            setattr(model, name, plain.train(child.training))
        elif isinstance(child, Dropout):
            setattr(model, name, nn.Dropout(child.p).train(child.training))
        else:
            as_written_in_the_labs(child)
    return model


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


def plain_epoch(model: nn.Module, train: Split, batch_size: int, seed: int) -> None:
    """One epoch of a plain in-memory loop, as a PyTorch user writes one without a DataLoader:
    shuffled index batches of the tensors already in memory, torch's Adam, cross-entropy (no
    validation pass: it is the reference the issue's bars are set against)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(seed))
    model.train()
    for idx in order.split(batch_size):
        optimizer.zero_grad()
        F.cross_entropy(model(train.images[idx]), train.labels[idx]).backward()
        optimizer.step()


def classifier_speedup(
    cfg: ClassifierParams, raw_dir: Path, train: Split, val: Split, seed: int, repeats: int = 3
) -> dict[str, float]:
    """Seconds for one epoch (batch 64) through digitlab's loop, through a DataLoader and
    through a plain in-memory loop, timed in turn; and the FLOP/s digitlab's epoch achieves."""
    cfg = cfg.model_copy(update={"batch_size": 64, "epochs": 1, "scheduler": "none"})
    torch.optim.Adam(nn.Linear(1, 1).parameters())  # one-time lazy imports (~1.7 s): not timed
    torch.manual_seed(seed)
    ours, baseline, plain = compare(
        lambda: fit_classifier(build_classifier(cfg.architecture()), train, val, cfg, seed, CPU),
        lambda: dataloader_epoch(
            as_written_in_the_labs(build_classifier(cfg.architecture())),
            raw_dir,
            len(train),
            64,
            seed,
        ),
        lambda: plain_epoch(
            as_written_in_the_labs(build_classifier(cfg.architecture())), train, 64, seed
        ),
        repeats=repeats,
    )
    flops = classifier_epoch_flops(cfg, train, val)
    return {"digitlab_s": ours, "dataloader_s": baseline, "speedup": baseline / ours,
            "plain_s": plain, "plain_speedup": baseline / plain,
            "gflops": flops / ours / 1e9}  # fmt: skip


def matmul_product(size: int = 2048) -> tuple[Callable[[], object], int]:
    """(one float32 size×size matrix product, its FLOPs): what the machine's peak is taken
    from."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    return lambda: a @ b, 2 * size**3


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large float32 matrix product: the machine's practical peak."""
    product, flops = matmul_product(size)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - start)
    return flops / best


def counted_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of the matrix products and convolutions `fn` runs, forward
    and backward, as torch's FlopCounterMode counts them."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def classifier_epoch_flops(cfg: ClassifierParams, train: Split, val: Split) -> float:
    """FLOPs of one training epoch at batch 64 (forward and backward) plus the validation pass."""
    model = build_classifier(cfg.architecture())
    x, y = train.images[:64], train.labels[:64]
    step = counted_flops(lambda: classifier_loss(model(x), y, cfg.loss).backward())
    validation = counted_flops(lambda: loss_and_accuracy(model, val, cfg.loss, CPU))
    return step * len(train) / 64 + validation


def gan_iteration(cfg: GANParams, real: torch.Tensor) -> Callable[[], None]:
    """One iteration of digitlab's GAN loop on fixed batches, as a function to call: G's
    forward pass, a D step on real and fake images, a G step (fresh networks and optimizers)."""
    from digitlab.gan import (
        Discriminator,
        Generator,
        sample_latent,
        train_discriminator,
        train_generator,
    )
    from digitlab.optim import make_optimizer

    G, D = Generator(cfg.generator_config()), Discriminator(cfg.discriminator.model_dump())
    opt_g, opt_d = make_optimizer(cfg.optimizer_g, G), make_optimizer(cfg.optimizer_d, D)
    z = sample_latent(cfg.batch_size, cfg.latent_size, cfg.latent, torch.Generator(), CPU)

    def iteration() -> None:
        fake = G(z)
        train_discriminator(D, opt_d, real[: cfg.batch_size], fake)
        train_generator(D, opt_g, fake)

    return iteration


def gan_step_flops(cfg: GANParams, real: torch.Tensor) -> int:
    """FLOPs of one iteration of digitlab's GAN loop (see gan_iteration)."""
    return counted_flops(gan_iteration(cfg, real))


class ProductTimer(TorchDispatchMode):
    """Adds up the seconds spent inside matrix products (mm, addmm, bmm, addbmm, baddbmm),
    forward and backward, while active: how fast the products run inside a training step,
    whatever the rest of the step costs."""

    PRODUCTS = frozenset(
        op.default
        for op in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm,
                   torch.ops.aten.addbmm, torch.ops.aten.baddbmm)
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func not in self.PRODUCTS:
            return func(*args, **(kwargs or {}))
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def product_seconds(fn: Callable[[], object], calls: int = 20, repeats: int = 3) -> float:
    """Seconds per call of `fn` spent in its matrix products: best of `repeats` bursts of
    `calls` calls, after one call to warm up."""
    fn()
    best = math.inf
    for _ in range(repeats):
        with ProductTimer() as timer:
            for _ in range(calls):
                fn()
        best = min(best, timer.seconds / calls)
    return best


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
    from digitlab.gan import fit_gan, generate
    from digitlab.metrics import decent_rate
    from digitlab.train import predict_logits, probabilities

    cfg = params.gan
    checks = cfg.epochs if cfg.schedule == "epochs" else cfg.rounds
    cfg = cfg.model_copy(update={"snapshots": min(checks, 100)})
    curve: list[dict[str, float]] = []
    judging = 0.0
    start = time.perf_counter()

    def on_snapshot(step: int, G: nn.Module, saved: nn.Module) -> None:
        nonlocal judging
        begin = time.perf_counter()
        samples = generate(saved, n_samples, cfg.generator_config(), params.seed, CPU)
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


class NotebookNet(nn.Module):
    """An MLP written the way the GAN notebook writes its networks: Linear layers, each hidden
    one followed by LeakyReLU(0.2, inplace=True) (after BatchNorm1d where the config asks) and
    the notebook's one shared nn.Dropout; tanh on the generator's output."""

    def __init__(self, sizes: list[int], dropout: float, batchnorm: bool, tanh: bool) -> None:
        super().__init__()
        self.n_in, self.tanh = sizes[0], tanh
        self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(b) if batchnorm else nn.Identity() for b in sizes[1:-1]
        )
        self.activation = nn.LeakyReLU(0.2, inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, self.n_in)
        for fc, norm in zip(self.fc[:-1], self.norms, strict=True):
            x = self.dropout(self.activation(norm(fc(x))))
        out = self.fc[-1](x)
        return out.tanh() if self.tanh else out


def notebook_networks(cfg: GANParams) -> tuple[nn.Module, nn.Module]:
    """(G, D) with cfg's layer sizes, written as the notebook writes them."""
    g, d = cfg.generator_config(), cfg.discriminator
    G = NotebookNet([cfg.latent_size, *g["hidden"], 784], g["dropout"], g["batchnorm"], True)
    D = NotebookNet([784, *d.hidden, 1], d.dropout, False, False)
    return G, D


def plain_optimizer(cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
    """torch's own Adam or SGD (its default implementation) with cfg's settings."""
    if cfg.name == "adam":
        return torch.optim.Adam(model.parameters(), cfg.lr, betas=tuple(cfg.betas))
    return torch.optim.SGD(model.parameters(), cfg.lr, momentum=cfg.momentum)


def plain_gan_loop(
    cfg: GANParams, real: torch.Tensor, seed: int
) -> Callable[[int], tuple[float, float]]:
    """A plain in-memory GAN loop, as a PyTorch user writes one without a DataLoader, as a
    function of the number of iterations to run: fresh networks as the notebook writes them,
    batches indexed from `real` (in G's range, in memory), torch noise (cfg.latent), D on real then on
    detached fakes, G on the same fakes with D's weight gradients computed too, torch's
    optimizers, both losses read with .item() (the last ones are returned). The reference the
    issue's bars are set against."""
    from digitlab.gan import sample_latent

    torch.manual_seed(seed)
    G, D = notebook_networks(cfg)
    g_opt, d_opt = plain_optimizer(cfg.optimizer_g, G), plain_optimizer(cfg.optimizer_d, D)
    batch = cfg.batch_size
    ones, zeros = torch.ones(batch, 1), torch.zeros(batch, 1)
    order = torch.randperm(len(real)).split(batch)[: len(real) // batch]
    rng = torch.Generator().manual_seed(seed)

    def run(steps: int) -> tuple[float, float]:
        losses = (math.nan, math.nan)
        for i in range(steps):
            fake = G(sample_latent(batch, cfg.latent_size, cfg.latent, rng, CPU))
            d_opt.zero_grad()
            real_batch = real[order[i % len(order)]]
            d_loss = F.binary_cross_entropy_with_logits(D(real_batch), ones)
            d_loss = d_loss + F.binary_cross_entropy_with_logits(D(fake.detach()), zeros)
            d_loss.backward()
            d_opt.step()
            g_opt.zero_grad()
            g_loss = F.binary_cross_entropy_with_logits(D(fake), ones)
            g_loss.backward()
            g_opt.step()
            losses = (d_loss.item(), g_loss.item())
        return losses

    return run


def notebook_gan_seconds(
    cfg: GANParams, raw_dir: Path, digits: list[int], steps: int, seed: int
) -> float:
    """Seconds for `steps` iterations of the GAN notebook's loop, as the notebook writes it:
    a DataLoader with per-sample ToTensor, noise drawn with numpy, D on real then on detached
    fakes, G on the same fakes, both losses read with .item() for the loss curves, and a
    generator pass over the fixed noise (4 samples) every iteration. Plain torch optimizers."""
    import numpy as np
    from torchvision import transforms

    torch.manual_seed(seed)
    np.random.seed(seed)
    G, D = notebook_networks(cfg)
    g_opt, d_opt = plain_optimizer(cfg.optimizer_g, G), plain_optimizer(cfg.optimizer_d, D)
    criterion = nn.BCEWithLogitsLoss()
    fixed_noise = torch.from_numpy(np.random.uniform(-1, 1, size=(4, cfg.latent_size))).float()
    with tempfile.TemporaryDirectory() as root:
        dataset = _torchvision_mnist(raw_dir, root, transforms.ToTensor())
        keep = torch.isin(dataset.targets, torch.tensor(digits)).nonzero().squeeze(1).tolist()
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, keep), batch_size=cfg.batch_size, shuffle=True
        )
        done, d_losses, g_losses, fake_images = 0, [], [], []
        D.train()
        G.train()
        start = time.perf_counter()
        while done < steps:
            for data in loader:
                real_images = data[0]
                batch_size = real_images.size(0)
                label = torch.full((batch_size,), 1, dtype=torch.float)
                real_images = real_images * 2 - 1
                output = D(real_images).view(-1)
                D.zero_grad()
                err_d_real = criterion(output, label)
                err_d_real.backward()
                z = np.random.uniform(-1, 1, size=(batch_size, cfg.latent_size))
                z = torch.from_numpy(z).float()
                fake = G(z)
                label.fill_(0)
                output = D(fake.detach()).view(-1)
                err_d_fake = criterion(output, label)
                err_d_fake.backward()
                err_d = err_d_fake + err_d_real
                d_opt.step()
                G.zero_grad()
                label.fill_(1)
                output = D(fake).view(-1)
                err_g = criterion(output, label)
                err_g.backward()
                g_opt.step()
                d_losses.append(err_d.item())
                g_losses.append(err_g.item())
                G.eval()
                fake_images.append(G(fixed_noise.float()))
                G.train()
                done += 1
                if done == steps:
                    break
        return time.perf_counter() - start


def gan_speedup(
    cfg: GANParams, raw_dir: Path, real: Split, digits: list[int], seed: int, repeats: int = 3
) -> dict[str, float]:
    """G steps per second: digitlab's fit_gan (EMA off, as the notebook has none) vs the
    notebook loop and a plain in-memory loop, same layer sizes and batch, timed in turn; and
    the FLOP/s digitlab's loop achieves."""
    from digitlab.gan import fit_gan

    cfg = cfg.model_copy(update={"schedule": "epochs", "epochs": 3, "ema": 0.0, "snapshots": 1})
    steps = cfg.epochs * (len(real) // cfg.batch_size)
    in_g_range = real.images * 2 - 1  # the notebook's networks end in tanh
    ours, baseline, plain = compare(
        lambda: fit_gan(cfg, real.images, seed, CPU),
        lambda: notebook_gan_seconds(cfg, raw_dir, digits, steps, seed),
        lambda: plain_gan_loop(cfg, in_g_range, seed)(steps),
        repeats=repeats,
    )
    flops = gan_step_flops(cfg, in_g_range)
    return {"digitlab_steps_per_s": steps / ours, "notebook_steps_per_s": steps / baseline,
            "speedup": baseline / ours, "plain_steps_per_s": steps / plain,
            "plain_speedup": baseline / plain, "gflops": flops * steps / ours / 1e9}  # fmt: skip


def gan_peak_share(cfg: GANParams, real: Split, seed: int, repeats: int = 6) -> dict[str, float]:
    """FLOP/s of digitlab's GAN loop (fit_gan over one epoch, EMA off) and of a plain in-memory
    loop (which also computes D's weight gradients in the G step, so it counts more FLOPs for
    the same iteration) against the FLOP/s of a 2048² float32 matrix product, the three timed
    in turn, best of `repeats` each: the machine's speed swings from minute to minute, so the
    peak is taken next to the loops it is compared with."""
    from digitlab.gan import fit_gan

    cfg = cfg.model_copy(update={"schedule": "epochs", "epochs": 1, "ema": 0.0, "snapshots": 1})
    steps = len(real) // cfg.batch_size
    product, product_flops = matmul_product()
    in_g_range = real.images * 2 - 1  # lab 5's G ends in tanh
    ours, plain, peak = compare(
        lambda: fit_gan(cfg, real.images, seed, CPU),
        lambda: plain_gan_loop(cfg, in_g_range, seed)(steps),
        product,
        repeats=repeats,
    )
    iteration = gan_iteration(cfg, in_g_range)
    flops = counted_flops(iteration)
    plain_flops = counted_flops(lambda: plain_gan_loop(cfg, in_g_range, seed)(1))
    gflops = flops * steps / ours / 1e9
    peak_gflops = product_flops / peak / 1e9
    plain_gflops = plain_flops * steps / plain / 1e9
    # The ceiling: the FLOP/s the step would reach if everything but its products took no time.
    products_gflops = flops / product_seconds(iteration) / 1e9
    return {"steps_per_s": steps / ours, "gflops": gflops, "peak_gflops": peak_gflops,
            "peak_share": gflops / peak_gflops, "products_gflops": products_gflops,
            "plain_steps_per_s": steps / plain, "plain_gflops": plain_gflops,
            "plain_peak_share": plain_gflops / peak_gflops,
            "products_peak_share": products_gflops / peak_gflops}  # fmt: skip


def lab5_gan_params(params: Params) -> GANParams:
    """Lab 5's networks: G 100-256-512-1024-784 (tanh) and D 784-1024-512-256-1, LeakyReLU,
    no batch norm, no dropout, Adam for both, batch 64."""
    gan = params.gan
    return gan.model_copy(update={
        "batch_size": 64, "latent_size": 100,
        "discriminator": gan.discriminator.model_copy(update={"hidden": [1024, 512, 256], "activation": "leaky_relu", "dropout": 0.0}),
        "generator": gan.generator.model_copy(update={"hidden": "mirror", "activation": "leaky_relu", "dropout": 0.0, "batchnorm": False, "output": "tanh"}),
        "optimizer_d": gan.optimizer_d.model_copy(update={"name": "adam"}),
        "optimizer_g": gan.optimizer_g.model_copy(update={"name": "adam"}),
    })  # fmt: skip


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


def run(params: Params, prepared: Path, raw_dir: Path, quality: bool = True) -> dict:
    """Every benchmark, in one process; returns the figures."""
    train, val, test = (load_split(prepared, name) for name in ("train", "val", "test"))
    mlp = params.classifier.model_copy(
        update={"arch": "mlp", "hidden": [256], "activation": "relu", "dropout": 0.0, "loss": "ce"}
    )
    digits, seed = params.digits, params.seed
    real = train.of_digits(digits)
    peak = matmul_peak()
    results: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        # Best of 5 where a round is short (the MLP, the notebook's GAN), of 2–3 where long.
        "classifier_mlp": classifier_speedup(mlp, raw_dir, train, val, seed, 5),
        "classifier_cnn": classifier_speedup(params.classifier, raw_dir, train, val, seed, 2),
        "gan_notebook_networks": gan_speedup(
            notebook_gan_params(params), raw_dir, real, digits, seed, 5
        ),
        "gan_default_networks": gan_speedup(params.gan, raw_dir, real, digits, seed),
        "gan_lab5_networks": gan_peak_share(lab5_gan_params(params), real, seed),
    }
    if quality:
        results["time_to_99_test_acc"] = {
            "digitlab": classifier_time_to_accuracy(
                params.classifier, train, val, test, seed, 0.99
            ),
            "pytorch_examples": examples_time_to_accuracy(raw_dir, seed, 0.99),
        }
        classifier_path = Path("models/classifier.pt")
        if classifier_path.is_file():
            classifier, checkpoint = load_classifier(classifier_path)
            results["gan_time_to_90_decent"] = gan_time_to_decent(
                params, real.images, classifier, checkpoint["config"]["loss"], 0.9
            )
    # The highest of: before, after, and next to lab 5's GAN loop.
    peaks = (peak / 1e9, matmul_peak() / 1e9, results["gan_lab5_networks"]["peak_gflops"])
    results["matmul_peak_gflops"] = max(peaks)
    for name in ("classifier_mlp", "classifier_cnn", "gan_notebook_networks", "gan_default_networks"):  # fmt: skip
        results[name]["peak_share"] = results[name]["gflops"] / results["matmul_peak_gflops"]
    results["noop_repro_s"] = noop_repro_seconds(Path.cwd())
    return results


def table(results: dict[str, Any]) -> str:
    """The figures as a Markdown table: what, the baseline, digitlab, the ratio, the bar."""

    def fmt(value: float | None, unit: str) -> str:
        return "n/a" if value is None else f"{value:,.1f} {unit}".strip()

    rows = [("what", "baseline", "measured", "ratio", "bar"), ("---",) * 5]
    plain = "a plain in-memory loop (the bar's reference)"
    speed = (
        ("classifier_mlp", "MLP 784-256-10 epoch, batch 64 (vs DataLoader)", "dataloader_s", "digitlab_s", "speedup", "s", "≥ 10×"),
        ("classifier_mlp", f"↳ {plain}", "dataloader_s", "plain_s", "plain_speedup", "s", "about 8×"),
        ("classifier_cnn", "default CNN epoch, batch 64 (vs DataLoader)", "dataloader_s", "digitlab_s", "speedup", "s", ""),
        ("gan_notebook_networks", "GAN, notebook's networks: G steps/s (vs notebook loop)", "notebook_steps_per_s", "digitlab_steps_per_s", "speedup", "", "≥ 3×"),
        ("gan_notebook_networks", f"↳ {plain}", "notebook_steps_per_s", "plain_steps_per_s", "plain_speedup", "", "about 2.3×"),
        ("gan_default_networks", "GAN, default networks (lab 5's, G with batch norm): G steps/s (vs notebook loop)", "notebook_steps_per_s", "digitlab_steps_per_s", "speedup", "", ""),
    )  # fmt: skip
    for name, label, baseline, ours, ratio, unit, bar in speed:
        r = results[name]
        rows.append((label, fmt(r[baseline], unit), fmt(r[ours], unit), f"{r[ratio]:.1f}×", bar))
    lab5 = results["gan_lab5_networks"]
    rows.append(("lab 5's GAN step: GFLOP/s vs 2048² matmul peak, timed in turn",
                 fmt(lab5["peak_gflops"], ""), fmt(lab5["gflops"], ""),
                 f"{lab5['peak_share']:.0%}", "≥ 70%"))  # fmt: skip
    rows.append((f"↳ {plain}", fmt(lab5["peak_gflops"], ""), fmt(lab5["plain_gflops"], ""),
                 f"{lab5['plain_peak_share']:.0%}", "about 60%"))  # fmt: skip
    rows.append(("lab 5's GAN: G steps/s, digitlab vs a plain in-memory loop",
                 fmt(lab5["plain_steps_per_s"], ""), fmt(lab5["steps_per_s"], ""),
                 f"{lab5['steps_per_s'] / lab5['plain_steps_per_s']:.2f}×", ""))  # fmt: skip
    rows.append(("lab 5's GAN step, its matrix products alone (the ceiling)",
                 fmt(lab5["peak_gflops"], ""), fmt(lab5["products_gflops"], ""),
                 f"{lab5['products_peak_share']:.0%}", ""))  # fmt: skip
    peak = results["matmul_peak_gflops"]
    for name, label, bar in (("gan_default_networks", "default GAN step", ""),
                             ("classifier_mlp", "MLP epoch", ""),
                             ("classifier_cnn", "default CNN epoch", "")):  # fmt: skip
        r = results[name]
        rows.append((f"{label}: GFLOP/s vs 2048² matmul peak", fmt(peak, ""),
                     fmt(r["gflops"], ""), f"{r['peak_share']:.0%}", bar))  # fmt: skip
    if "time_to_99_test_acc" in results:
        ours = results["time_to_99_test_acc"]["digitlab"]["seconds"]
        theirs = results["time_to_99_test_acc"]["pytorch_examples"]["seconds"]
        ratio = f"{ours / theirs:.2f}" if ours and theirs else "n/a"
        rows.append(("seconds to 99.0% test accuracy (vs pytorch/examples)", fmt(theirs, "s"),
                     fmt(ours, "s"), ratio, "≤ 0.5"))  # fmt: skip
    if "gan_time_to_90_decent" in results:
        seconds = results["gan_time_to_90_decent"]["seconds"]
        rows.append(("seconds until the default GAN is 90% decent", "", fmt(seconds, "s"), "", ""))
    rows.append(("`dvc repro` with nothing to do", "", fmt(results["noop_repro_s"], "s"), "", ""))
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("reports/bench.json"))
    parser.add_argument(
        "--no-quality", action="store_true", help="skip the time-to-quality runs (about 5 min)"
    )
    args = parser.parse_args()
    # A few epochs are too few for a GAN: its collapse warning says nothing about speed.
    warnings.filterwarnings("ignore", message="the generator looks collapsed")
    params = load_params()
    raw_dir = Path("data/raw") / params.data.dataset
    results = run(params, Path("data/prepared"), raw_dir, quality=not args.no_quality)
    write_json(args.out, results)
    print(table(results))
    print(f"figures: {args.out}")


if __name__ == "__main__":
    main()
