"""The prepared data: raw images normalized to [0, 1], a seeded stratified validation split,
and the tensor files every training and evaluation stage reads."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch

from digitlab.errors import DigitlabError
from digitlab.files import atomic_dir

SPLITS = ("train", "val", "test")
CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion_mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
    "cifar10": [
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ],
}  # fmt: skip


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 N×28×28 (or N×C×H×W) → float32 N×1×28×28 (N×C×H×W) in [0, 1] (pixel / 255, as
    the labs do)."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    return images.float().div_(255.0)


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
    """One prepared split: images float32 N×C×H×W (N×1×28×28, CIFAR-10 N×3×32×32) in [0, 1]
    and labels int64 N."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def of_digits(self, digits: list[int]) -> Split:
        """The images whose label is one of `digits`."""
        keep = torch.isin(self.labels, torch.tensor(digits))
        return Split(self.images[keep], self.labels[keep])


def save_split(split: Split, path: Path) -> None:
    """Save a split as one torch file (contiguous tensors, loadable with mmap), serialized in
    memory first so that a failed write is an OSError naming the file."""
    buffer = io.BytesIO()
    torch.save({"images": split.images.contiguous(), "labels": split.labels.contiguous()}, buffer)
    Path(path).write_bytes(buffer.getvalue())


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


Images = tuple[torch.Tensor, torch.Tensor]  # uint8 images and int64 labels of one split


def prepare(
    dataset: str, train: Images, test: Images, out_dir: Path, val_size: int, seed: int
) -> dict:
    """Normalize the raw images (raw.read_verified), split train/val, write
    out_dir/{train,val,test}.pt atomically. Returns the data summary (per split: count,
    per-class counts, mean, std)."""
    train_images, train_labels = train
    train_idx, val_idx = stratified_split(train_labels, val_size, seed)
    official = Split(normalize(train_images), train_labels)
    splits = {
        "train": Split(official.images[train_idx], train_labels[train_idx]),
        "val": Split(official.images[val_idx], train_labels[val_idx]),
        "test": Split(normalize(test[0]), test[1]),
    }
    with atomic_dir(out_dir) as staging:
        for name, split in splits.items():
            save_split(split, staging / f"{name}.pt")
    summary = {"dataset": dataset, **{name: split_stats(s) for name, s in splits.items()}}
    summary["official_train"] = {k: v for k, v in split_stats(official).items() if k != "per_class"}
    return summary
