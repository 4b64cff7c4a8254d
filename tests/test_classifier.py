"""Classifier: every registered network, losses, the training loop, metrics and checkpoints, on
real MNIST (and generated CIFAR-10 batches for 3×32×32 images)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from digitlab.checkpoints import load_classifier, save_checkpoint
from digitlab.data import Split, load_split, normalize
from digitlab.errors import DigitlabError
from digitlab.flat import flatten
from digitlab.inference import eval_batch, predict_logits
from digitlab.metrics import breakdown, classifier_report, detector_metrics
from digitlab.models import CLASSIFIERS, build_classifier, n_parameters
from digitlab.params import AugmentParams, ClassifierParams, input_shape
from digitlab.readers import read_raw
from digitlab.train import TrainingDiverged, classifier_loss, fit_classifier, random_affine
from helpers import repo_params

CPU = torch.device("cpu")


def classifier_params(**changes: object) -> ClassifierParams:
    """The repo's classifier params with keys changed ('optimizer__lr' for optimizer.lr)."""
    return repo_params(
        **{f"classifier.{k.replace('__', '.')}": v for k, v in changes.items()}
    ).classifier


def subset(split: Split, n: int) -> Split:
    return Split(split.images[:n].clone(), split.labels[:n].clone())


@pytest.fixture(scope="module")
def splits(prepared: tuple[Path, dict]) -> dict[str, Split]:
    out, _ = prepared
    return {name: load_split(out, name) for name in ("train", "val", "test")}


