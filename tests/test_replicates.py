"""Seed replicates: `litpipe fit` trains every seed of replicates.seeds (the first in its own process, the
others as processes beside it), `litpipe test` evaluates every checkpoint and reports their spread, and an
interrupted replicate fit resumes to the numbers of one that never stopped."""

import csv
import json
import math
import os
import re
import signal
import subprocess
from contextlib import chdir
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from litpipe import paths
from litpipe.data.prepared import load_split
from litpipe.models.lit_model import LitModel
from litpipe.spread import STATISTICS, spread
from litpipe.stages import fit

from .helpers import copy_workspace, edit_params, expected_spread, ready_to_fit, tool_env, wait_until

EPOCHS = 12
CHANGES = {
    "train.max_epochs": EPOCHS,
    "train.batch_size": 8,  # 135 steps an epoch: a fit lasts a few seconds
    "train.early_stopping_patience": 50,
    "train.swa_epoch_start": 0.25,
    "train.accelerator": "cpu",
    "observe.histograms": False,
    "replicates.seeds": [0, 1, 2],
    "replicates.n_workers": 2,
}
SEEDS = CHANGES["replicates.seeds"]


def runs(seeds: list[int]) -> dict[int, paths.FitRun]:
    return {seed: paths.fit_run(seed, seeds) for seed in seeds}


def start(args: list[str], workspace: Path, log: str) -> subprocess.Popen:
    with open(workspace / log, "w") as out:  # a file: a pipe nobody reads fills up and blocks the child
        return subprocess.Popen(["litpipe", *args], cwd=workspace, env=tool_env(), stdout=out, stderr=subprocess.PIPE)


def finish(args: list[str], workspace: Path) -> str:
    process = start(args, workspace, f"{args[0]}.out")
    _, errors = process.communicate(timeout=600)
    output = (workspace / f"{args[0]}.out").read_text()
    assert process.returncode == 0, output[-3000:] + errors.decode()
    return output


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.fixture(scope="module")
def ready(tmp_path_factory, default_params) -> Path:
    return ready_to_fit(tmp_path_factory.mktemp("ready"), default_params, CHANGES)


@pytest.fixture(scope="module")
def replicated(ready, tmp_path_factory) -> tuple[Path, str]:
    """Three seeds fitted, two at a time, and tested, never interrupted; and the fit's output."""
    workspace = copy_workspace(ready, tmp_path_factory.mktemp("replicated") / "workspace")
    output = finish(["fit"], workspace)
    finish(["test"], workspace)
    return workspace, output


@pytest.mark.slow
def test_every_seed_is_fitted_two_at_a_time_into_its_own_run(replicated):
    workspace, output = replicated
    # Where each seed's run goes, as the README gives it: the first seed's is the stage's own.
    documented = {0: ["models/best.ckpt", "results/fit", "tb/fit"]}
    for s in (1, 2):
        documented[s] = [f"models/replicates/seed-{s}.ckpt", f"results/replicates/seed-{s}", f"tb/replicates/seed-{s}"]
    assert {seed: [str(path) for path in run.outputs] for seed, run in runs(SEEDS).items()} == documented
    for seed, run in runs(SEEDS).items():
        summary = json.loads((workspace / run.summary).read_text())
        assert summary["seed"] == seed
        assert (workspace / run.checkpoint).stat().st_size > 0
        assert list((workspace / run.tensorboard).glob("events.out.tfevents.*")), run.tensorboard
        assert f"{run.task} finished" in read(workspace / run.log)
    checkpoints = [(workspace / run.checkpoint).read_bytes() for run in runs(SEEDS).values()]
    assert len(set(checkpoints)) == 3  # three seeds, three models
    # Every replicate directory holds the map of where each seed's run is, and nothing else but those runs.
    for directory in paths.REPLICATE_DIRS:
        index = json.loads((workspace / directory / paths.REPLICATES_INDEX).read_text())
        assert index["seeds"] == SEEDS and index["runs"]["0"]["checkpoint"] == str(paths.BEST_CKPT)
        assert {entry.name for entry in (workspace / directory).iterdir()} - {paths.REPLICATES_INDEX} == {
            path.name for run in list(runs(SEEDS).values())[1:] for path in run.outputs if path.parent == directory
        }
    # Two at a time (replicates.n_workers): seed 1 started beside seed 0, seed 2 once one of them finished.
    lines = output.splitlines()

    def first(pattern: str) -> int:
        return next(index for index, line in enumerate(lines) if re.search(pattern, line))

    started_2 = first(r"the fit of seed 2 started")
    assert first(r"the fit of seed 1 started") < first(r"seed 0: best epoch")
    assert min(first(r"seed 0: best epoch"), first(r"the fit of seed 1 finished")) < started_2


