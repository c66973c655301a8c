"""Matplotlib, headless, written atomically."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.figure import Figure  # noqa: E402

from litpipe.io import atomic_path  # noqa: E402


def figure(width: float = 6.0, height: float = 4.0) -> Figure:
    return plt.figure(figsize=(width, height), layout="constrained")


def save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=100)
    plt.close(fig)
