"""`litpipe compare A B`: is B better than A, or is the difference the luck of the seeds?

A and B are DVC experiments (names from `dvc exp show`), git revisions (HEAD, a branch, a commit) or `workspace`,
each with its test results (results/test/seeds.csv: a row per seed of replicates.seeds). Trained with the same
seeds, each seed's B - A cancels that seed's own luck (initial weights, batch order), so per metric the
comparison is the paired difference over the seeds both have, its 95% confidence interval, a paired t-test's
p-value and, from spread.WILCOXON_SEEDS seeds on, the Wilcoxon signed-rank test's. Beside them, each run's test
split's own 95% interval (sampling.py): what a finite test split can resolve at all.
"""

import argparse
import io
import json
import subprocess
import sys
from dataclasses import dataclass

import pandas as pd

from litpipe import paths
from litpipe.errors import StageError
from litpipe.spread import WILCOXON_SEEDS, Difference, paired_difference

WORKSPACE = "workspace"
HIGHER_IS_BETTER = {"accuracy", "r2"}  # the others (loss, RMSE, MAE) are errors: lower is better


@dataclass(frozen=True)
class Run:
    """One side of a comparison: its test numbers per seed and its results/test/metrics.json."""

    name: str
    seeds: pd.DataFrame  # the seed, then each test metric
    metrics: dict


@dataclass(frozen=True)
class Comparison:
    a: Run
    b: Run
    seeds: list[int]  # the seeds both have, in A's order: the pairs
    differences: dict[str, Difference]  # B - A per metric

    @property
    def left_out(self) -> list[int]:
        """The seeds only one of the two has: no pair."""
        return sorted(set(self.a.seeds["seed"]) ^ set(self.b.seeds["seed"]))


def command(args: argparse.Namespace) -> int:
    """`litpipe compare A B`."""
    try:
        comparison = compare(load(args.a), load(args.b))
    except StageError as error:
        print(f"litpipe: compare: {error}", file=sys.stderr)
        return 1
    print("\n".join(described(comparison)))
    return 0


def load(name: str) -> Run:
    """The test results of experiment, revision or workspace `name`."""
    revision = None if name == WORKSPACE else resolve(name)
    seeds = pd.read_csv(io.StringIO(read(paths.TEST_SEEDS, revision, name)))
    return Run(name, seeds, json.loads(read(paths.TEST_METRICS, revision, name)))


def resolve(name: str) -> str:
    """The git revision of a DVC experiment's name (refs/exps/.../NAME), or of a branch, tag or commit."""
    experiments = [
        ref for ref in git("for-each-ref", "--format=%(refname)", "refs/exps").split() if ref.endswith(f"/{name}")
    ]
    if len(experiments) > 1:
        raise StageError(f"{len(experiments)} experiments are named {name}: give one of {', '.join(experiments)}")
    if experiments:
        return experiments[0]
    try:
        return git("rev-parse", "--verify", "--quiet", f"{name}^{{commit}}").strip()
    except StageError:
        raise StageError(
            f"no experiment, branch or commit is named {name!r} (`dvc exp show` lists the experiments; "
            f"`{WORKSPACE}` is the working tree)"
        ) from None


def read(path, revision: str | None, name: str) -> str:
    """A file of the pipeline's results as `name` left it: git-tracked or in the DVC cache (dvc.api)."""
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        if revision is None:
            return path.read_text()
        return dvc.api.read(str(path), rev=revision)
    except (OSError, DvcException):
        raise StageError(
            f"{name} has no {path} here: run its pipeline's test stage (dvc repro test), or fetch its outputs "
            "(dvc pull, dvc exp pull)"
        ) from None


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()
        raise StageError(f"git {args[0]}: {said[0] if said else f'exit {done.returncode}'}")
    return done.stdout


def compare(a: Run, b: Run) -> Comparison:
    """B - A per test metric over the seeds both runs have."""
    names = [name for name in a.seeds.columns if name != "seed" and name in b.seeds.columns]
    if not names:
        raise StageError(f"{a.name} and {b.name} share no test metric: one classifies, the other regresses")
    paired = a.seeds.merge(b.seeds, on="seed", suffixes=("_a", "_b"))
    if paired.empty:
        listed = [", ".join(map(str, side.seeds["seed"])) for side in (a, b)]
        raise StageError(f"{a.name} (seeds {listed[0]}) and {b.name} (seeds {listed[1]}) share no seed to pair")
    differences = {
        name: paired_difference(paired[f"{name}_a"].tolist(), paired[f"{name}_b"].tolist()) for name in names
    }
    return Comparison(a, b, [int(seed) for seed in paired["seed"]], differences)


