"""The benchmark's pieces on real MNIST: the labs' own loops and pytorch/examples' recipe train
their models, FLOPs are counted right, time-to-quality stops at the target."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import repo_params

from digitlab.bench import (
    ExamplesNet,
    NotebookNet,
    ProductTimer,
    classifier_epoch_flops,
    classifier_speedup,
    classifier_time_to_accuracy,
    counted_flops,
    dataloader_epoch,
    examples_time_to_accuracy,
    gan_peak_share,
    gan_step_flops,
    gan_time_to_decent,
    lab5_gan_params,
    matmul_peak,
    notebook_gan_params,
    notebook_gan_seconds,
    notebook_networks,
    plain_epoch,
    plain_gan_loop,
    product_seconds,
)
from digitlab.data import Split, load_split
from digitlab.models import MLP, n_parameters
from digitlab.train import classifier_loss, fit_classifier


def small(split: Split, n: int) -> Split:
    return Split(split.images[:n], split.labels[:n])


def test_dataloader_epoch_trains_the_model(raw_mnist: Path) -> None:
    torch.manual_seed(0)
    model = MLP([32], "relu", 0.0)
    before = [p.clone() for p in model.parameters()]
    dataloader_epoch(model, raw_mnist, n_images=256, batch_size=64, seed=0)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_plain_epoch_trains_the_model(prepared: tuple[Path, dict]) -> None:
    train = small(load_split(prepared[0], "train"), 1280)
    torch.manual_seed(0)
    model = MLP([32], "relu", 0.0)
    before = classifier_loss(model(train.images), train.labels, "ce").item()
    plain_epoch(model, train, batch_size=64, seed=0)
    assert classifier_loss(model(train.images), train.labels, "ce").item() < 0.9 * before


def test_classifier_speedup_times_three_loops(prepared: tuple[Path, dict], raw_mnist: Path) -> None:
    train, val = load_split(prepared[0], "train"), load_split(prepared[0], "val")
    cfg = repo_params(**{"classifier.arch": "mlp", "classifier.hidden": [32]}).classifier
    result = classifier_speedup(cfg, raw_mnist, small(train, 640), small(val, 100), 0, repeats=1)
    assert min(result["digitlab_s"], result["dataloader_s"], result["plain_s"]) > 0
    assert result["speedup"] == pytest.approx(result["dataloader_s"] / result["digitlab_s"])
    assert result["plain_speedup"] == pytest.approx(result["dataloader_s"] / result["plain_s"])


def test_plain_gan_loop_also_computes_d_weight_gradients_in_the_g_step(
    prepared: tuple[Path, dict],
) -> None:
    real = load_split(prepared[0], "train").images[:256] * 2 - 1
    cfg = lab5_gan_params(repo_params())
    d_loss, g_loss = plain_gan_loop(cfg, real, seed=0)(3)
    assert math.isfinite(d_loss) and math.isfinite(g_loss)
    plain = counted_flops(lambda: plain_gan_loop(cfg, real, seed=0)(1))
    # Same work as digitlab's iteration, plus the gradients of D's weights in the G step,
    # which digitlab skips (D is frozen there) and the plain loop computes and throws away.
    d_weight_grads = 2 * 64 * (784 * 1024 + 1024 * 512 + 512 * 256 + 256 * 1)
    assert plain == gan_step_flops(cfg, real) + d_weight_grads


def test_notebook_gan_loop_runs_the_notebook_networks(raw_mnist: Path) -> None:
    cfg = notebook_gan_params(repo_params())
    assert cfg.generator_config()["hidden"] == [32, 64, 128]
    assert cfg.optimizer_d.name == "sgd" and cfg.latent == "uniform"
    G, D = notebook_networks(cfg)
    # The notebook's layers: 100-32-64-128-784 and 784-128-64-32-1, one shared dropout 0.3.
    assert [fc.out_features for fc in G.fc] == [32, 64, 128, 784]
    assert [fc.out_features for fc in D.fc] == [128, 64, 32, 1]
    assert isinstance(D, NotebookNet) and D.dropout.p == 0.3
    assert G(torch.zeros(5, 100)).shape == (5, 784) and D(torch.zeros(5, 1, 28, 28)).shape == (5, 1)
    assert notebook_gan_seconds(cfg, raw_mnist, [3], steps=5, seed=0) > 0


def test_flops_of_an_mlp_step_are_counted_by_hand() -> None:
    model = MLP([32], "relu", 0.0)
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    flops = counted_flops(lambda: classifier_loss(model(x), y, "ce").backward())
    forward = 2 * 64 * (784 * 32 + 32 * 10)
    backward = 2 * 64 * (784 * 32 + 32 * 10) + 2 * 64 * 10 * 32  # weight grads, one input grad
    assert flops == forward + backward


def test_classifier_epoch_flops_add_the_validation_pass(prepared: tuple[Path, dict]) -> None:
    train, val = load_split(prepared[0], "train"), load_split(prepared[0], "val")
    cfg = repo_params(**{"classifier.arch": "mlp", "classifier.hidden": [32]}).classifier
    flops = classifier_epoch_flops(cfg, small(train, 640), small(val, 100))
    per_image_step = 2 * (784 * 32 + 32 * 10) * 2 + 2 * 10 * 32  # as in the test above, / 64
    assert flops == per_image_step * 640 + 2 * (784 * 32 + 32 * 10) * 100


def test_gan_step_flops_scale_with_the_batch(prepared: tuple[Path, dict]) -> None:
    real = load_split(prepared[0], "train").images[:128] * 2 - 1
    params = repo_params()
    flops = {
        b: gan_step_flops(params.gan.model_copy(update={"batch_size": b}), real) for b in (32, 64)
    }
    assert flops[64] == 2 * flops[32] > 1e9  # lab 5's networks: about 1.9 GFLOP per iteration


@pytest.mark.filterwarnings("ignore:the generator looks collapsed")  # 3 steps are too few
def test_lab5_gan_loop_is_timed_next_to_the_peak(prepared: tuple[Path, dict]) -> None:
    train = load_split(prepared[0], "train")
    cfg = lab5_gan_params(repo_params())
    assert cfg.generator_config()["hidden"] == [256, 512, 1024]
    assert cfg.discriminator.hidden == [1024, 512, 256]
    assert not cfg.generator.batchnorm and cfg.generator.dropout == cfg.discriminator.dropout == 0
    assert cfg.optimizer_d.name == cfg.optimizer_g.name == "adam" and cfg.batch_size == 64
    result = gan_peak_share(cfg, small(train, 192), seed=0, repeats=1)  # 3 steps
    assert result["steps_per_s"] > 0 and 1 < result["peak_gflops"] < 1e5
    assert result["peak_share"] == pytest.approx(result["gflops"] / result["peak_gflops"])
    assert 0 < result["peak_share"] < 2
    # The products alone run faster than the whole step, which also does everything else.
    assert result["peak_share"] < result["products_peak_share"] < 2
    assert result["products_gflops"] == pytest.approx(
        result["products_peak_share"] * result["peak_gflops"]
    )
    assert result["plain_steps_per_s"] > 0 and 0 < result["plain_peak_share"] < 2
    assert result["plain_gflops"] == pytest.approx(
        result["plain_peak_share"] * result["peak_gflops"]
    )


def test_product_timer_counts_only_matrix_products() -> None:
    a, b = torch.randn(256, 256), torch.randn(256, 256, requires_grad=True)
    with ProductTimer() as timer:
        (a * 2 + 1).relu().sum()
    assert timer.calls == 0 and timer.seconds == 0
    with ProductTimer() as timer:
        (a @ b).relu().sum().backward()  # one product forward, one for b's gradient
    assert timer.calls == 2 and timer.seconds > 0
    assert 0 < product_seconds(lambda: a @ b, calls=3, repeats=2) < 1


def test_matmul_peak_is_measured() -> None:
    assert 1e9 < matmul_peak(size=512, repeats=2) < 1e14


def test_pytorch_examples_recipe_learns(raw_mnist: Path) -> None:
    assert n_parameters(ExamplesNet()) == 1_199_882  # as pytorch/examples' mnist/main.py
    result = examples_time_to_accuracy(raw_mnist, seed=0, target=0.99, max_epochs=1, n_train=640)
    (point,) = result["curve"]
    assert point["epoch"] == 1 and point["seconds"] > 0
    assert 0.3 < point["test_acc"] < 0.99 and result["seconds"] is None  # learnt; target missed


def test_classifier_time_to_accuracy_stops_at_the_target(prepared: tuple[Path, dict]) -> None:
    train, val, test = (load_split(prepared[0], name) for name in ("train", "val", "test"))
    cfg = repo_params(
        **{"classifier.arch": "mlp", "classifier.hidden": [32], "classifier.epochs": 5}
    ).classifier
    result = classifier_time_to_accuracy(cfg, small(train, 2000), val, small(test, 1000), 0, 0.5)
    assert len(result["curve"]) == 1  # stopped after the first epoch that reached it
    assert result["curve"][0]["test_acc"] >= 0.5 and result["seconds"] > 0


def test_gan_time_to_decent_judges_every_epoch(prepared: tuple[Path, dict]) -> None:
    train, val = load_split(prepared[0], "train"), load_split(prepared[0], "val")
    params = repo_params(**{"gan.epochs": 2, "gan.discriminator.hidden": [64, 32]})
    classifier = MLP([32], "relu", 0.0)
    fit_classifier(classifier, small(train, 2000), val, params.classifier.model_copy(
        update={"epochs": 1, "scheduler": "none"}), 0, torch.device("cpu"))  # fmt: skip
    real = train.of_digits([3]).images[:640]
    never = gan_time_to_decent(params, real, classifier, "ce", target=1.01, n_samples=200)
    assert [p["g_step"] for p in never["curve"]] == [10, 20] and never["seconds"] is None
    assert all(0 <= p["decent_rate"] <= 1 for p in never["curve"])
    first = gan_time_to_decent(params, real, classifier, "ce", target=0.0, n_samples=200)
    assert len(first["curve"]) == 1 and first["seconds"] == first["curve"][0]["seconds"] > 0
