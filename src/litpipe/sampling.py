"""The test split's own sampling error: the 95% interval of a model's test metric over the test samples drawn.

A finite test split measures a model's metric with an error of its own, beside the spread of training over seeds
(spread.py): on 360 images one image is 0.28 points of accuracy. Accuracy is a proportion, so its interval is
Wilson's score interval (right near 0 and 1, where the normal approximation is not). Every other metric is a
function of per-sample means (the loss; squared and absolute errors, and the target's moments for R²), so its
interval is a percentile bootstrap over test samples: the samples drawn again with replacement, RESAMPLES times,
from a fixed seed, so the same model gives the same interval.
"""

from collections.abc import Callable

import numpy as np
import torch
from scipy import stats

from litpipe.models import tasks

RESAMPLES = 2000
CHUNK = 200  # resamples at a time: a chunk's counts are CHUNK x samples numbers
SEED = 0


def wilson(successes: int, samples: int) -> tuple[float, float]:
    """Wilson's 95% score interval of the proportion successes / samples."""
    interval = stats.binomtest(successes, samples).proportion_ci(0.95, method="wilson")
    return float(interval.low), float(interval.high)


def bootstrap(columns: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray]) -> tuple[float, float]:
    """The 95% percentile bootstrap interval of `statistic`, a function of the means of the per-sample `columns`
    (samples x columns) that takes a (resamples x columns) array of them."""
    samples = len(columns)
    generator = np.random.default_rng(SEED)
    found = []
    for start in range(0, RESAMPLES, CHUNK):
        counts = generator.multinomial(samples, np.full(samples, 1 / samples), size=min(CHUNK, RESAMPLES - start))
        with np.errstate(divide="ignore", invalid="ignore"):  # R² of a resample whose target is constant: NaN
            found.append(statistic(counts @ columns / samples))
    low, high = np.nanpercentile(np.concatenate(found), [2.5, 97.5])
    return float(low), float(high)


def intervals(task: tasks.Task, outputs: torch.Tensor, y: torch.Tensor) -> dict[str, tuple[float, float]]:
    """The 95% interval of each metric the test stage reports (task.reported) over the test split, for a model's
    network `outputs` on the split's targets `y`."""
    losses = task.losses(outputs, y).double().numpy()
    if task.name == tasks.CLASSIFICATION:
        correct = int((outputs.argmax(dim=1) == y).sum())
        return {"accuracy": wilson(correct, len(y)), "loss": bootstrap(losses[:, None], lambda means: means[:, 0])}
    actual = y.double().numpy()
    error = task.predict(outputs).double().numpy() - actual
    centred = actual - actual.mean()  # R²'s total sum of squares, from moments that stay accurate at any scale
    columns = np.stack([losses, error**2, np.abs(error), centred, centred**2], axis=1)
    statistics = {
        "rmse": lambda means: np.sqrt(means[:, 1]),
        "mae": lambda means: means[:, 2],
        "r2": lambda means: 1 - means[:, 1] / (means[:, 4] - means[:, 3] ** 2),
        "loss": lambda means: means[:, 0],
    }
    return {name: bootstrap(columns, statistic) for name, statistic in statistics.items()}
