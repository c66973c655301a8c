"""`litpipe sweep`: a grid of params, every point at once in a workspace of its own sharing the DVC cache,
each a DVC experiment; locally (`dvc exp run`) and as SLURM jobs (`snakemake --profile slurm`, `litpipe record`)."""

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from litpipe.sweep import experiment_name, grid

from .helpers import FAST, copy_repo, copy_workspace, edit_params, require_tool, run
from .test_workflow import slurm_cluster

# A pipeline of seconds per stage: no search, three epochs.
QUICK = {**FAST, "search.enabled": False, "train.max_epochs": 3}


def test_the_grid_is_every_combination_of_the_values_read_as_yaml():
    points = grid(["optim.lr=0.001,0.01", "replicates.seeds=[0, 1],[2]", "model.arch=mlp"], "sweep")
    assert [point.settings for point in points] == [
        {"optim.lr": lr, "replicates.seeds": seeds, "model.arch": "mlp"}
        for lr in (0.001, 0.01)
        for seeds in ([0, 1], [2])
    ]
    assert points[0].name == "sweep-optim.lr-0.001-replicates.seeds-_0_1_-model.arch-mlp"
    assert len({point.name for point in points}) == 4
    assert experiment_name("lr", {"data.root": "data/raw/my pets"}) == "lr-data.root-data_raw_my_pets"


@pytest.mark.parametrize(
    "args, said",
    [
        ([], "nothing to sweep"),
        (["-S", "optim.lr"], "expected KEY=V1,V2"),
        (["-S", "optim.lr=0.1", "-S", "optim.lr=0.2"], "optim.lr is given twice"),
        (["-S", "optim.lr=0.1,-1"], "optim.lr"),  # a value out of range: the point's params are refused
        (["-S", "optim.nope=1,2"], "optim.nope"),
    ],
)
def test_a_bad_sweep_is_one_line_and_exit_2_before_anything_is_made(tmp_path, args, said):
    repo = copy_repo(tmp_path / "repo")
    result = run(["litpipe", "sweep", *args], repo, check=False)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and said in result.stderr, result.stderr
    assert not (repo / "sweeps").exists()


