"""GAN: the D and G steps, both schedules, EMA, collapse check, determinism, on real MNIST."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from digitlab.checkpoints import load_generator, save_checkpoint
from digitlab.data import Split, load_split
from digitlab.errors import DigitlabError
from digitlab.gan import (
    GANDiverged,
    Step,
    WarmupEMA,
    collapse_check,
    ema_weight,
    fit_gan,
    schedule,
    to_generator_range,
    total_g_steps,
    train_discriminator,
    train_generator,
)
from digitlab.inference import generate, requested_digits, sample_latent
from digitlab.models import (
    GANS,
    ConvDiscriminator,
    ConvGenerator,
    DigitBatchNorm,
    Discriminator,
    Generator,
    MLPDiscriminator,
    MLPGenerator,
    build_discriminator,
    build_generator,
)
from digitlab.optim import make_optimizer
from digitlab.params import GANParams, GeneratorConfig
from helpers import ROOT, repo_params

CPU = torch.device("cpu")
TINY = {"epochs": 1, "rounds": 3, "d_steps": 2, "g_steps": 2, "snapshots": 2, "batch_size": 32,
        "discriminator__hidden": [64, 32]}  # fmt: skip


def gan_params(**changes: object) -> GANParams:
    """The repo's GAN params, tiny (TINY), with keys changed ('discriminator__hidden')."""
    merged = {**TINY, **changes}
    return repo_params(**{f"gan.{k.replace('__', '.')}": v for k, v in merged.items()}).gan


@pytest.fixture(scope="module")
def threes(prepared: tuple[Path, dict]) -> Split:
    out, _ = prepared
    return load_split(out, "train").of_digits([3])


def networks(cfg: GANParams) -> tuple[Generator, Discriminator]:
    torch.manual_seed(0)
    return build_generator(cfg.generator_config()), build_discriminator(cfg.discriminator_config())


def d_loss(D: Discriminator, real: torch.Tensor, fake: torch.Tensor) -> float:
    with torch.no_grad():
        r, f = D(real), D(fake)
        return (F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
                + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f))).item()  # fmt: skip


def test_generator_mirrors_the_discriminator_and_has_the_right_shapes() -> None:
    cfg = gan_params(**{"discriminator__hidden": [1024, 512, 256]})
    G, D = networks(cfg)
    linear_sizes = [m.out_features for m in G.net if isinstance(m, torch.nn.Linear)]
    assert linear_sizes == [256, 512, 1024, 784]
    z = sample_latent(8, 100, "normal", torch.Generator().manual_seed(0), CPU)
    images = G(z)
    assert images.shape == (8, 1, 28, 28)
    assert images.min() >= -1 and images.max() <= 1
    assert D(images).shape == (8,)
    assert isinstance(G, MLPGenerator) and isinstance(D, MLPDiscriminator)
    sigmoid = build_generator(cfg.generator_config().model_copy(update={"output": "sigmoid"}))
    out = sigmoid(z)
    assert out.min() >= 0 and out.max() <= 1
    uniform = sample_latent(1000, 100, "uniform", torch.Generator().manual_seed(0), CPU)
    assert uniform.min() >= -1 and uniform.max() <= 1 and uniform.min() < -0.99