def table(comparison: Comparison) -> pd.DataFrame:
    """A row per metric: each run's mean over the paired seeds, B - A, its interval, the tests, the verdict."""
    rows = []
    for name, difference in comparison.differences.items():
        means = [
            side.seeds.set_index("seed").loc[comparison.seeds, name].mean() for side in (comparison.a, comparison.b)
        ]
        rows.append(
            {
                "metric": name,
                "A": f"{means[0]:.4f}",
                "B": f"{means[1]:.4f}",
                "B - A": f"{difference.mean:+.4f}",
                "95% CI of B - A": interval(difference.ci95_low, difference.ci95_high, signed=True),
                "t-test p": p_value(difference.t_test_p),
                "Wilcoxon p": p_value(difference.wilcoxon_p),
                "verdict": verdict(name, difference),
            }
        )
    return pd.DataFrame(rows)


def verdict(name: str, difference: Difference) -> str:
    if difference.seeds < 2:
        return "too few seeds to tell"
    if difference.identical:
        return "no difference: the same on every seed"
    if difference.constant:
        return "the same difference on every seed: no spread to test"
    if difference.ci95_low <= 0 <= difference.ci95_high:
        return "no difference shown (the interval holds 0)"
    higher = difference.mean > 0
    return f"B {'higher' if higher else 'lower'}: {'better' if higher == (name in HIGHER_IS_BETTER) else 'worse'}"


def described(comparison: Comparison) -> list[str]:
    """The comparison as a reader takes it in: which seeds, the table, what the test split resolves, and what
    too few seeds cannot tell."""
    a, b, seeds = comparison.a, comparison.b, comparison.seeds
    listed = ", ".join(map(str, seeds)) or "none"
    lines = [f"A = {a.name}, B = {b.name}: paired over {len(seeds)} seed{'s' * (len(seeds) != 1)} ({listed})"]
    if comparison.left_out:
        lines.append(f"seeds {', '.join(map(str, comparison.left_out))} are in one run only: left out of the pairs")
    lines += ["", table(comparison).to_string(index=False), ""]
    if len(seeds) < 2:
        lines.append(
            "Too few seeds to tell a difference from the seed-to-seed spread: give both runs at least 2 of the same "
            f"seeds in replicates.seeds (5 or more for a useful interval, {WILCOXON_SEEDS} for the Wilcoxon test)."
        )
    elif len(seeds) < WILCOXON_SEEDS:
        lines.append(
            f"The Wilcoxon signed-rank test needs {WILCOXON_SEEDS} seeds or more; the t-test assumes normal differences."
        )
    lines.append("The test split's own 95% interval (one seed's model; what a finite test split can resolve):")
    for label, side in (("A", a), ("B", b)):
        lines.append(f"  {label}: {split_intervals(side.metrics, list(comparison.differences))}")
        lines += [f"  {label}: {note}" for note in side.metrics.get("notes", {}).values()]
    for name, difference in comparison.differences.items():
        found = split_interval(a.metrics, name)
        half = None if found is None else (found[1] - found[0]) / 2
        if half is not None and not difference.identical and abs(difference.mean) < half:
            lines.append(
                f"  {name}: B - A ({difference.mean:+.4f}) is within the test split's own interval (±{half:.4f}): "
                "another draw of test samples could move it as much"
            )
    return lines


def split_interval(metrics: dict, name: str) -> tuple[float, float] | None:
    """The test split's own 95% interval of a metric in metrics.json (stages/test.py), None in older results."""
    low, high = metrics.get(f"{name}_split_ci95_low"), metrics.get(f"{name}_split_ci95_high")
    return None if low is None else (low, high)


def split_intervals(metrics: dict, names: list[str]) -> str:
    """Each metric of the first seed's model with its test split's own interval (older results have none)."""
    shown = []
    for name in names:
        found = split_interval(metrics, name)
        shown.append(f"{name} {metrics[name]:.4f}" + ("" if found is None else f" {interval(*found)}"))
    return ", ".join(shown)


def interval(low: float | None, high: float | None, signed: bool = False) -> str:
    number = "{:+.4f}" if signed else "{:.4f}"
    return "" if low is None else f"[{number.format(low)}, {number.format(high)}]"


def p_value(p: float | None) -> str:
    return "" if p is None else f"{p:.3g}"
