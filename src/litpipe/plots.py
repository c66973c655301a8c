"""Matplotlib, headless, written atomically; and the drawing that the analysis and the report share."""

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba_array
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.image import AxesImage
from matplotlib.textpath import TextToPath
from numpy.typing import ArrayLike

from litpipe.io import atomic_path

if TYPE_CHECKING:
    import pandas as pd

# Headless (Agg) in the pipeline's processes. A Jupyter kernel's inline backend is kept: the report
# notebook imports this module, and under Agg its figures would not be shown.
if "inline" not in os.environ.get("MPLBACKEND", ""):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def figure(width: float = 6.0, height: float = 4.0) -> Figure:
    return plt.figure(figsize=(width, height), layout="constrained")


def save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=100)
    plt.close(fig)


def show_image(ax: Axes, image: ArrayLike, pixel_max: float) -> AxesImage:
    """Draw a uint8 C x H x W image (a prepared sample) on `ax`: one channel as dark ink on white, three
    as RGB. `pixel_max` is the data's full scale (meta.json's), not always 255: the digits go up to 16."""
    pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[0] not in (1, 3):
        raise ValueError(f"an image is C x H x W with C = 1 or 3, not shape {pixels.shape}")
    if pixels.shape[0] == 1:
        return ax.imshow(pixels[0], cmap="gray_r", vmin=0, vmax=pixel_max)
    return ax.imshow(np.moveaxis(pixels, 0, -1) / pixel_max)  # imshow takes float RGB in 0..1


def text_width(labels: Iterable[str], fontsize: float) -> float:
    """Width in inches of the widest of `labels` as drawn (no mathtext): to size figures around class names."""
    font = FontProperties(size=fontsize)
    widths = [TextToPath().get_text_width_height_descent(label, font, ismath=False)[0] for label in labels]
    return max(widths, default=0.0) / 72  # points to inches


def shorten(label: str, width: float, fontsize: float) -> str:
    """`label`, cut to `width` inches at `fontsize` and ended with an ellipsis where it is wider."""
    ellipsis = "\N{HORIZONTAL ELLIPSIS}"
    if text_width([label], fontsize) <= width:
        return label
    while label and text_width([label + ellipsis], fontsize) > width:
        label = label[:-1]
    return label + ellipsis


def class_colors(count: int) -> np.ndarray:
    """One RGBA colour per class, distinct as far as a palette allows: tab10, tab20, else a continuous map."""
    if count <= 10:
        return to_rgba_array(plt.get_cmap("tab10").colors[:count])
    if count <= 20:
        return to_rgba_array(plt.get_cmap("tab20").colors[:count])
    return plt.get_cmap("turbo")(np.linspace(0, 1, count))


def examples_per_class(
    x: np.ndarray, y: np.ndarray, class_names: list[str], pixel_max: float, examples: int = 6
) -> Figure:
    """The first `examples` images (N x C x H x W) of each class, a row per class with its name on the left:
    one name per row stays readable however long it is and however many classes there are."""
    cell = 0.7  # inches per image
    fig = figure(examples * cell + text_width(class_names, 8) + 0.3, len(class_names) * cell + 0.4)
    rows = fig.subplots(len(class_names), examples, squeeze=False)
    for label, (name, row) in enumerate(zip(class_names, rows)):
        for ax, index in zip(row, np.flatnonzero(y == label)[:examples]):
            show_image(ax, x[index], pixel_max)
        for ax in row:  # images only, no frame: a class short of examples leaves blank cells
            ax.set(xticks=[], yticks=[])
            ax.spines[:].set_visible(False)
        row[0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8, parse_math=False)
    fig.suptitle("Training examples per class")
    return fig


def replicates_figure(
    seeds: "pd.DataFrame", spread: dict[str, float], histories: dict[int, "pd.DataFrame"], metric: str = "accuracy"
) -> Figure:
    """The spread over seed replicates: each seed's test `metric` (a column of seeds.csv: accuracy, rmse) with the
    mean and its 95% confidence interval (`spread`, from litpipe.spread), and each seed's validation loss per
    epoch."""
    fig = figure(10, 3.8)
    acc_ax, loss_ax = fig.subplots(1, 2)
    positions = np.arange(len(seeds))
    acc_ax.axhspan(spread["ci95_low"], spread["ci95_high"], color="tab:blue", alpha=0.15, label="95% CI of the mean")
    acc_ax.axhline(spread["mean"], color="tab:blue", label=f"mean {spread['mean']:.4f}")
    acc_ax.scatter(positions, seeds[metric], color="black", zorder=3, label="one seed")
    acc_ax.set_xticks(positions, [f"seed {seed}" for seed in seeds["seed"]])
    acc_ax.set_xlim(-0.5, len(seeds) - 0.5)
    name = "RMSE" if metric == "rmse" else metric
    acc_ax.set(ylabel=f"test {name}", title=f"Test {name} over {len(seeds)} seeds")
    acc_ax.legend(fontsize=8)
    for seed, history in histories.items():
        loss_ax.plot(history["epoch"] + 1, history["val/loss"], label=f"seed {seed}")
    loss_ax.set(xlabel="epoch", ylabel="validation loss", yscale="log", title="Validation loss of each seed's fit")
    loss_ax.legend(fontsize=8)
    return fig


# Each task's score (models/tasks.py): its title, its axis, and the loss's axis.
SCORES = {
    "acc": ("Accuracy", "accuracy", "cross-entropy"),
    "rmse": ("RMSE", "RMSE (the target's units)", "loss (standardised target)"),
}


def training_curves(
    table: "pd.DataFrame", best_epoch: int, best_loss: float, swa_start: int, score: str = "acc"
) -> Figure:
    """A fit's loss and score (accuracy, or RMSE) per epoch (its history.csv), train and validation, with the epoch
    of the lowest validation loss and where weight averaging starts."""
    fig = figure(10, 4)
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = table["epoch"] + 1  # counted from 1, as the logs count them
    for split in ("train", "val"):
        loss_ax.plot(epochs, table[f"{split}/loss"], label=split)
        acc_ax.plot(epochs, table[f"{split}/{score}"], label=split)
    loss_ax.scatter([best_epoch + 1], [best_loss], color="tab:red", zorder=3, label="lowest val/loss")
    for ax in (loss_ax, acc_ax):
        # The average takes epoch swa_start + 1's weights (counted from 1) before that epoch's validation.
        ax.axvline(swa_start + 0.5, color="grey", linestyle=":", label="averaging starts")
        ax.set_xlabel("epoch")
        ax.legend()
    title, axis, loss = SCORES[score]
    loss_ax.set(ylabel=loss, title="Loss", yscale="log")
    acc_ax.set(ylabel=axis, title=title)
    return fig