@pytest.mark.slow
def test_the_test_reports_the_first_checkpoint_and_the_spread_over_seeds(replicated):
    """Whatever the seeds scored (three seeds may get the same number of 360 test images right): each row is
    its own checkpoint's test, and the spread is the specified one of the rows' values."""
    workspace, _ = replicated
    metrics = json.loads((workspace / paths.TEST_METRICS).read_text())
    rows = list(csv.DictReader(open(workspace / paths.TEST_SEEDS)))
    assert [int(row["seed"]) for row in rows] == SEEDS
    assert metrics["seeds"] == 3 and metrics["samples"] == 360
    assert metrics["accuracy"] == float(rows[0]["accuracy"]) and metrics["loss"] == float(rows[0]["loss"])
    for name in ("accuracy", "loss"):
        values = [float(row[name]) for row in rows]
        reported = {statistic: metrics[f"{name}_{statistic}"] for statistic in STATISTICS}
        assert reported == pytest.approx(expected_spread(values), rel=1e-12, abs=1e-15)
        assert reported["ci95_low"] <= reported["mean"] <= reported["ci95_high"]
    with chdir(workspace):
        test = load_split("test")
        for row, run in zip(rows, runs(SEEDS).values(), strict=True):
            # Its own checkpoint's numbers, evaluated here ...
            with torch.no_grad():
                logits = LitModel.from_checkpoint(run.checkpoint)(test.x)
            assert float(row["accuracy"]) == pytest.approx((logits.argmax(1) == test.y).float().mean().item(), abs=1e-6)
            assert float(row["loss"]) == pytest.approx(F.cross_entropy(logits, test.y).item(), rel=1e-5)
            # ... and the test its fit measured in-process.
            assert float(row["accuracy"]) == json.loads(run.summary.read_text())["test_acc_in_fit"]


def pid_of_seed(workspace: Path, seed: int) -> int | None:
    started = re.search(rf"the fit of seed {seed} started \(pid (\d+)", read(workspace / paths.log_file("fit")))
    return int(started[1]) if started else None


TRAINING = "epoch 2/"
WRITING_RESULTS = "testing its checkpoint and writing its results"  # logged once training is over
DONE = f"seed {SEEDS[0]}: best epoch"  # the first seed's last line: the stage then waits for the others


@pytest.mark.slow
@pytest.mark.parametrize(
    "holds",
    [
        [(0, TRAINING), (1, TRAINING)],
        [(2, TRAINING), (0, DONE)],  # seed 0 done (the stage waits for the others), seed 1 done or training
        [(1, TRAINING), (0, WRITING_RESULTS)],  # seed 0 trained, its results not yet written
    ],
    ids=["seeds-0-and-1-train", "seed-0-done-seed-2-trains", "seed-0-writes-its-results-seed-1-trains"],
)
def test_an_interrupted_replicate_fit_resumes_every_seed_to_the_uninterrupted_numbers(
    ready, replicated, tmp_path, holds
):
    """SIGTERM to `litpipe fit` with each seed of `holds` at that point: it stops every fit still training at
    an epoch's end, each saving its resume checkpoint, and fails in one line; the re-run resumes them and
    ends every seed where the uninterrupted run ended (a seed never started is fitted afresh). Each seed is
    held there (SIGSTOP) until the signal is on its way, so it lands there however fast the machine."""
    workspace = copy_workspace(ready, tmp_path / "workspace")
    fitting = start(["fit"], workspace, "interrupted.out")
    held = {}
    for seed, progress in holds:
        run = runs(SEEDS)[seed]
        pid = fitting.pid if seed == SEEDS[0] else wait_until(lambda: pid_of_seed(workspace, seed), 120, f"seed {seed}")
        wait_until(lambda: progress in read(workspace / run.log) or fitting.poll() is not None, 120, f"seed {seed}")
        assert fitting.poll() is None, "the fit ended before it could be interrupted"
        os.kill(pid, signal.SIGSTOP)
        held[seed] = pid
    fitting.send_signal(signal.SIGTERM)  # to the stage's process: it stops the others
    for seed in sorted(held, key=lambda seed: seed != SEEDS[0]):  # the stage's process first
        if seed != SEEDS[0]:  # once the stage has passed the signal on to it
            wait_until(lambda: f"stopping the fit of seed {seed}" in read(workspace / "logs/fit.log"), 60, "SIGTERM")
        os.kill(held[seed], signal.SIGCONT)
    _, errors = fitting.communicate(timeout=180)
    message = errors.decode()
    assert fitting.returncode == 1 and message.count("\n") == 1, message
    assert re.search(r"fit failed: fit (preempted|stopped) by SIGTERM", message), message
    training = [seed for seed, progress in holds if progress == TRAINING]
    for seed in training:
        assert (workspace / runs(SEEDS)[seed].resume).exists(), seed
    for seed in set(training) - {SEEDS[0]}:
        assert "fit preempted by SIGTERM" in read(workspace / paths.failed_log_file(runs(SEEDS)[seed].log))

    rerun = finish(["fit"], workspace)
    for seed in training:
        run = runs(SEEDS)[seed]
        assert "resuming the fit from" in (rerun if seed == SEEDS[0] else read(workspace / run.log)), seed
    uninterrupted, _ = replicated
    for run in runs(SEEDS).values():
        for path in (run.history, run.metrics, run.activations):
            assert (workspace / path).read_bytes() == (uninterrupted / path).read_bytes(), f"{path} differs"
        assert not (workspace / run.resume).exists()


