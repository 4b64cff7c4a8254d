"""The raw files read into tensors, once their checksums hold: MNIST's IDX files (a reader of
their few header bytes) and CIFAR-10's python-version batches (an unpickler that takes numpy
arrays only)."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import torch

from digitlab.errors import DigitlabError
from digitlab.raw import CIFAR_TRAIN, SourceError, verify_raw

# What a CIFAR-10 batch's pickle may name: numpy arrays (pickled by numpy 1 or 2), and the
# bytes of a protocol-2 pickle written by Python 3.
PICKLE_GLOBALS = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
                            ("numpy._core.multiarray", "_reconstruct"), ("numpy", "dtype"),
                            ("numpy.core.numeric", "_frombuffer"),  # pickle protocol 5
                            ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")})  # fmt: skip


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, lists, dicts, bytes and numbers, nothing else: a CIFAR-10 batch."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR-10 batch")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8 N×3×32×32) and labels (int64 N) of one CIFAR-10 python-version batch: a
    pickled dict whose b"data" is N×3072 uint8 (per row 1,024 red, 1,024 green, 1,024 blue
    pixels, row by row) and b"labels" N class numbers 0-9.

    A pickle can run code: fetch_raw (and prepare, again) verify each file's md5 before it is
    read, and only numpy arrays and plain values are unpickled. A truncated or malformed file
    fails with one line naming it.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            batch = _BatchUnpickler(fh, encoding="bytes").load()
    except Exception as exc:  # a damaged pickle raises EOFError, UnpicklingError, ValueError…
        raise DigitlabError(
            f"{path}: not a readable CIFAR-10 batch, truncated or damaged ({type(exc).__name__})"
        ) from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DigitlabError(f"{path}: not a CIFAR-10 batch (no b'data' and b'labels' in it)")
    try:
        data = torch.tensor(batch[b"data"])  # a copy: the unpickled array may be read-only
    except (TypeError, ValueError, RuntimeError):
        data = None
    if data is None or data.dtype != torch.uint8 or data.dim() != 2 or data.shape[1] != 3072:
        shape = tuple(data.shape) if data is not None else type(batch[b"data"]).__name__
        raise DigitlabError(f"{path}: b'data' is {shape}, expected N×3072 uint8 (3×32×32 images)")
    try:
        labels = torch.as_tensor(batch[b"labels"])
    except (TypeError, ValueError, RuntimeError):
        labels = torch.empty(0, dtype=torch.float32)
    if labels.shape != (len(data),) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DigitlabError(f"{path}: b'labels' are not {len(data):,} integers, one per image")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DigitlabError(f"{path}: labels {labels.min()}-{labels.max()} outside 0-9")
    return data.view(-1, 3, 32, 32), labels.long()


def read_raw(
    raw_dir: Path, train: bool, dataset: str = "mnist"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8 N×28×28; CIFAR-10: N×3×32×32) and labels (int64 N) of the official train
    or test split. Checksums are verified by fetch_raw and prepare, not here."""
    if dataset == "cifar10":
        names = CIFAR_TRAIN if train else ("test_batch",)
        parts = [read_cifar_batch(raw_dir / name) for name in names]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    prefix = "train" if train else "t10k"
    images = read_idx(raw_dir / f"{prefix}-images-idx3-ubyte", dims=3)
    labels = read_idx(raw_dir / f"{prefix}-labels-idx1-ubyte", dims=1)
    return images, labels.long()


def read_idx(path: Path, dims: int) -> torch.Tensor:
    """An IDX file of unsigned bytes with `dims` dimensions (MNIST's format: the magic number
    0x0000 08 <dims>, each size as a big-endian int32, then the bytes)."""
    raw = bytearray(path.read_bytes())
    header = 4 + 4 * dims
    if raw[:4] != bytes([0, 0, 8, dims]) or len(raw) < header:
        raise DigitlabError(f"{path}: not an IDX file of {dims}-dimensional unsigned bytes")
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    if len(raw) - header != math.prod(shape):
        raise DigitlabError(f"{path}: {len(raw) - header:,} bytes of data, not {shape}")
    return torch.frombuffer(raw, dtype=torch.uint8, offset=header).view(shape)


def read_verified(raw_dir: Path, dataset: str) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """(train images and labels, test images and labels) of `raw_dir`, once every file there
    has its checksum; else one line saying to fetch first."""
    try:
        verify_raw(dataset, raw_dir)
    except SourceError as exc:
        raise DigitlabError(f"{raw_dir}: {exc}; run `dvc repro fetch` first") from None
    return read_raw(raw_dir, train=True, dataset=dataset), read_raw(
        raw_dir, train=False, dataset=dataset
    )