@pytest.mark.parametrize("loss", ["bce", "ce", "mse"])
@pytest.mark.parametrize("arch", list(CLASSIFIERS))
def test_each_arch_and_loss_learns(splits: dict[str, Split], arch: str, loss: str) -> None:
    cfg = classifier_params(arch=arch, loss=loss)
    torch.manual_seed(0)
    model = build_classifier(cfg.architecture())
    x, y = splits["train"].images[:256], splits["train"].labels[:256]
    assert model(x).shape == (256, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.eval()  # no dropout: the same batch must score better after the steps
    with torch.no_grad():
        before = classifier_loss(model(x), y, cfg).item()
    for _ in range(3):
        optimizer.zero_grad()
        classifier_loss(model(x), y, cfg).backward()
        optimizer.step()
    with torch.no_grad():
        after = classifier_loss(model(x), y, cfg).item()
    assert after < before


def test_parameter_counts_of_the_labs_models() -> None:
    assert n_parameters(build_classifier(classifier_params(arch="mlp").architecture())) == (
        784 * 256 + 256 + 256 * 10 + 10
    )
    assert n_parameters(build_classifier(classifier_params(arch="lenet5").architecture())) == 61_706
    assert n_parameters(build_classifier(classifier_params(arch="fastcnn").architecture())) == (
        24 * 25 + 24 + 32 * 24 * 9 + 32 + 800 * 256 + 256 + 256 * 10 + 10
    )
    lab_cnn = build_classifier(classifier_params(arch="cnn", channels=[64, 32, 32]).architecture())
    assert n_parameters(lab_cnn) == 640 + 18_464 + 9_248 + 2_890


def test_metrics_match_hand_computed_values() -> None:
    true = torch.tensor([3, 3, 3, 3, 5, 5, 8, 1, 7, 2])
    pred = torch.tensor([3, 5, 3, 8, 3, 5, 8, 3, 3, 2])
    probs = torch.nn.functional.one_hot(pred, 10).float()
    metrics, details, confusion, table = classifier_report(true, probs, [3])
    # digit 3: TP = 2 (0, 2); FP = 3 (4: 5→3, 7: 1→3, 8: 7→3); FN = 2 (1: →5, 3: →8); TN = 3
    assert metrics["accuracy"] == pytest.approx(5 / 10)
    headline = {"accuracy": pytest.approx(5 / 10), "precision": pytest.approx(2 / 5),
                "recall": pytest.approx(2 / 4), "f1": pytest.approx(2 * 0.4 * 0.5 / 0.9)}  # fmt: skip
    assert metrics["detector"] == headline
    assert details == {
        "n_test": 10,
        "per_digit": {"3": {**headline, "tp": 2, "fp": 3, "fn": 2, "tn": 3}},
    }
    assert confusion[5, 3] == 1 and confusion[3, 8] == 1 and confusion.sum() == 10
    assert len(table) == 9
    rows = table.set_index("other")
    assert rows["false_positives"].to_dict() == {
        0: 0,
        1: 1,
        2: 0,
        4: 0,
        5: 1,
        6: 0,
        7: 1,
        8: 0,
        9: 0,
    }
    assert rows["false_negatives"].to_dict() == {
        0: 0,
        1: 0,
        2: 0,
        4: 0,
        5: 1,
        6: 0,
        7: 0,
        8: 1,
        9: 0,
    }
    names = flatten({**metrics, **details}, prefix="test")  # the names MLflow gets
    assert names["test/detector/precision"] == pytest.approx(0.4)
    assert names["test/per_digit/3/fp"] == 3


def test_all_digits_gives_a_detector_and_breakdown_per_digit() -> None:
    true = torch.arange(10).repeat(3)
    pred = true.roll(1)
    probs = torch.nn.functional.one_hot(pred, 10).float()
    metrics, details, confusion, table = classifier_report(true, probs, list(range(10)))
    assert set(details["per_digit"]) == {str(d) for d in range(10)}  # the same shape as one digit's
    assert len(table) == 90
    assert details["per_digit"]["4"] == detector_metrics(confusion, 4)
    assert details["per_digit"]["4"]["recall"] == 0.0
    # the headline: the mean of the ten detectors (every image is called the digit before it)
    assert metrics["detector"] == {"accuracy": 0.8, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert "test/per_digit/9/recall" in flatten(details, prefix="test")
    assert breakdown(confusion, 0)["false_positives"].sum() == 3


@pytest.mark.parametrize(
    "changes",
    [
        {"arch": "mlp", "hidden": [64]},
        {"arch": "fastcnn", "augment__shift": 2, "augment__rotate": 15},
    ],
)
def test_training_is_deterministic_and_keeps_the_best_epoch(
    splits: dict[str, Split], changes: dict
) -> None:
    cfg = classifier_params(**changes, epochs=3, batch_size=128, scheduler="none")
    train, val = subset(splits["train"], 3000), subset(splits["val"], 1000)
    results = []
    for _ in range(2):
        torch.manual_seed(7)
        model = build_classifier(cfg.architecture())
        results.append(fit_classifier(model, train, val, cfg, seed=7, device=CPU))
    a, b = results
    assert [r["val_acc"] for r in a.history] == [r["val_acc"] for r in b.history]
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    best = max(a.history, key=lambda r: (r["val_acc"], -r["val_loss"]))
    assert a.best_epoch == best["epoch"]
    assert a.history[-1]["train_loss"] < a.history[0]["train_loss"]
    assert a.history[-1]["val_acc"] > 0.85


def centre_of_mass(images: torch.Tensor) -> torch.Tensor:
    """(y, x) centre of each image's ink, in pixels."""
    weights = images[:, 0] / images[:, 0].sum((1, 2), keepdim=True)
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    return torch.stack([(weights * ys).sum((1, 2)), (weights * xs).sum((1, 2))], 1)


def test_random_affine_moves_turns_and_scales_within_its_bounds(splits: dict[str, Split]) -> None:
    images = splits["train"].images[:500]
    rng = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    off = AugmentParams(shift=0, rotate=0, scale=0)
    assert not off.active
    assert torch.allclose(random_affine(images, off, rng()), images, atol=1e-5)  # identity
    moved = random_affine(images, AugmentParams(shift=2, rotate=0, scale=0), rng())
    assert moved.shape == images.shape and moved.min() >= 0 and moved.max() <= 1
    offsets = (centre_of_mass(moved) - centre_of_mass(images)).abs()
    assert offsets.max() <= 2.05 and offsets.max() > 1.8  # up to 2 pixels, and about that far
    turned = random_affine(images, AugmentParams(shift=0, rotate=30, scale=0), rng())
    centre = torch.tensor([13.5, 13.5])
    radius = lambda x: (centre_of_mass(x) - centre).norm(dim=1)  # noqa: E731
    assert torch.allclose(radius(turned), radius(images), atol=0.25)  # turned about the centre
    assert (turned - images).abs().amax((1, 2, 3)).median() > 0.5  # most images changed much
    ink = lambda x: x.sum((1, 2, 3))  # noqa: E731
    grown = random_affine(images, AugmentParams(shift=0, rotate=0, scale=0.2), rng())
    ratio = ink(grown) / ink(images)  # ink area goes with the scale squared
    assert 0.6 < ratio.min() < 0.75 and 1.3 < ratio.max() < 1.5
    both = AugmentParams(shift=1, rotate=10, scale=0.1)
    assert torch.equal(random_affine(images, both, rng()), random_affine(images, both, rng()))


def test_labs_literal_setup_whole_set_steps(splits: dict[str, Split]) -> None:
    """mlp [256] leaky_relu, bce, adam 0.01, one step on the whole set per epoch, 50 steps."""
    cfg = classifier_params(
        arch="mlp", hidden=[256], activation="leaky_relu", loss="bce", optimizer__name="adam",
        optimizer__lr=0.01, scheduler="none", batch_size=0, epochs=50,
    )  # fmt: skip
    train, val = subset(splits["train"], 10_000), subset(splits["val"], 1000)
    torch.manual_seed(0)
    model = build_classifier(cfg.architecture())
    result = fit_classifier(model, train, val, cfg, seed=0, device=CPU)
    model.load_state_dict(result.state_dict)
    test = splits["test"]
    probs = torch.sigmoid(predict_logits(model, test.images, CPU))
    metrics, _, _, _ = classifier_report(test.labels, probs, [3])
    assert metrics["detector"]["accuracy"] >= 0.9
    assert metrics["accuracy"] >= 0.85


@pytest.mark.parametrize("features", [False, True])
def test_predictions_in_batches_match_one_pass(splits: dict[str, Split], features: bool) -> None:
    images = splits["val"].images[:600]  # more than two CPU batches, the last one partial
    assert eval_batch(CPU) < len(images) < 3 * eval_batch(CPU)
    torch.manual_seed(0)
    model = build_classifier(classifier_params(arch="cnn").architecture()).train()
    batched = predict_logits(model, images, CPU, features=features)
    assert not model.training  # predictions run in eval mode
    with torch.inference_mode():
        whole = model.features(images) if features else model(images)
    assert batched.shape == whole.shape and torch.allclose(batched, whole, atol=1e-5)


def test_too_high_learning_rate_stops_with_a_clear_error(splits: dict[str, Split]) -> None:
    cfg = classifier_params(arch="mlp", loss="ce", optimizer__name="sgd", optimizer__lr=10.0,
                            scheduler="none", epochs=3)  # fmt: skip
    torch.manual_seed(0)
    model = build_classifier(cfg.architecture())
    with pytest.raises(TrainingDiverged, match=r"classifier loss became (nan|inf) at epoch \d+, step \d+ "
                       r"\(classifier.optimizer.lr=10.0\)"):  # fmt: skip
        fit_classifier(
            model, subset(splits["train"], 5000), subset(splits["val"], 500), cfg, 0, CPU
        )


def test_checkpoint_round_trip_and_mismatches(tmp_path: Path) -> None:
    cfg = classifier_params(arch="mlp", hidden=[32])
    torch.manual_seed(0)
    model = build_classifier(cfg.architecture())
    path = tmp_path / "classifier.pt"
    save_checkpoint(path, "classifier", cfg.architecture(), model, n_parameters=n_parameters(model))
    loaded, architecture, _ = load_classifier(path, expected=cfg.architecture())
    assert architecture == cfg.architecture()
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))
    other = classifier_params(arch="cnn").architecture()
    with pytest.raises(
        DigitlabError, match=r"trained with classifier.arch='mlp' but params.yaml has 'cnn'"
    ):
        load_classifier(path, expected=other)
    # Weights of another shape under the same settings: refused with the reason, in one line.
    bigger = build_classifier(classifier_params(arch="mlp", hidden=[64]).architecture())
    save_checkpoint(path, "classifier", cfg.architecture(), bigger)
    with pytest.raises(
        DigitlabError, match=r"weights do not fit the saved settings \(.*size mismatch"
    ):
        load_classifier(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(DigitlabError, match="not a readable checkpoint"):
        load_classifier(path)


# ---------------------------------------------------------------- colour images (CIFAR-10)


@pytest.mark.parametrize("arch", list(CLASSIFIERS))
def test_every_classifier_takes_3x32x32_images(arch: str) -> None:
    params = repo_params(**{"classifier.arch": arch, "data.dataset": "cifar10"})
    assert input_shape("cifar10") == (3, 32, 32) and input_shape("mnist") == (1, 28, 28)
    torch.manual_seed(0)
    model = build_classifier(params.classifier.architecture(), input_shape("cifar10"))
    assert model(torch.rand(4, 3, 32, 32)).shape == (4, 10)
    assert model.features(torch.rand(4, 3, 32, 32)).shape[0] == 4


def test_lenet5_is_the_original_on_32x32_and_unchanged_on_28x28() -> None:
    architecture = repo_params(**{"classifier.arch": "lenet5"}).classifier.architecture()
    colour, grey = build_classifier(architecture, (3, 32, 32)), build_classifier(architecture)
    first = colour.body[0]
    assert (first.in_channels, first.kernel_size, first.padding) == (3, (5, 5), (0, 0))
    assert (grey.body[0].in_channels, grey.body[0].padding) == (1, (2, 2))
    assert n_parameters(grey) == 61_706 and n_parameters(colour) == 61_706 + 2 * 150
    assert list(dict(colour.named_parameters())) == list(dict(grey.named_parameters()))
    assert colour.body[:7](torch.rand(1, 3, 32, 32)).shape == (1, 16 * 5 * 5)  # 32→28→14→10→5


def test_a_cifar_checkpoint_rebuilds_its_3_channel_model(tmp_path: Path) -> None:
    architecture = repo_params(**{"classifier.arch": "cnn"}).classifier.architecture()
    torch.manual_seed(0)
    model = build_classifier(architecture, (3, 32, 32)).eval()
    path = tmp_path / "classifier.pt"
    save_checkpoint(path, "classifier", architecture, model, dataset="cifar10")
    loaded, _, checkpoint = load_classifier(path, architecture)
    x = torch.rand(2, 3, 32, 32)
    assert checkpoint["dataset"] == "cifar10" and torch.allclose(loaded(x), model(x))


def test_training_on_colour_images_with_augmentation(cifar: Path) -> None:
    images, labels = read_raw(cifar, train=True, dataset="cifar10")
    split = Split(normalize(images), labels)
    cfg = repo_params(**{"classifier.arch": "lenet5", "classifier.epochs": 1}).classifier
    assert cfg.augment.active
    torch.manual_seed(0)
    model = build_classifier(cfg.architecture(), (3, 32, 32))
    result = fit_classifier(model, split, split, cfg, seed=0, device=torch.device("cpu"))
    assert len(result.history) == 1 and math.isfinite(result.history[0]["train_loss"])


def test_an_unregistered_network_builds_nothing() -> None:
    cfg = classifier_params(arch="mlp").architecture().model_copy(update={"arch": "resnet"})
    with pytest.raises(
        DigitlabError,
        match=r"classifier.arch = 'resnet': no such network \(registered: mlp, cnn, lenet5, fastcnn\)",
    ):
        build_classifier(cfg)
