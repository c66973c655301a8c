"""The two kinds of uncertainty litpipe reports: the paired difference of two runs over seeds (spread.py, what
`litpipe compare` tests), checked against SciPy's tests and exact values; and the test split's own interval
(sampling.py), checked against Newcombe's published Wilson intervals and SciPy's bootstrap."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from litpipe import sampling
from litpipe.compare import Run, compare, described, verdict
from litpipe.errors import StageError
from litpipe.models import tasks
from litpipe.spread import WILCOXON_SEEDS, paired_difference


@pytest.mark.parametrize("seeds", [2, 3, 5, 8])
def test_the_paired_difference_matches_scipys_paired_t_test(seeds):
    generator = np.random.default_rng(seeds)
    a = generator.normal(0.95, 0.01, seeds)
    b = a + generator.normal(0.004, 0.003, seeds)
    difference = paired_difference(a.tolist(), b.tolist())
    reference = stats.ttest_rel(b, a)
    interval = reference.confidence_interval(0.95)
    assert difference.seeds == seeds
    assert difference.mean == pytest.approx(float(np.mean(b - a)), rel=1e-12)
    assert difference.t_test_p == pytest.approx(reference.pvalue, rel=1e-9)
    assert (difference.ci95_low, difference.ci95_high) == pytest.approx((interval.low, interval.high), rel=1e-9)
    assert (difference.wilcoxon_p is None) == (seeds < WILCOXON_SEEDS)


def test_the_wilcoxon_test_gives_its_exact_values():
    """Six differences of one sign: the exact two-sided p is 2 / 2**6 (only all-positive and all-negative signs are
    as extreme); with one of the six negative and smallest in size, 4 / 2**6 (ranks sum 1 or less: 2 of the 64
    sign patterns, on each side)."""
    a = [0.90, 0.91, 0.92, 0.93, 0.94, 0.95]
    assert paired_difference(a, [x + d for x, d in zip(a, [0.01, 0.02, 0.03, 0.04, 0.05, 0.06])]).wilcoxon_p == (
        pytest.approx(2 / 64)
    )
    assert paired_difference(a, [x + d for x, d in zip(a, [-0.005, 0.02, 0.03, 0.04, 0.05, 0.06])]).wilcoxon_p == (
        pytest.approx(4 / 64)
    )


def test_seeds_that_agree_exactly_are_no_difference_and_one_seed_is_too_few():
    """Also the same difference on every seed (one test image more, say): no spread to test, so no interval and
    no p-value rather than a zero-width interval and p = 0 shown as certainty."""
    steps = paired_difference([0.5, 0.25, 0.75], [0.625, 0.375, 0.875])  # exact in binary: the same 0.125
    assert steps.constant and steps.ci95_low is None and steps.t_test_p is None and steps.mean == 0.125
    assert verdict("accuracy", steps) == "the same difference on every seed: no spread to test"
    same = paired_difference([0.98, 0.97, 0.99], [0.98, 0.97, 0.99])
    assert (
        same.identical and same.t_test_p == 1.0 and verdict("accuracy", same) == "no difference: the same on every seed"
    )
    one = paired_difference([0.98], [0.99])
    assert one.ci95_low is None and one.t_test_p is None and verdict("accuracy", one) == "too few seeds to tell"


@pytest.mark.parametrize(
    ("name", "shift", "expected"),
    [("accuracy", 0.01, "B higher: better"), ("accuracy", -0.01, "B lower: worse"), ("loss", 0.01, "B higher: worse")],
)
def test_the_verdict_knows_which_way_is_better(name, shift, expected):
    a = [0.90, 0.91, 0.92, 0.93]
    difference = paired_difference(a, [x + shift + 0.001 * i for i, x in enumerate(a)])
    assert verdict(name, difference) == expected


def run_of(name: str, seeds: dict[int, float]) -> Run:
    frame = pd.DataFrame({"seed": list(seeds), "accuracy": list(seeds.values())})
    return Run(
        name,
        frame,
        {"accuracy": next(iter(seeds.values())), "accuracy_split_ci95_low": 0.9, "accuracy_split_ci95_high": 0.99},
    )


def test_compare_pairs_by_seed_and_names_the_seeds_left_out():
    a = run_of("a", {0: 0.95, 1: 0.96, 2: 0.97, 5: 0.5})
    b = run_of("b", {2: 0.98, 0: 0.97, 1: 0.97, 7: 0.1})  # another order, and a seed of its own
    comparison = compare(a, b)
    assert comparison.seeds == [0, 1, 2] and comparison.left_out == [5, 7]
    assert comparison.differences["accuracy"].mean == pytest.approx((0.02 + 0.01 + 0.01) / 3)
    text = "\n".join(described(comparison))
    assert "paired over 3 seeds (0, 1, 2)" in text and "seeds 5, 7 are in one run only" in text
    assert "accuracy 0.9500 [0.9000, 0.9900]" in text  # A's test split interval, beside the comparison


def test_runs_without_a_seed_in_common_are_one_line_not_a_comparison():
    with pytest.raises(StageError, match=r"^a \(seeds 0\) and b \(seeds 1, 2\) share no seed to pair$"):
        compare(run_of("a", {0: 0.9}), run_of("b", {1: 0.9, 2: 0.8}))


def test_wilson_intervals_match_newcombes_published_values():
    """Newcombe (1998), Statistics in Medicine 17:857, table I: 81/263 and 15/148, and 0/20 (Wilson, no
    continuity correction)."""
    assert sampling.wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    assert sampling.wilson(15, 148) == pytest.approx((0.0624, 0.1605), abs=5e-5)
    assert sampling.wilson(0, 20) == pytest.approx((0.0, 0.1611), abs=5e-5)


def test_the_bootstrap_matches_scipys_percentile_bootstrap():
    """RMSE and R² of noisy predictions: the interval of each within Monte Carlo error of SciPy's own
    percentile bootstrap (another generator, so not equal), and around the number the whole split gives."""
    generator = np.random.default_rng(3)
    actual = generator.normal(50, 10, 400)
    predicted = actual + generator.normal(0, 4, 400)
    task = tasks.Regression(mean=50.0, std=10.0)
    outputs = torch.as_tensor((predicted - 50) / 10, dtype=torch.float32)[:, None]
    found = sampling.intervals(task, outputs, torch.as_tensor(actual))

    def rmse(p, a, axis=-1):
        return np.sqrt(np.mean((p - a) ** 2, axis=axis))

    def r2(p, a, axis=-1):
        return 1 - np.sum((p - a) ** 2, axis=axis) / np.sum((a - a.mean(axis=axis, keepdims=True)) ** 2, axis=axis)

    predicted32 = task.predict(outputs).double().numpy()
    for name, statistic in (("rmse", rmse), ("r2", r2)):
        reference = stats.bootstrap(
            (predicted32, actual), statistic, paired=True, method="percentile", n_resamples=4000, random_state=1
        ).confidence_interval
        width = reference.high - reference.low
        assert found[name] == pytest.approx((reference.low, reference.high), abs=0.1 * width), name
        assert found[name][0] < statistic(predicted32, actual) < found[name][1]
    assert found["mae"][0] < np.mean(np.abs(predicted32 - actual)) < found["mae"][1]


def test_the_accuracy_interval_is_wilsons_and_the_loss_interval_holds_the_mean_loss():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(360, 10, generator=generator)
    y = logits.argmax(dim=1)
    y[:40] = (y[:40] + 1) % 10  # 320 of 360 right
    found = sampling.intervals(tasks.Classification(), logits, y)
    assert found["accuracy"] == pytest.approx(sampling.wilson(320, 360))
    mean_loss = float(torch.nn.functional.cross_entropy(logits, y))
    assert found["loss"][0] < mean_loss < found["loss"][1]
    assert not math.isclose(*found["loss"])