@pytest.mark.parametrize("conditional", [False, True])
def test_the_conv_gan_mirrors_its_discriminator(every_digit: Split, conditional: bool) -> None:
    cfg = gan_params(arch="conv", channels=[8, 16], conditional=conditional)
    G, D = build_generator(cfg.generator_config()), build_discriminator(cfg.discriminator_config())
    assert isinstance(G, ConvGenerator) and isinstance(D, ConvDiscriminator)
    convs = [(m.in_channels, m.out_channels) for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    transposed = [(m.in_channels, m.out_channels) for m in G.modules()
                  if isinstance(m, torch.nn.ConvTranspose2d)]  # fmt: skip
    assert convs == [(1, 8), (8, 16)] and transposed == [(16, 8), (8, 1)]
    labels = every_digit.labels[:8] if conditional else None
    z = sample_latent(8, 100, "normal", torch.Generator().manual_seed(0), CPU)
    images = G(z, labels)
    assert images.shape == (8, 1, 28, 28) and images.min() >= -1 and images.max() <= 1
    assert D(images, labels).shape == (8,)
    a, b = (fit_gan(cfg, every_digit.images[:320], 0, CPU, every_digit.labels[:320]) for _ in "ab")
    assert [r["d_loss"] for r in a.history] == [r["d_loss"] for r in b.history]


def test_one_d_step_lowers_d_loss_on_a_fixed_batch(threes: Split) -> None:
    cfg = gan_params()
    G, D = networks(cfg)
    real = to_generator_range(threes.images[:64], "tanh")
    fake = G(sample_latent(64, 100, "normal", torch.Generator().manual_seed(1), CPU)).detach()
    before = d_loss(D, real, fake)
    stats = train_discriminator(D, make_optimizer(cfg.optimizer_d, D.parameters()), real, fake)
    loss, d_real, d_fake = stats.tolist()  # on the device, read here
    assert loss == pytest.approx(before, rel=1e-5)
    assert d_loss(D, real, fake) < before
    assert 0 < d_real < 1 and 0 < d_fake < 1


def test_one_g_step_raises_d_of_g_z(threes: Split) -> None:
    cfg = gan_params()
    G, D = networks(cfg)
    z = sample_latent(64, 100, "normal", torch.Generator().manual_seed(2), CPU)
    with torch.no_grad():
        before = torch.sigmoid(D(G(z))).mean().item()
    d_params = [p.clone() for p in D.parameters()]
    train_generator(D, make_optimizer(cfg.optimizer_g, G.parameters()), G(z))
    with torch.no_grad():
        after = torch.sigmoid(D(G(z))).mean().item()
    assert after > before
    assert all(torch.equal(a, b) for a, b in zip(d_params, D.parameters(), strict=True))
    # D is frozen only during the step
    assert all(p.requires_grad and p.grad is None for p in D.parameters())


@pytest.mark.parametrize("schedule", ["epochs", "rounds"])
def test_both_schedules_train_and_are_deterministic(threes: Split, schedule: str) -> None:
    cfg = gan_params(schedule=schedule)
    real = threes.images[:640]
    a = fit_gan(cfg, real, seed=5, device=CPU)
    b = fit_gan(cfg, real, seed=5, device=CPU)
    steps = [row["step"] for row in a.history]
    assert steps == ([20] if schedule == "epochs" else [2, 4, 6])
    assert [r["d_loss"] for r in a.history] == [r["d_loss"] for r in b.history]
    state_a, state_b = a.generator.state_dict(), b.generator.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert len(a.snapshots) == 2 and a.snapshots[-1][1].shape == (100, 1, 28, 28)
    assert a.snapshots[-1][0] == steps[-1]


@pytest.mark.filterwarnings("ignore:the generator looks collapsed")  # 10 steps are too few
def test_all_digits_and_sigmoid_output(prepared: tuple[Path, dict]) -> None:
    out, _ = prepared
    every = load_split(out, "train").of_digits(list(range(10)))
    assert len(every) == 55_000
    cfg = gan_params(**{"generator__output": "sigmoid", "latent": "uniform", "ema": 0.0})
    result = fit_gan(cfg, every.images[:320], seed=0, device=CPU)
    images = generate(result.generator, 50, seed=0, device=CPU)
    assert images.shape == (50, 1, 28, 28) and images.min() >= 0 and images.max() <= 1


@pytest.mark.filterwarnings("ignore:the generator looks collapsed")  # 3 steps are too few
def test_ema_warms_up_then_averages() -> None:
    assert ema_weight(0.999, 0) == pytest.approx(0.9)  # 1 - min(0.999, 1/10)
    assert ema_weight(0.999, 100_000) == pytest.approx(0.001)
    average = WarmupEMA(0.999)  # counts its own updates: no read of a device tensor
    current = torch.ones(3)
    assert torch.allclose(average(torch.zeros(3), current, torch.tensor(7)), torch.full((3,), 0.9))
    average.updates = 100_000
    averaged = average(torch.full((3,), 0.9), current, torch.tensor(0))
    assert torch.allclose(averaged, torch.full((3,), 0.9 + 0.1 * 0.001))
    assert average(torch.tensor(3), torch.tensor(7), torch.tensor(5)).item() == 7
    # in training, its count is AveragedModel's: the updates before this one
    result = fit_gan(gan_params(epochs=1, snapshots=1), torch.rand(96, 1, 28, 28), 0, CPU)
    assert result.history[-1]["step"] == 3


def test_schedules_yield_the_labs_steps() -> None:
    rng = torch.Generator().manual_seed(0)
    epochs = list(schedule(gan_params(epochs=2, batch_size=32), 100, rng))
    assert [s.train_g for s in epochs] == [True] * 6  # 100 // 32 batches a pass, 2 passes
    first_pass = torch.cat([s.real for s in epochs[:3]])
    assert len(first_pass.unique()) == 96  # a shuffled pass: no image twice
    rounds = list(schedule(gan_params(schedule="rounds", rounds=2, d_steps=3, g_steps=2), 100, rng))
    kinds = ["D" if s.real is not None else "G" for s in rounds]
    assert kinds == ["D", "D", "D", "G", "G"] * 2
    assert all(s.train_g == (s.real is None) for s in rounds)
    assert isinstance(rounds[0], Step) and rounds[0].real.shape == (32,)
    assert total_g_steps(gan_params(epochs=2, batch_size=32), 100) == 6
    assert total_g_steps(gan_params(schedule="rounds", rounds=2, g_steps=2), 100) == 4


def test_collapse_is_reported_not_hidden(threes: Split) -> None:
    real = threes.images[:200]
    ratio, collapsed = collapse_check(real[:100], real)
    assert 0.8 < ratio < 1.2 and not collapsed
    with pytest.warns(UserWarning, match="generator looks collapsed"):
        ratio, collapsed = collapse_check(real[:1].repeat(100, 1, 1, 1), real)
    assert ratio == 0 and collapsed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        collapse_check(real[100:], real)


def test_diverging_gan_names_the_step_and_learning_rates(threes: Split) -> None:
    cfg = gan_params(**{"optimizer_d__name": "sgd", "optimizer_d__lr": 1.0, "optimizer_d__momentum": 0.99,
                        "optimizer_g__name": "sgd", "optimizer_g__lr": 1.0, "optimizer_g__momentum": 0.99,
                        "generator__batchnorm": False, "epochs": 50})  # fmt: skip
    with pytest.raises(GANDiverged, match=r"GAN (generator|discriminator) loss became (nan|inf) at "
                       r"generator step \d+ \(gan.optimizer_d.lr=1.0, gan.optimizer_g.lr=1.0\)"):  # fmt: skip
        fit_gan(cfg, threes.images[:640], seed=0, device=CPU)


def test_checkpoints_rebuild_with_weights_only(tmp_path: Path, threes: Split) -> None:
    cfg = gan_params()
    result = fit_gan(cfg, threes.images[:320], seed=0, device=CPU)
    path = tmp_path / "generator.pt"
    save_checkpoint(path, "generator", cfg.generator_config(), result.generator, digit=3)
    rebuilt, checkpoint = load_generator(path)
    assert rebuilt.config == cfg.generator_config() and checkpoint["digit"] == 3
    a = generate(rebuilt, 10, seed=1, device=CPU)
    b = generate(result.generator, 10, seed=1, device=CPU)
    assert torch.equal(a, b)


def test_a_generator_checkpoint_that_does_not_fit_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    cfg = gan_params()
    G, _ = networks(cfg)
    path = tmp_path / "generator.pt"
    save_checkpoint(path, "generator", cfg.generator_config(), G)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"]["hidden"] = [8]
    torch.save(checkpoint, path)
    with pytest.raises(DigitlabError, match=r"generator.pt: weights do not fit the saved settings"):
        load_generator(path)
    del checkpoint["config"]
    torch.save(checkpoint, path)
    with pytest.raises(DigitlabError, match=r"generator.pt: its saved settings are missing"):
        load_generator(path)


# ---------------------------------------------------------------- conditional GAN


@pytest.fixture(scope="module")
def digits_judge(prepared: tuple[Path, dict]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A plain judge of real MNIST: the digit whose mean training image is nearest (about 80%
    right on real test images), so the tests need no trained classifier."""
    out, _ = prepared
    train = load_split(out, "train")
    means = torch.stack([train.images[train.labels == d].mean(0).flatten() for d in range(10)])
    return lambda images: torch.cdist(images.flatten(1), means).argmin(1)


@pytest.fixture(scope="module")
def every_digit(prepared: tuple[Path, dict]) -> Split:
    out, _ = prepared
    train = load_split(out, "train")
    return Split(train.images[:6000], train.labels[:6000])


def test_the_digit_steers_a_conditional_generator(
    every_digit: Split, digits_judge: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    cfg = gan_params(conditional=True, epochs=3, batch_size=64, discriminator__hidden=[256, 128])
    result = fit_gan(cfg, every_digit.images, 0, CPU, every_digit.labels)
    asked = requested_digits(500, list(range(10)))
    assert torch.equal(asked.bincount(), torch.full((10,), 50))
    images = generate(result.generator, 500, seed=1, device=CPU, labels=asked)
    assert images.shape == (500, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    # the same noise, another digit asked for: another image
    other = generate(result.generator, 500, seed=1, device=CPU, labels=(asked + 1) % 10)
    assert (images - other).abs().flatten(1).mean(1).min() > 0.01
    agreement = (digits_judge(images) == asked).double().mean().item()
    assert agreement > 0.3, f"samples judged as the digit asked for: {agreement:.0%} (chance: 10%)"
    # the fixed-noise grids: one row of ten per digit, judged as the digit of its row
    grid = result.snapshots[-1][1]
    assert grid.shape == (100, 1, 28, 28)
    rows = (digits_judge(grid) == torch.arange(10).repeat_interleave(10)).double().mean().item()
    assert rows > 0.3, f"fixed-noise samples judged as their row's digit: {rows:.0%}"


def test_a_conditional_gan_is_deterministic_and_round_trips(
    tmp_path: Path, every_digit: Split
) -> None:
    cfg = gan_params(conditional=True)
    images, labels = every_digit.images[:640], every_digit.labels[:640]
    a = fit_gan(cfg, images, 5, CPU, labels)
    b = fit_gan(cfg, images, 5, CPU, labels)
    assert [r["g_loss"] for r in a.history] == [r["g_loss"] for r in b.history]
    path = tmp_path / "generator.pt"
    save_checkpoint(path, "generator", cfg.generator_config(), a.generator, digit="all")
    rebuilt, _ = load_generator(path, conditional=True)
    asked = requested_digits(20, [2, 7])
    assert asked.tolist() == [2] * 10 + [7] * 10
    assert torch.equal(
        generate(rebuilt, 20, 1, CPU, asked), generate(b.generator, 20, 1, CPU, asked)
    )
    with pytest.raises(ValueError, match="trains on images with their labels"):
        fit_gan(cfg, images, 5, CPU)


def test_a_conditional_generator_learns_its_batchnorm_per_digit(every_digit: Split) -> None:
    """norm_per_digit: each BatchNorm of a conditional G has a scale and shift per digit,
    starting as plain BatchNorm and learned apart; off, or unconditional, it is plain BatchNorm
    (as in generators saved before the key)."""
    cfg = gan_params(conditional=True, generator__norm_per_digit=True)
    G, _ = networks(cfg)
    norms = [m for m in G.modules() if isinstance(m, DigitBatchNorm)]
    assert len(norms) == len(cfg.generator_config().hidden)
    assert all(n.scale.weight.eq(1).all() and n.shift.weight.eq(0).all() for n in norms)
    result = fit_gan(cfg, every_digit.images[:640], 0, CPU, every_digit.labels[:640])
    learned = [m for m in result.generator.modules() if isinstance(m, DigitBatchNorm)]
    spread = torch.stack([n.scale.weight.std(0).mean() for n in learned])
    assert (spread > 0).all(), "every digit's scale was learned apart"
    for plain in (gan_params(conditional=True, generator__norm_per_digit=False),
                  gan_params(conditional=False, generator__norm_per_digit=True)):  # fmt: skip
        G, _ = networks(plain)
        assert not any(isinstance(m, DigitBatchNorm) for m in G.modules())
        assert any(isinstance(m, nn.BatchNorm1d) and m.affine for m in G.modules())
    config = cfg.generator_config().model_dump()
    del config["norm_per_digit"]
    assert GeneratorConfig.model_validate(config).norm_per_digit is False


def test_the_wrong_kind_of_generator_or_digit_is_refused_in_one_line(tmp_path: Path) -> None:
    for conditional in (False, True):
        cfg = gan_params(conditional=conditional)
        G = build_generator(cfg.generator_config())
        path = tmp_path / f"{conditional}.pt"
        save_checkpoint(path, "generator", cfg.generator_config(), G)
        kind = "a conditional" if conditional else "an unconditional"
        wanted = str(not conditional).lower()
        with pytest.raises(DigitlabError, match=rf"{conditional}.pt is {kind} generator but "
                           rf"params.yaml has gan.conditional={wanted}: run `dvc repro train_gan`"):  # fmt: skip
            load_generator(path, conditional=not conditional)
    G3 = build_generator(gan_params().generator_config())
    path = tmp_path / "three.pt"
    save_checkpoint(path, "generator", gan_params().generator_config(), G3, digit=3)
    with pytest.raises(DigitlabError, match=r"three.pt was trained for digit 3 but params.yaml "
                       r"has digit 'all': run `dvc repro train_gan`"):  # fmt: skip
        load_generator(path, digit="all")
    with pytest.raises(DigitlabError, match=r"makes digits 0-9, not \[10\]"):
        requested_digits(10, [3, 10])
    with pytest.raises(DigitlabError, match="needs one requested digit per sample"):
        generate(G, 10, 0, CPU)  # the last G is conditional


# ---------------------------------------------------------------- the registry


@pytest.mark.parametrize("arch", list(GANS))
@pytest.mark.parametrize("conditional", [False, True])
def test_every_registered_gan_makes_images_and_judges_them(arch: str, conditional: bool) -> None:
    cfg = gan_params(arch=arch, channels=[8, 16], conditional=conditional)
    G, D = networks(cfg)
    assert (type(G), type(D)) == tuple(GANS[arch])
    labels = torch.arange(4) if conditional else None
    images = G(sample_latent(4, 100, "normal", torch.Generator().manual_seed(0), CPU), labels)
    assert images.shape == (4, 1, 28, 28) and D(images, labels).shape == (4,)


def test_an_unregistered_gan_builds_nothing() -> None:
    config = gan_params().generator_config().model_copy(update={"arch": "stylegan"})
    with pytest.raises(
        DigitlabError, match=r"gan.arch = 'stylegan': no such network \(registered: mlp, conv\)"
    ):
        build_generator(config)


def test_checkpoints_saved_before_the_arch_key_rebuild_as_before(tmp_path: Path) -> None:
    """A checkpoint's config without `arch`: conv when it names channels, else mlp."""
    for arch, channels in (("mlp", None), ("conv", [8, 16])):
        config = gan_params(arch=arch, channels=channels or [8, 16]).generator_config()
        G = build_generator(config)
        path = tmp_path / f"{arch}.pt"
        save_checkpoint(path, "generator", config, G)
        old = torch.load(path, weights_only=True)
        del old["config"]["arch"]
        old["config"]["channels"] = channels
        torch.save(old, path)
        assert type(load_generator(path)[0]) is type(G)


# ---------------------------------------------------------------- what the GAN cannot make


@pytest.mark.parametrize("stage", ["train_gan", "evaluate_gan"])
def test_gan_stages_refuse_cifar10_in_one_line_before_any_work(stage: str, tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"]["dataset"] = "cifar10"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PYTHONPATH"] = str(ROOT / "src")  # this checkout's digitlab
    result = subprocess.run(
        [sys.executable, str(ROOT / "stages" / f"{stage}.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "digitlab: error: data.dataset is cifar10: the GAN makes 1×28×28 images; set "
        "data.dataset to mnist or fashion_mnist (or run only the classifier stages: "
        "dvc repro evaluate)"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "params.yaml"
    ]  # no MLflow run, no outputs
