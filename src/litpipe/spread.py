"""The spread of a test metric over seed replicates: mean, standard deviation, 95% confidence interval; and the
paired difference of two configurations trained with the same seeds."""

import math
from collections.abc import Sequence
from dataclasses import dataclass

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


WILCOXON_SEEDS = 6  # below this, no paired difference can reach p < 0.05 in the signed-rank test (2 / 2**5)


@dataclass(frozen=True)
class Difference:
    """B - A over paired seeds: its mean, the 95% confidence interval of that mean (Student's t), a paired
    t-test's p-value and, from WILCOXON_SEEDS seeds on, the Wilcoxon signed-rank test's. None where the seeds
    are too few to give it, and where every seed gave the same difference (no spread: not a certainty)."""

    seeds: int
    mean: float
    ci95_low: float | None
    ci95_high: float | None
    t_test_p: float | None
    wilcoxon_p: float | None

    identical: bool = False  # every seed gave A and B the same number
    constant: bool = False  # every seed gave B - A the same number: no spread to test, not a certain difference


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Difference:
    """B - A, seed by seed (a[i] and b[i] come from the same seed): a seed's own luck (its initial weights, its
    batch order) is shared by both, so the seed-to-seed spread cancels and a smaller difference shows."""
    differences = [y - x for x, y in zip(a, b, strict=True)]
    n = len(differences)
    mean = math.fsum(differences) / n
    if n < 2:
        return Difference(n, mean, None, None, None, None)
    if all(d == 0 for d in differences):
        return Difference(n, 0.0, 0.0, 0.0, 1.0, 1.0 if n >= WILCOXON_SEEDS else None, identical=True)
    wilcoxon_p = float(stats.wilcoxon(differences).pvalue) if n >= WILCOXON_SEEDS else None
    if all(d == differences[0] for d in differences):  # on a finite test split, a step of one sample, say
        return Difference(n, mean, None, None, None, wilcoxon_p, constant=True)
    std = math.sqrt(math.fsum((d - mean) ** 2 for d in differences) / (n - 1))
    error = std / math.sqrt(n)
    half = float(stats.t.ppf(0.975, n - 1)) * error
    t_test_p = float(2 * stats.t.sf(abs(mean) / error, n - 1))
    return Difference(n, mean, mean - half, mean + half, t_test_p, wilcoxon_p)
