"""The spread of a test metric over seed replicates: mean, standard deviation, 95% confidence interval."""

import math
from collections.abc import Sequence

from scipy import stats

STATISTICS = ("mean", "std", "ci95_low", "ci95_high")


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """The mean, the sample standard deviation (n - 1) and the 95% confidence interval of the mean (Student's t
    with n - 1 degrees of freedom: a handful of seeds is far from a normal sample). None for a single value:
    one seed has no spread, and an interval drawn from it would be made up."""
    n = len(values)
    if n < 2:
        return None
    if all(value == values[0] for value in values):  # seeds that agree exactly: no spread, and no rounding of it
        return dict(zip(STATISTICS, (values[0], 0.0, values[0], values[0]), strict=True))
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((value - mean) ** 2 for value in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return dict(zip(STATISTICS, (mean, std, mean - half, mean + half), strict=True))
