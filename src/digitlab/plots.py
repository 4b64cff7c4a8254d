"""Figures: sample grids (torch and PIL) and matplotlib charts in seaborn's look (its
whitegrid and deep styles, which matplotlib ships), one consistent style. Neither seaborn nor
torchvision is imported: a stage that plots starts a second or more sooner without them."""

from __future__ import annotations

import math
from itertools import product
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from digitlab.data import Split
from digitlab.files import atomic_dir, atomic_path


def grid_image(images: torch.Tensor, nrow: int, scale: int = 2, padding: int = 2) -> torch.Tensor:
    """Tile N×1×28×28 (or N×3×32×32 colour) images in [0, 1] into one 3×H×W image, `nrow` per
    row, scaled up without blur, on a grey ground (as torchvision's make_grid does)."""
    images = images.detach().float().cpu().clamp(0, 1)
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    count, _, height, width = images.shape
    columns = max(min(nrow, count), 1)
    rows = math.ceil(count / columns)
    step_y, step_x = height + padding, width + padding
    grid = torch.full((3, rows * step_y + padding, columns * step_x + padding), 0.5)
    for k, image in enumerate(images):
        y, x = divmod(k, columns)
        top, left = y * step_y + padding, x * step_x + padding
        grid[:, top : top + height, left : left + width] = image
    return grid


def save_grid(images: torch.Tensor, path: str | Path, nrow: int, scale: int = 2) -> None:
    """Write a PNG grid of images atomically (RGB, each value rounded to the nearest of 256)."""
    from PIL import Image

    grid = grid_image(images, nrow, scale)
    pixels = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="png")


def save_snapshots(snapshots: list[tuple[int, torch.Tensor]], folder: str | Path) -> None:
    """The fixed-noise grids of training, one PNG per snapshot (step_<G step>.png), swapped in
    as one folder."""
    with atomic_dir(folder) as staging:
        for step, images in snapshots:
            save_grid(images, staging / f"step_{step:06d}.png", nrow=10)


def class_rows(split: Split, per_class: int = 10, classes: list[int] | None = None) -> torch.Tensor:
    """The first `per_class` images of each class, class by class (one grid row per class)."""
    rows = [split.images[split.labels == c][:per_class] for c in classes or range(10)]
    return torch.cat(rows)


def samples_grid(
    samples: torch.Tensor, requested: torch.Tensor | None, digits: list[int]
) -> torch.Tensor:
    """The 100 samples of the sample grid: the first, or ten of each digit asked for (one row
    per digit) from a conditional generator."""
    if requested is None:
        return samples[:100]
    return class_rows(Split(samples, requested), 10, digits)


# ---------------------------------------------------------------- charts

STYLE = ["seaborn-v0_8-whitegrid", "seaborn-v0_8-deep", "seaborn-v0_8-notebook"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.style.use(STYLE)
    return plt


def _figure(ncols: int = 1, width: float = 6.0, height: float = 4.5):
    return _pyplot().subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)


def _colors() -> list[str]:
    return _pyplot().rcParams["axes.prop_cycle"].by_key()["color"]


def save_figure(fig, path: str | Path) -> None:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def training_curves(history: pd.DataFrame, path: str | Path, title: str) -> None:
    """Loss and accuracy per epoch, train vs validation."""
    fig, axes = _figure(ncols=2, width=5.5)
    for ax, metric, label in ((axes[0, 0], "loss", "Loss"), (axes[0, 1], "acc", "Accuracy")):
        for split in ("train", "val"):
            ax.plot(history["epoch"], history[f"{split}_{metric}"], marker="o", label=split)
        ax.set(xlabel="Epoch", ylabel=label, title=f"{label} per epoch")
        ax.legend(title="split")
    fig.suptitle(title)
    save_figure(fig, path)


def confusion_heatmap(confusion: torch.Tensor, path: str | Path, labels: list[str]) -> None:
    """The 10×10 confusion matrix, counts annotated, rows true and columns predicted."""
    fig, axes = _figure(width=7.5, height=6.5)
    ax, counts = axes[0, 0], confusion.numpy()
    ax.imshow(counts, cmap="Blues", aspect="auto")
    ax.grid(False)
    for (row, column), count in zip(product(*map(range, counts.shape)), counts.flat, strict=True):
        dark = count > counts.max() / 2
        ax.text(column, row, f"{count:d}", ha="center", va="center",
                color="white" if dark else "black", fontsize=9)  # fmt: skip
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=90 if max(map(len, labels)) > 2 else 0)
    ax.set_yticks(ticks, labels)
    ax.set(xlabel="Predicted", ylabel="True", title="Confusion matrix (test set)")
    save_figure(fig, path)


