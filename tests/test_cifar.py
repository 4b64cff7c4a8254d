"""CIFAR-10 (data.dataset: cifar10) on generated python-version batches: fetch sources and their
md5 checks, reading and preparing 3×32×32 images, every classifier on them, colour figures, and
the GAN stages refusing the dataset."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from digitlab.data import (
    CIFAR_DIR,
    CIFAR_FILES,
    CIFAR_TARBALL,
    CLASS_NAMES,
    RAW_DIR_ENV,
    FetchError,
    Split,
    _copy_cifar_from_dir,
    fetch_raw,
    normalize,
    read_cifar_batch,
    read_raw,
    sources_for,
    split_stats,
    stratified_split,
)
from digitlab.errors import DigitlabError
from digitlab.models import build_classifier, load_classifier, n_parameters, save_checkpoint
from digitlab.params import ParamsError, check_gan_dataset, input_shape, parse_params
from digitlab.plots import class_rows, grid_image, labelled_grid, save_grid
from digitlab.train import fit_classifier
from helpers import ROOT, repo_params

PER_BATCH = 50  # images per generated batch: 250 training images, 50 test images


def write_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    """A batch pickled like CIFAR-10's python version (bytes keys, N×3072 uint8 rows)."""
    names = [f"image_{i}.png".encode() for i in range(len(labels))]
    batch = {b"batch_label": path.name.encode(), b"labels": labels, b"data": data,
             b"filenames": names}  # fmt: skip
    path.write_bytes(pickle.dumps(batch))