def test_uncommitted_changes_are_refused_in_one_line(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    edit_params(repo, {"train.max_epochs": 2})
    result = run(["litpipe", "sweep", "-S", "optim.lr=0.001,0.01"], repo, check=False)
    assert result.returncode == 1 and "params.yaml has uncommitted changes" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (repo / "sweeps").exists()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A repository whose last commit has QUICK params, with the data prepared since (in the DVC cache and the
    workspace's dvc.lock, not committed: a point takes the workspace's lock)."""
    require_tool("dvc")
    repo = copy_repo(tmp_path_factory.mktemp("sweep-base"))
    edit_params(repo, QUICK)
    run(["git", "commit", "-q", "-am", "quick params"], repo)
    run(["dvc", "repro", "prepare"], repo)
    return repo


def experiments(repo: Path) -> dict[str, dict]:
    """`dvc exp show`'s experiments by name: their params and test metrics."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    found = {}
    for commit in shown:
        for experiment in commit.get("experiments") or []:
            revision = experiment["revs"][0]
            data = revision["data"]
            found[experiment["name"]] = {
                "params": data["params"]["params.yaml"]["data"],
                "metrics": data["metrics"]["results/test/metrics.json"]["data"],
            }
    return found


def assert_plots_diff_draws_each_fits_own_curves(repo: Path, names: list[str], output: Path) -> None:
    """`dvc plots diff` of the experiments (its page in `output`) draws each one's validation loss, an epoch a point,
    from its fit's DVCLive files (cached outputs), ending at the value `dvc exp show` lists for it (their
    metrics.json)."""
    drawn = json.loads(run(["dvc", "plots", "diff", *names, "--json", "-o", str(output)], repo).stdout)["data"]
    (plot,) = drawn["results/fit/live/plots/metrics/val/loss.tsv"]
    assert set(plot["revisions"]) == set(names)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    metrics = {
        experiment["name"]: experiment["revs"][0]["data"]["metrics"]
        for commit in shown
        for experiment in commit.get("experiments") or []
    }
    latest = {name: metrics[name]["results/fit/live/metrics.json"]["data"] for name in names}
    curves = {}
    for name in names:
        curves[name] = [
            (int(p["step"]), float(p["loss"])) for p in plot["content"]["data"]["values"] if p["rev"] == name
        ]
        assert [step for step, _ in curves[name]] == [0, 1, 2]  # QUICK's three epochs
        assert curves[name][-1] == (latest[name]["step"], latest[name]["val"]["loss"])
    assert len({tuple(curve) for curve in curves.values()}) == len(names)


def skipped_prepare(log: str) -> bool:
    return "Stage 'prepare' didn't change, skipping" in log or "Stage 'prepare' is cached" in log


@pytest.mark.slow
@pytest.mark.integration
def test_a_local_sweep_records_a_row_per_point_and_a_failing_point_is_one_line(base, tmp_path):
    """Two learning rates on the CPU, and the same two on a GPU this machine lacks: the GPU points fail in one line
    each, naming their logs and keeping their workspaces; the CPU points are experiments with their params and
    their own losses, prepare taken from the shared cache."""
    repo = copy_workspace(base, tmp_path / "repo")
    status = run(["git", "status", "--porcelain"], repo).stdout  # dvc.lock staged by the prepare since the commit
    result = run(
        ["litpipe", "sweep", "-S", "optim.lr=0.001,0.03", "-S", "train.accelerator=cpu,gpu", "--jobs", "2"],
        repo,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [line for line in result.stdout.splitlines() if ": failed: " in line]
    assert len(failed) == 2 and all("train.accelerator=gpu" in line and "(log: logs/sweep-" in line for line in failed)
    for line in failed:
        workspace = line.split("workspace kept: ")[1].rstrip(")")
        assert (repo / workspace / "params.yaml").exists()

    found = experiments(repo)
    ran = {name: found[name] for name in found if "accelerator-cpu" in name}
    assert len(ran) == 2, found.keys()
    assert {row["params"]["optim"]["lr"] for row in ran.values()} == {0.001, 0.03}
    assert len({row["metrics"]["loss"] for row in ran.values()}) == 2  # different runs, not one copied
    assert_plots_diff_draws_each_fits_own_curves(repo, sorted(ran), tmp_path / "plots")
    for name in ran:
        log = (repo / f"logs/sweep-{name}.log").read_text()
        assert skipped_prepare(log), log[-2000:]
        assert not (repo / "sweeps" / name).exists()
    assert run(["git", "status", "--porcelain"], repo).stdout == status  # the sweep left the workspace as it was


@pytest.mark.slow
@pytest.mark.integration
def test_a_sweep_on_slurm_queues_every_points_jobs_at_once_and_records_a_row_each(base, tmp_path):
    slurm_cluster()
    repo = copy_workspace(base, tmp_path / "repo")
    queued: list[set[str]] = []  # the Snakemake runs (job names) with jobs in SLURM's queue, at each look
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            squeue = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True, check=False)
            names = squeue.stdout.split()
            queued.append(set(names))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = run(
            [
                "litpipe",
                "sweep",
                "--profile",
                "slurm",
                "-S",
                "optim.lr=0.001,0.003,0.01",
                # The SLURM plugin's status checks, as tests/test_workflow.py sets them for short jobs, and a core
                # for each training job: two jobs at a time on CI's two-core node.
                "--slurm-init-seconds-before-status-checks",
                "1",
                "--seconds-between-status-checks",
                "1",
                "--set-resources",
                *(f"{rule}:cpus_per_task=1" for rule in ("sanity", "lr_find", "fit")),
                "--set-threads",
                *(f"{rule}=1" for rule in ("sanity", "lr_find", "fit")),
            ],
            repo,
            check=False,
            timeout=1200,
        )
    finally:
        done.set()
        watcher.join()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert max(len(names) for names in queued) >= 2, "the points' jobs were never in the queue together"
    found = experiments(repo)
    assert len(found) == 3, found.keys()
    assert {row["params"]["optim"]["lr"] for row in found.values()} == {0.001, 0.003, 0.01}
    assert len({row["metrics"]["loss"] for row in found.values()}) == 3
    for name in found:
        log = (repo / f"logs/sweep-{name}.log").read_text()
        assert "has been submitted with SLURM jobid" in log
        assert "rule prepare" not in log.split("$ snakemake --profile")[-1], "prepare ran again in a point"
