"""Figures: sample grids (torchvision.utils) and seaborn charts, one consistent style."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from digitlab.data import Split
from digitlab.files import atomic_dir, atomic_path


def grid_image(images: torch.Tensor, nrow: int, scale: int = 2, padding: int = 2) -> torch.Tensor:
    """Tile N×1×28×28 (or N×3×32×32 colour) images in [0, 1] into one 3×H×W image, scaled up
    without blur."""
    from torchvision.utils import make_grid

    images = images.detach().float().cpu().clamp(0, 1)
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    return make_grid(images, nrow=nrow, padding=padding, pad_value=0.5)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int, scale: int = 2) -> None:
    """Write a PNG grid of images atomically."""
    from torchvision.utils import save_image

    with atomic_path(path) as tmp:
        save_image(grid_image(images, nrow, scale), tmp, format="png")


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


# ---------------------------------------------------------------- seaborn figures

STYLE = {"style": "whitegrid", "context": "notebook", "palette": "deep"}


def _figure(ncols: int = 1, width: float = 6.0, height: float = 4.5):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(**STYLE)
    return plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)


def save_figure(fig, path: str | Path) -> None:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def training_curves(history: pd.DataFrame, path: str | Path, title: str) -> None:
    """Loss and accuracy per epoch, train vs validation."""
    import seaborn as sns

    fig, axes = _figure(ncols=2, width=5.5)
    for ax, metric, label in ((axes[0, 0], "loss", "Loss"), (axes[0, 1], "acc", "Accuracy")):
        long = history.melt("epoch", [f"train_{metric}", f"val_{metric}"], "split", label)
        long["split"] = long["split"].str.removesuffix(f"_{metric}")
        sns.lineplot(long, x="epoch", y=label, hue="split", marker="o", ax=ax)
        ax.set(xlabel="Epoch", ylabel=label, title=f"{label} per epoch")
    fig.suptitle(title)
    save_figure(fig, path)


def confusion_heatmap(confusion: torch.Tensor, path: str | Path, labels: list[str]) -> None:
    """The 10×10 confusion matrix, counts annotated, rows true and columns predicted."""
    import seaborn as sns

    fig, axes = _figure(width=7.5, height=6.5)
    frame = pd.DataFrame(confusion.numpy(), index=labels, columns=labels)
    sns.heatmap(frame, annot=True, fmt="d", cmap="Blues", cbar=False, ax=axes[0, 0])
    axes[0, 0].set(xlabel="Predicted", ylabel="True", title="Confusion matrix (test set)")
    save_figure(fig, path)


def breakdown_bars(table: pd.DataFrame, path: str | Path) -> None:
    """False positives (other digits called the chosen one) and false negatives (the chosen
    digit called another), per other digit; one row of panels per chosen digit."""
    import seaborn as sns

    long = table.melt(["digit", "other"], ["false_positives", "false_negatives"], "kind", "count")
    long["kind"] = long["kind"].map(
        {
            "false_positives": "other digit called chosen (FP)",
            "false_negatives": "chosen digit called other (FN)",
        }
    )
    grid = sns.catplot(
        long,
        x="other",
        y="count",
        hue="kind",
        col="digit",
        col_wrap=min(5, table["digit"].nunique()),
        kind="bar",
        height=3.2,
        aspect=1.3,
        legend_out=True,
    )
    grid.set_axis_labels("Other digit", "Test images")
    grid.set_titles("Mistakes involving digit {col_name}")
    sns.move_legend(
        grid, "upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, title=None, frameon=False
    )
    save_figure(grid.figure, path)


def labelled_grid(
    images: torch.Tensor, labels: list[str], path: str | Path, title: str, ncols: int = 8
) -> None:
    """Images (1 channel: grey, 3: colour) with a caption each (nearest-neighbour, no blur)."""
    import matplotlib.pyplot as plt

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
    import seaborn as sns

    fig, axes = _figure(ncols=2, width=5.5)
    losses = history.melt("step", ["d_loss", "g_loss"], "network", "loss")
    losses["network"] = losses["network"].map({"d_loss": "discriminator", "g_loss": "generator"})
    sns.lineplot(losses, x="step", y="loss", hue="network", ax=axes[0, 0])
    axes[0, 0].set(xlabel="Generator step", ylabel="BCE loss", title="GAN losses")
    probs = history.melt("step", ["d_real", "d_fake"], "input", "probability")
    probs["input"] = probs["input"].map({"d_real": "D(x), real", "d_fake": "D(G(z)), fake"})
    sns.lineplot(probs, x="step", y="probability", hue="input", ax=axes[0, 1])
    axes[0, 1].set(
        xlabel="Generator step", ylabel="Mean D output", title="Discriminator outputs", ylim=(0, 1)
    )
    save_figure(fig, path)


def class_histogram_bars(counts: dict[str, int], labels: list[str], path: str | Path) -> None:
    """How many generated images the classifier assigns to each class."""
    import seaborn as sns

    fig, axes = _figure(width=6.5, height=4)
    frame = pd.DataFrame({"class": labels, "samples": [counts[str(i)] for i in range(len(labels))]})
    sns.barplot(frame, x="class", y="samples", color=sns.color_palette()[0], ax=axes[0, 0])
    axes[0, 0].set(
        xlabel="Class the classifier predicts",
        ylabel="Generated images",
        title="What the generator makes, as the classifier sees it",
    )
    save_figure(fig, path)