def make_cifar(directory: Path) -> Path:
    """The seven python-version files, random pixels, labels 0-9 in turn; the first training
    image has its red plane all 255, green 0 and blue 128."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in CIFAR_FILES[:-1]:
        data = rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8)
        if name == "data_batch_1":
            data[0, :1024], data[0, 1024:2048], data[0, 2048:] = 255, 0, 128
        write_batch(directory / name, data, [i % 10 for i in range(PER_BATCH)])
    meta = {b"label_names": [n.encode() for n in CLASS_NAMES["cifar10"]], b"num_vis": 3072,
            b"num_cases_per_batch": PER_BATCH}  # fmt: skip
    (directory / "batches.meta").write_bytes(pickle.dumps(meta))
    return directory


@pytest.fixture
def cifar(tmp_path: Path) -> Path:
    return make_cifar(tmp_path / "batches")


def one_line_error(call, *args) -> str:
    with pytest.raises(DigitlabError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- reading


def test_a_batch_reads_as_uint8_images_with_red_in_channel_0(cifar: Path) -> None:
    images, labels = read_cifar_batch(cifar / "data_batch_1")
    assert images.shape == (PER_BATCH, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels.tolist() == [i % 10 for i in range(PER_BATCH)]
    assert (images[0, 0] == 255).all() and (images[0, 1] == 0).all()
    assert (images[0, 2] == 128).all()
    # rows of 32 pixels, row by row: pixel (y, x) of the red plane is byte 32·y + x of the row
    row = pickle.loads((cifar / "data_batch_1").read_bytes())[b"data"][1]
    assert images[1, 1, 3, 5] == row[1024 + 32 * 3 + 5]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_batches_pickled_with_any_protocol_read_alike(tmp_path: Path, protocol: int) -> None:
    data = np.arange(2 * 3072, dtype=np.uint64).astype(np.uint8).reshape(2, 3072)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": data, b"labels": [3, 7]}, protocol=protocol))
    images, labels = read_cifar_batch(path)
    assert torch.equal(images, torch.from_numpy(data.copy()).view(2, 3, 32, 32))
    assert labels.tolist() == [3, 7]


def test_read_raw_joins_the_five_training_batches(cifar: Path) -> None:
    train_images, train_labels = read_raw(cifar, train=True, dataset="cifar10")
    test_images, test_labels = read_raw(cifar, train=False, dataset="cifar10")
    assert train_images.shape == (5 * PER_BATCH, 3, 32, 32) and len(train_labels) == 5 * PER_BATCH
    assert test_images.shape == (PER_BATCH, 3, 32, 32) and len(test_labels) == PER_BATCH


def test_a_truncated_batch_is_refused_in_one_line_naming_it(cifar: Path) -> None:
    path = cifar / "data_batch_2"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = one_line_error(read_cifar_batch, path)
    assert message.startswith(f"{path}: not a readable CIFAR-10 batch, truncated or damaged")


@pytest.mark.parametrize(
    ("data", "labels", "expected"),
    [
        (np.zeros((4, 3072), np.uint8), [0, 1, 2, 10], "labels 0-10 outside 0-9"),
        (np.zeros((4, 3072), np.uint8), [0, 1, 2], "b'labels' are not 4 integers"),
        (np.zeros((4, 784), np.uint8), [0, 1, 2, 3], "b'data' is (4, 784), expected N×3072 uint8"),
        (np.zeros((4, 3072), np.float32), [0, 1, 2, 3], "expected N×3072 uint8"),
    ],
)
def test_a_malformed_batch_is_refused_saying_what_is_wrong(
    tmp_path: Path, data: np.ndarray, labels: list[int], expected: str
) -> None:
    path = tmp_path / "data_batch_1"
    write_batch(path, data, labels)
    message = one_line_error(read_cifar_batch, path)
    assert message.startswith(str(path)) and expected in message


def test_a_pickle_naming_other_code_is_not_run(tmp_path: Path) -> None:
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": os.getcwd, b"labels": []}))
    message = one_line_error(read_cifar_batch, path)
    assert "truncated or damaged (UnpicklingError)" in message


def test_read_normalize_split_give_3x32x32_in_unit_range(cifar: Path) -> None:
    images, labels = read_raw(cifar, train=True, dataset="cifar10")
    prepared = normalize(images)
    assert prepared.shape == (250, 3, 32, 32) and prepared.dtype == torch.float32
    assert prepared.min() == 0.0 and prepared.max() == 1.0
    assert torch.equal(prepared[0, 2], torch.full((32, 32), 128 / 255))
    train_idx, val_idx = stratified_split(labels, 50, seed=0)
    assert len(val_idx) == 50 and torch.bincount(labels[val_idx]).tolist() == [5] * 10
    stats = split_stats(Split(prepared[train_idx], labels[train_idx]))
    assert stats["count"] == 200 and stats["per_class"]["0"] == 20
    # MNIST's N×28×28 still gains its channel axis
    assert normalize(torch.zeros(2, 28, 28, dtype=torch.uint8)).shape == (2, 1, 28, 28)


# ---------------------------------------------------------------- fetching


def test_the_batches_are_found_directly_in_a_subfolder_or_in_the_tarball(
    cifar: Path, tmp_path: Path
) -> None:
    nested = tmp_path / "nested"
    make_cifar(nested / CIFAR_DIR)
    packed = tmp_path / "packed"
    packed.mkdir()
    with tarfile.open(packed / CIFAR_TARBALL, "w:gz") as tar:
        tar.add(cifar, arcname=CIFAR_DIR)
    expected = read_raw(cifar, train=False, dataset="cifar10")
    for directory in (cifar, nested, packed):
        staging = tmp_path / f"staging-{directory.name}"
        staging.mkdir()
        _copy_cifar_from_dir(directory, staging)
        assert sorted(p.name for p in staging.iterdir()) == sorted(CIFAR_FILES)
        images, labels = read_raw(staging, train=False, dataset="cifar10")
        assert torch.equal(images, expected[0]) and torch.equal(labels, expected[1])


def test_unverified_batches_are_refused_and_leave_dest_as_it_was(
    cifar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "raw" / "cifar10"
    dest.mkdir(parents=True)
    (dest / "data_batch_1").write_bytes(b"an earlier, incomplete fetch")
    monkeypatch.setenv(RAW_DIR_ENV, str(cifar))
    with pytest.raises(FetchError) as info:
        fetch_raw("cifar10", dest, sources_for("cifar10")[:1], log=lambda _: None)
    message = str(info.value)
    assert "\n" not in message
    assert "local-dir (data_batch_1: md5 " in message and "corrupt or truncated" in message
    assert f"set {RAW_DIR_ENV} to it" in message and CIFAR_TARBALL in message
    assert [p.name for p in dest.iterdir()] == ["data_batch_1"]
    assert (dest / "data_batch_1").read_bytes() == b"an earlier, incomplete fetch"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["cifar10"]  # no staging left


def test_offline_error_names_the_files_and_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert [s.name for s in sources_for("cifar10")] == ["local-dir", "torchvision"]
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(RAW_DIR_ENV, str(empty))
    dest = tmp_path / "raw" / "cifar10"
    with pytest.raises(FetchError) as info:
        fetch_raw("cifar10", dest, sources_for("cifar10")[:1], log=lambda _: None)
    message = str(info.value)
    assert f"no CIFAR-10 batches (directly or in {CIFAR_DIR}/) and no {CIFAR_TARBALL}" in message
    assert "python-version batches (data_batch_1, data_batch_2," in message
    assert "test_batch, batches.meta" in message
    assert f"in a directory and set {RAW_DIR_ENV} to it" in message
    assert not dest.exists()


def test_a_tarball_whose_batch_is_a_link_is_refused(tmp_path: Path) -> None:
    tarball = tmp_path / CIFAR_TARBALL
    with tarfile.open(tarball, "w:gz") as tar:
        link = tarfile.TarInfo(f"{CIFAR_DIR}/data_batch_1")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    staging = tmp_path / "staging"
    staging.mkdir()
    from digitlab.data import SourceError

    with pytest.raises(SourceError, match="data_batch_1 is not a CIFAR-10 file"):
        _copy_cifar_from_dir(tmp_path, staging)
    assert list(staging.iterdir()) == []


# ---------------------------------------------------------------- classifiers and figures


@pytest.mark.parametrize("arch", ["mlp", "cnn", "lenet5", "fastcnn"])
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
    assert len(result.history) == 1 and np.isfinite(result.history[0]["train_loss"])


def test_figures_show_colour(cifar: Path, tmp_path: Path) -> None:
    images, labels = read_raw(cifar, train=True, dataset="cifar10")
    split = Split(normalize(images), labels)
    grid = grid_image(split.images[:1], nrow=1, scale=1, padding=0)
    assert grid.shape == (3, 32, 32) and torch.equal(grid[:, 0, 0], torch.tensor([1, 0, 128 / 255]))
    save_grid(class_rows(split, per_class=3), tmp_path / "examples.png", nrow=3)
    with Image.open(tmp_path / "examples.png") as png:
        assert png.mode == "RGB" and png.size == (3 * 66 + 2, 10 * 66 + 2)
        assert png.getpixel((2 + 10, 2 + 10)) == (255, 0, 128)  # the red image, class 0 first
    labelled_grid(split.images[:3], ["a", "b", "c"], tmp_path / "mistakes.png", "colour")
    assert (tmp_path / "mistakes.png").stat().st_size > 1000


# ---------------------------------------------------------------- params and the GAN


def test_params_accept_cifar10_and_bound_its_validation_split() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"]["dataset"] = "cifar10"
    assert parse_params(raw).data.dataset == "cifar10"
    raw["data"]["val_size"] = 45_000
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    assert str(info.value) == (
        "params.yaml: data.val_size = 45000 is not allowed: cifar10 has 50,000 training images; "
        "at most 40,000 for validation leaves 10,000 to train on"
    )


def test_check_gan_dataset_refuses_cifar10_only() -> None:
    for dataset in ("mnist", "fashion_mnist"):
        check_gan_dataset(repo_params(**{"data.dataset": dataset}))
    message = one_line_error(check_gan_dataset, repo_params(**{"data.dataset": "cifar10"}))
    assert message == (
        "data.dataset is cifar10: the GAN makes 1×28×28 images; set data.dataset to mnist or "
        "fashion_mnist (or run only the classifier stages: dvc repro evaluate)"
    )


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