@pytest.mark.slow
def test_a_replicate_that_dies_fails_the_stage_in_one_line_naming_its_seed_and_log(ready, tmp_path):
    workspace = copy_workspace(ready, tmp_path / "workspace")
    edit_params(workspace, {"replicates.seeds": [0, 1]})
    fitting = start(["fit"], workspace, "fit.out")
    started = wait_until(
        lambda: re.search(r"the fit of seed 1 started \(pid (\d+)", read(workspace / "fit.out")),
        120,
        "seed 1's process",
    )
    wait_until(lambda: "epoch 2/" in read(workspace / runs(SEEDS)[1].log), 120, "an epoch of seed 1")
    os.kill(int(started[1]), signal.SIGKILL)
    _, errors = fitting.communicate(timeout=300)
    message = errors.decode()
    assert fitting.returncode == 1 and message.count("\n") == 1, message
    assert "the fit of seed 1 exited with signal SIGKILL (see logs/fit-seed-1.log)" in message
    assert (workspace / paths.BEST_CKPT).exists()  # the other seed's fit finished, and is kept


@pytest.mark.slow
def test_a_seed_outside_the_list_or_a_missing_checkpoint_is_one_line(replicated, tmp_path):
    workspace = copy_workspace(replicated[0], tmp_path / "workspace")
    result = subprocess.run(["litpipe", "fit", "--seed", "7"], cwd=workspace, env=tool_env(), capture_output=True)
    assert result.returncode == 1 and result.stderr.decode().count("\n") == 1
    assert "--seed 7 is not one of replicates.seeds [0, 1, 2]" in result.stderr.decode()
    (workspace / runs(SEEDS)[2].checkpoint).unlink()
    before = (workspace / paths.TEST_METRICS).read_bytes()
    result = subprocess.run(["litpipe", "test"], cwd=workspace, env=tool_env(), capture_output=True)
    assert result.returncode == 1 and result.stderr.decode().count("\n") == 1, result.stderr
    assert "no checkpoint models/replicates/seed-2.ckpt (seed 2)" in result.stderr.decode()
    assert (workspace / paths.TEST_METRICS).read_bytes() == before


def test_dropped_seeds_leave_nothing_in_the_replicate_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for run in runs([0, 1, 2, 5]).values():
        run.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        run.checkpoint.touch()
        run.results.mkdir(parents=True)
        run.tensorboard.mkdir(parents=True)
    (paths.MODELS / "replicates" / "notes.txt").write_text("a stray file")
    fit.keep_only_replicates_of([0, 2])
    left = {
        str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*") if not path.is_dir() or not any(path.iterdir())
    }
    assert left == {
        "models/best.ckpt",  # the first seed's run is not in the replicate directories
        "results/fit",
        "tb/fit",
        "models/replicates/seed-2.ckpt",
        "results/replicates/seed-2",
        "tb/replicates/seed-2",
        *(f"{directory}/{paths.REPLICATES_INDEX}" for directory in paths.REPLICATE_DIRS),
    }


def test_spread_is_none_for_one_value_and_students_interval_for_more():
    assert spread([0.97]) is None
    assert spread([0.0]) is None  # one seed has no spread, whatever it scored
    two = spread([0.5, 0.7])
    # Two values: std |a - b| / sqrt(2), and the interval mean +- t(0.975, 1) * std / sqrt(2) = 12.706 * 0.1.
    assert two["mean"] == pytest.approx(0.6) and two["std"] == pytest.approx(0.2 / math.sqrt(2))
    assert two["ci95_high"] - two["mean"] == pytest.approx(12.7062047 * 0.1, rel=1e-6)
    values = [0.91, 0.93, 0.92, 0.95, 0.94]
    low, high = stats.t.interval(0.95, 4, loc=np.mean(values), scale=stats.sem(values))
    assert spread(values) == pytest.approx(
        {"mean": np.mean(values), "std": np.std(values, ddof=1), "ci95_low": low, "ci95_high": high}
    )


@pytest.mark.parametrize("count", [2, 3, 5, 7])
@pytest.mark.parametrize("value", [0.980555534362793, 0.07165000140666962, 0.0, 1.0, 0.1, 0.7, 0.123456789])
def test_identical_scores_have_no_spread(value, count):
    """Seeds that score the same (on 360 test images, a coincidence that happens): std 0 and the interval
    [x, x], exactly; never nan, and no rounding that puts the mean beside the value every seed got (a value
    of float64's full precision, 0.1 three times, sums to 0.30000000000000004)."""
    assert spread([value] * count) == {"mean": value, "std": 0.0, "ci95_low": value, "ci95_high": value}


@pytest.mark.parametrize(
    "values",
    [[0.975, 0.975, 0.9722222089767456], [0.9722222089767456, 0.975, 0.975], [0.5, 0.5, 0.5, 0.75], [0.1, 0.2]],
    ids=["two-tied-above", "two-tied-below", "three-tied", "two"],
)
def test_tied_scores_among_others_have_students_interval(values):
    result = spread(values)
    assert result == pytest.approx(expected_spread(values), rel=1e-12)
    assert result["std"] > 0 and result["ci95_low"] < result["mean"] < result["ci95_high"]