def breakdown_bars(table: pd.DataFrame, path: str | Path) -> None:
    """False positives (other digits called the chosen one) and false negatives (the chosen
    digit called another), per other digit; one panel per chosen digit, five to a row."""
    digits = list(dict.fromkeys(table["digit"]))
    columns = min(5, len(digits))
    rows = math.ceil(len(digits) / columns)
    plt = _pyplot()
    fig, axes = plt.subplots(rows, columns, figsize=(4.16 * columns, 3.2 * rows),
                             squeeze=False, sharey=True)  # fmt: skip
    kinds = {"false_positives": "other digit called chosen (FP)",
             "false_negatives": "chosen digit called other (FN)"}  # fmt: skip
    for ax in axes.flat[len(digits) :]:
        ax.axis("off")
    for ax, digit in zip(axes.flat, digits, strict=False):
        rows_of = table[table["digit"] == digit]
        places = range(len(rows_of))
        for shift, (kind, label), color in zip((-0.2, 0.2), kinds.items(), _colors(), strict=False):
            ax.bar([p + shift for p in places], rows_of[kind], width=0.4, label=label, color=color)
        ax.set_xticks(places, [str(o) for o in rows_of["other"]])
        ax.set(xlabel="Other digit", title=f"Mistakes involving digit {digit}")
    for ax in axes[:, 0]:
        ax.set_ylabel("Test images")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2,
               frameon=False)  # fmt: skip
    save_figure(fig, path)


def labelled_grid(
    images: torch.Tensor, labels: list[str], path: str | Path, title: str, ncols: int = 8
) -> None:
    """Images (1 channel: grey, 3: colour) with a caption each (nearest-neighbour, no blur)."""
    plt = _pyplot()
    n = max(len(images), 1)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.4 * ncols, 1.6 * nrows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, images, labels, strict=False):
        pixels = image.permute(1, 2, 0) if image.shape[0] == 3 else image.squeeze(0)
        ax.imshow(pixels.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(label, fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)


def mistakes_grid(
    images: torch.Tensor,
    true: torch.Tensor,
    probs: torch.Tensor,
    names: list[str],
    path: str | Path,
) -> None:
    """Mistakes, each captioned true → predicted and the probability given to the latter."""
    predicted = probs.argmax(1)
    captions = [
        f"{names[t]} → {names[p]}\np={row[p]:.2f}"
        for t, p, row in zip(true.tolist(), predicted.tolist(), probs, strict=True)
    ]
    title = f"The {len(images)} most confident mistakes (true → predicted)"
    labelled_grid(images, captions, path, title)


def gan_curves(history: pd.DataFrame, path: str | Path) -> None:
    """D and G loss, and D(x) / D(G(z)), against generator steps."""
    fig, axes = _figure(ncols=2, width=5.5)
    for column, label in (("d_loss", "discriminator"), ("g_loss", "generator")):
        axes[0, 0].plot(history["step"], history[column], label=label)
    axes[0, 0].set(xlabel="Generator step", ylabel="BCE loss", title="GAN losses")
    axes[0, 0].legend(title="network")
    for column, label in (("d_real", "D(x), real"), ("d_fake", "D(G(z)), fake")):
        axes[0, 1].plot(history["step"], history[column], label=label)
    axes[0, 1].set(
        xlabel="Generator step", ylabel="Mean D output", title="Discriminator outputs", ylim=(0, 1)
    )
    axes[0, 1].legend(title="input")
    save_figure(fig, path)


def class_histogram_bars(counts: dict[str, int], labels: list[str], path: str | Path) -> None:
    """How many generated images the classifier assigns to each class."""
    fig, axes = _figure(width=6.5, height=4)
    samples = [counts[str(i)] for i in range(len(labels))]
    axes[0, 0].bar(labels, samples, color=_colors()[0])
    axes[0, 0].set(
        xlabel="Class the classifier predicts",
        ylabel="Generated images",
        title="What the generator makes, as the classifier sees it",
    )
    save_figure(fig, path)
