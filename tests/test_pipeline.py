"""The real `dvc repro`, `dvc exp run` and `dvc exp show` on a copy of the repository."""

import csv
import io
import json
import math
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
from scipy import stats

from litpipe.spread import STATISTICS

from .helpers import FAST, STAGES, copy_repo, copy_workspace, edit_params, expected_spread, require_tool, run, tool_env

pytestmark = pytest.mark.integration


def learning_rates(repo: Path) -> list[float]:
    """The learning rate the fit of a workspace trained with: as its summary records it, and in its checkpoint."""
    summary = json.loads((repo / "results/fit/summary.json").read_text())
    checkpoint = torch.load(repo / "models/best.ckpt", map_location="cpu", weights_only=True)
    return [summary["params"]["optim"]["lr"], checkpoint["hyper_parameters"]["lr"]]


def test_dvc_repro_runs_all_eight_stages_and_writes_every_output(pipeline):
    repo, log, seconds = pipeline
    assert [line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")] == STAGES
    for output in [
        "data/prepared/meta.json",
        "results/sanity/summary.json",
        "results/lr_find/lr_find.png",
        "results/search/trials.csv",
        "results/search/best.json",
        "models/best.ckpt",
        "results/fit/curves.png",
        "results/analysis/confusion.png",
        "results/analysis/activations_pca.png",
        "results/analysis/mistakes.png",
        "reports/report.html",
    ]:
        assert (repo / output).stat().st_size > 0, output
    for stage in STAGES:
        assert f"{stage} finished" in (repo / f"logs/{stage}.log").read_text()
    print(f"default pipeline: {seconds:.0f} s")


def test_default_pipeline_reaches_the_accuracy_target(pipeline):
    repo, _, _ = pipeline
    metrics = json.loads((repo / "results/test/metrics.json").read_text())
    assert metrics["accuracy"] >= 0.97, metrics
    assert 0 < metrics["loss"] < 0.2
    # Ten balanced digits: a model that ignores the images scores about a tenth, with a loss near ln(10).
    trivial = metrics["baselines"]["trivial"]
    assert 0.08 < trivial["accuracy"] < 0.12 and trivial["loss"] == pytest.approx(math.log(10), abs=0.01)
    html = (repo / "reports/report.html").read_text()
    assert f"the network beats the trivial baseline ({trivial['accuracy']:.4f})" in html
    trials = list(csv.DictReader((repo / "results/search/trials.csv").open()))
    assert len(trials) == 8 and {t["state"] for t in trials} <= {"COMPLETE", "PRUNED"}
    assert sum(t["state"] == "COMPLETE" for t in trials) >= 4  # the median pruner's startup trials


def test_report_embeds_every_image(pipeline):
    repo, _, _ = pipeline
    html = (repo / "reports/report.html").read_text()
    assert html.count("data:image/png;base64,") >= 7
    assert '<img src="http' not in html


def test_second_repro_reproduces_nothing_and_status_is_clean(pipeline, tmp_path):
    # A copy: were a stage to run again, it would rewrite outputs that test_report.py reads from the fixture.
    repo = copy_workspace(pipeline[0], tmp_path / "repo")
    started = time.perf_counter()
    log = run(["dvc", "repro"], repo).stdout
    print(f"second dvc repro: {time.perf_counter() - started:.2f} s")
    assert "Running stage" not in log
    assert all(f"Stage '{stage}' didn't change" in log for stage in STAGES)
    assert "up to date" in run(["dvc", "status"], repo).stdout


def test_report_setting_reruns_only_the_report(pipeline, tmp_path):
    repo = copy_workspace(pipeline[0], tmp_path / "repo")
    edit_params(repo, {"report.title": "Another title"})
    log = run(["dvc", "repro"], repo).stdout
    assert [line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")] == ["report"]
    assert "Another title" in (repo / "reports/report.html").read_text()


# A sweep as the README writes one: queued, then run by `dvc queue start`. Sweeping a param the search would
# choose wants the search off; optim.lr is not in the default space, and the search off saves the trials.
# A workspace each, its experiments run one after another: three seeds, then with a setting that cannot change
# the numbers (DVC's run cache restores every stage but the report), then with a 10x learning rate.
SEEDS = "replicates.seeds=[0,1,2]"
EXPERIMENTS = {
    "lr-high": {"lr-high": ["optim.lr=0.01", "search.enabled=false"]},
    "three-seeds": {
        "three-seeds": [SEEDS],
        "three-seeds-titled": [SEEDS, "report.title=Another title"],
        "three-seeds-lr10x": [SEEDS, "optim.lr=0.02"],
    },
}


@pytest.fixture(scope="module")
def experiments(pipeline, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """The experiments of each workspace of EXPERIMENTS queued with `dvc exp run --queue -n NAME -S CHANGE...`
    in a copy of the finished default pipeline (its results committed as the baseline) and run in order by one
    `dvc queue start` worker, the two copies at once (a core each): name -> (workspace, the experiment's output
    as `dvc queue logs` gives it)."""
    repos = {}
    for workspace, queued in EXPERIMENTS.items():
        repo = repos[workspace] = copy_workspace(pipeline[0], tmp_path_factory.mktemp(workspace) / "repo")
        run(["git", "add", "-A"], repo)
        run(["git", "commit", "-q", "-m", "baseline results"], repo)
        for name, changes in queued.items():
            run(["dvc", "exp", "run", "--queue", "-n", name, *(a for change in changes for a in ("-S", change))], repo)
        run(["dvc", "queue", "start"], repo)  # a worker in the background
    finished = {}
    deadline = time.monotonic() + 1200
    for workspace, repo in repos.items():
        while "Queued" in (status := run(["dvc", "queue", "status"], repo).stdout) or "Running" in status:
            assert time.monotonic() < deadline, status
            time.sleep(2)
        for name in EXPERIMENTS[workspace]:
            log = run(["dvc", "queue", "logs", name], repo, check=False).stdout
            assert re.search(rf"\b{name}\b.*Success", status), f"{name}: {status}\n{log[-3000:]}"
            finished[name] = (repo, log)
    return finished


def experiment_row(repo: Path, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """The experiment's row of `dvc exp show --csv` and the baseline's (the commit it ran from)."""
    table = list(csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], repo).stdout)))
    return next(row for row in table if row["Experiment"] == name), next(row for row in table if row["rev"] == "main")


def test_dvc_exp_run_compares_a_learning_rate(pipeline, experiments):
    repo, _ = experiments["lr-high"]
    experiment, baseline = experiment_row(repo, "lr-high")
    # `dvc exp apply` brings its params and outputs into the workspace.
    run(["dvc", "exp", "apply", "lr-high"], repo)
    assert json.loads((repo / "results/test/metrics.json").read_text())["accuracy"] == pytest.approx(
        float(experiment["accuracy"])
    )
    # The experiment's own report names it; a report made once experiments exist compares them.
    summary_names_it = "<td>lr-high</td>" in (repo / "reports/report.html").read_text()
    run(["litpipe", "report"], repo)
    comparison = (repo / "reports/report.html").read_text().split(">Experiments")[-1]
    assert float(experiment["optim.lr"]) == 0.01 and experiment["search.enabled"] == "False"
    assert float(baseline["optim.lr"]) != 0.01
    assert 0.5 < float(experiment["accuracy"]) <= 1
    # The learning rate really reached the fit: what the fit recorded and the model it saved (not its scores,
    # which two runs may share on 360 test images).
    assert learning_rates(repo) == [0.01, 0.01]
    assert learning_rates(pipeline[0]) == [float(baseline["optim.lr"])] * 2
    assert summary_names_it
    assert f"<td>lr-high</td>\n<td>{experiment['rev']}</td>" in comparison  # its row, with its revision

    # The readable table, in a 120-column terminal: test metrics, then the changed param; no hashes or times.
    readable = subprocess.run(
        ["litpipe", "experiments"], cwd=repo, env={**tool_env(), "COLUMNS": "120"}, capture_output=True, text=True
    )
    assert readable.returncode == 0, readable.stderr
    lines = readable.stdout.splitlines()
    header = next(line for line in lines if "Experiment" in line).split()
    assert header == ["Experiment", "accuracy", "loss", "optim.lr", "search.enabled"], header  # not the queue's State
    assert max(len(line) for line in lines) <= 120 and "…" not in readable.stdout
    assert any("lr-high" in line and "0.01" in line for line in lines)
    # The report's comparison has the same columns.
    columns = comparison.split("<thead>")[1].split("</thead>")[0]
    assert [name for name in ("accuracy", "loss", "optim.lr", "Created", "data/prepared") if name in columns] == [
        "accuracy",
        "loss",
        "optim.lr",
    ]


def test_dvc_exp_run_with_three_seeds_reports_their_spread(pipeline, experiments):
    """The default pipeline's one seed reports no interval; `dvc exp run -S 'replicates.seeds=[0,1,2]'` re-runs
    the fit and what follows, and `dvc exp show` and the report give the spread over the three seeds."""
    single = json.loads((pipeline[0] / "results/test/metrics.json").read_text())
    over_seeds = [key for key in single if key.endswith(("_mean", "_std", "_low", "_high")) and "_split_" not in key]
    assert single["seeds"] == 1 and not over_seeds
    for name in ("accuracy", "loss"):  # the test split's own interval, beside the number it measured
        assert single[f"{name}_split_ci95_low"] < single[name] < single[f"{name}_split_ci95_high"]
    one_seed = (pipeline[0] / "reports/report.html").read_text().split(">Seed replicates")[1].split("<h2")[0]
    assert "One seed (0)" in one_seed and "confidence interval to report" in one_seed and "<img" not in one_seed

    repo, log = experiments["three-seeds"]
    ran = [line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")]
    assert ran == STAGES[3:], log[-3000:]  # the search too: its re-evaluation would use the seeds
    experiment, baseline = experiment_row(repo, "three-seeds")
    run(["dvc", "exp", "apply", "three-seeds"], repo)
    metrics = json.loads((repo / "results/test/metrics.json").read_text())
    per_seed = list(csv.DictReader((repo / "results/test/seeds.csv").open()))
    assert [row["seed"] for row in per_seed] == ["0", "1", "2"] and experiment["seeds"] == "3"
    for name in ("accuracy", "loss"):
        # The spread of the three seeds' scores, whatever they are (three seeds may score the same: std 0).
        shown = {statistic: float(experiment[f"{name}_{statistic}"]) for statistic in STATISTICS}
        assert shown == pytest.approx(expected_spread([float(row[name]) for row in per_seed]), rel=1e-6, abs=1e-9)
        assert shown["ci95_low"] <= shown["mean"] <= shown["ci95_high"]
        assert float(experiment[f"{name}_mean"]) == pytest.approx(metrics[f"{name}_mean"])
        assert baseline[f"{name}_mean"] == baseline[f"{name}_ci95_low"] == ""  # one seed: no interval
    assert 0.9 < float(experiment["accuracy_mean"]) <= 1
    # Seeds that agree exactly are a spread the test split cannot resolve, said so, not a certain number.
    agree = len({row["accuracy"] for row in per_seed}) == 1
    assert ("accuracy" in metrics.get("notes", {})) == agree

    page = (repo / "reports/report.html").read_text()
    summary = page.split(">Summary")[1].split("<h2")[0]
    assert f"(models/best.ckpt); over 3 seeds accuracy {metrics['accuracy_mean']:.4f}" in summary
    section = page.split(">Seed replicates")[1].split("<h2")[0]
    assert "3 seeds (0, 1, 2)" in section and f"{metrics['accuracy_mean']:.4f}" in section
    for checkpoint in ("models/best.ckpt", "models/replicates/seed-1.ckpt", "models/replicates/seed-2.ckpt"):
        assert f"<td>{checkpoint}</td>" in section
    assert '<img alt="' in section and 'src="data:image/png;base64,' in section

    # The readable table keeps the accuracy's mean and std beside the changed param, in 120 columns.
    readable = subprocess.run(
        ["litpipe", "experiments"], cwd=repo, env={**tool_env(), "COLUMNS": "120"}, capture_output=True, text=True
    )
    lines = readable.stdout.splitlines()
    header = next(line for line in lines if "Experiment" in line).split()
    # optim.lr: the workspace's 10x experiment (compare's); its other one changes report.title, which 120 columns drop.
    assert header == ["Experiment", "accuracy", "accuracy_mean", "accuracy_std", "loss", "optim.lr", "replicates.seeds"]
    assert max(len(line) for line in lines) <= 120 and "…" not in readable.stdout


def compared(repo: Path, a: str, b: str) -> dict[str, list[str]]:
    """`litpipe compare A B`: its table's rows by metric (columns as printed), and the whole output."""
    result = subprocess.run(
        ["litpipe", "compare", a, b], cwd=repo, env=tool_env(), capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    rows = {
        line.split()[0]: line for line in result.stdout.splitlines() if line.split()[:1] in (["accuracy"], ["loss"])
    }
    return {"output": result.stdout, **rows}


def seed_table(repo: Path, name: str) -> dict[int, dict[str, float]]:
    """An experiment's results/test/seeds.csv, read through DVC from its commit and the cache."""
    import dvc.api

    ref = run(["git", "for-each-ref", "--format=%(refname)", f"refs/exps/*/*/{name}"], repo).stdout.split()
    text = dvc.api.read("results/test/seeds.csv", repo=str(repo), rev=ref[0])
    return {int(row["seed"]): {k: float(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))}


def test_compare_finds_no_difference_where_none_can_be_and_measures_a_tenfold_learning_rate(experiments):
    """Three seeds each: a changed report.title gives the same numbers on every seed, so no difference; a 10x
    learning rate gives each seed other numbers, and compare reports B - A paired by seed with its interval and
    p-value, as SciPy computes them from the two experiments' per-seed results."""
    repo, _ = experiments["three-seeds"]
    same = compared(repo, "three-seeds", "three-seeds-titled")
    assert "A = three-seeds, B = three-seeds-titled: paired over 3 seeds (0, 1, 2)" in same["output"]
    for name in ("accuracy", "loss"):
        assert same[name].endswith("no difference: the same on every seed"), same["output"]

    lr = compared(repo, "three-seeds", "three-seeds-lr10x")
    a, b = seed_table(repo, "three-seeds"), seed_table(repo, "three-seeds-lr10x")
    assert sorted(a) == sorted(b) == [0, 1, 2]
    for name in ("accuracy", "loss"):
        differences = [b[seed][name] - a[seed][name] for seed in sorted(a)]
        reference = stats.ttest_rel([b[seed][name] for seed in sorted(a)], [a[seed][name] for seed in sorted(a)])
        low, high = reference.confidence_interval(0.95)
        expected = [f"{sum(differences) / 3:+.4f}", f"[{low:+.4f},", f"{high:+.4f}]", f"{reference.pvalue:.3g}"]
        assert lr[name].split()[3:7] == expected, (expected, lr["output"])
    assert lr["loss"].split()[3] != "+0.0000"  # a 10x learning rate moves the loss
    assert "The Wilcoxon signed-rank test needs 6 seeds" in lr["output"]
    assert "The test split's own 95% interval" in lr["output"]


def test_the_report_compares_the_run_with_its_baseline_commit_when_both_have_seeds(experiments, tmp_path):
    """Three seeds committed as the baseline, then the 10x learning rate in the workspace: the report's
    experiments section holds `litpipe compare HEAD workspace`'s table."""
    repo = copy_workspace(experiments["three-seeds"][0], tmp_path / "repo")
    run(["dvc", "exp", "apply", "three-seeds"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "three seeds"], repo)
    run(["dvc", "exp", "apply", "three-seeds-lr10x"], repo)
    run(["litpipe", "report"], repo)
    section = (repo / "reports/report.html").read_text().split(">Experiments")[1]
    assert "This run (B) against its baseline, the commit it started from (A), paired over their 3 common" in section
    table = compared(repo, "HEAD", "workspace")
    for name in ("accuracy", "loss"):
        difference, interval = table[name].split()[3], " ".join(table[name].split()[4:6])
        assert f"<td>{name}</td>" in section and f"<td>{difference}</td>" in section
        assert f"<td>{interval}</td>" in section


def test_fast_settings_pipeline_and_failing_sanity_stop(tmp_path):
    """A failing sanity check stops `dvc repro` before the search with a one-line reason."""
    require_tool("dvc")
    repo = copy_repo(tmp_path)
    edit_params(repo, {**FAST, "sanity.overfit_epochs": 2, "sanity.overfit_max_loss": 1.0e-6})
    result = run(["dvc", "repro"], repo, check=False)
    assert result.returncode != 0
    assert "sanity failed: the model could not overfit one batch" in result.stderr
    assert not (repo / "results/search").exists()
    assert not (repo / "results/sanity/summary.json").exists()


# --- litpipe record: a finished Snakemake run as a DVC experiment -------------------------------------------


def experiment_names(repo: Path) -> set[str]:
    return set(run(["dvc", "exp", "list", "--name-only"], repo).stdout.split())


def test_record_refuses_a_run_snakemake_has_not_finished(pipeline, tmp_path):
    """A workspace with the report missing: `snakemake --dry-run` would run it, so nothing is recorded."""
    require_tool("snakemake")
    repo = copy_workspace(pipeline[0], tmp_path / "repo")
    (repo / "reports/report.html").unlink()
    result = subprocess.run(["litpipe", "record"], cwd=repo, env=tool_env(), capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "the Snakemake run is not finished" in result.stderr and "run snakemake again" in result.stderr
    assert experiment_names(repo) == set()


def test_record_names_the_experiment_as_told(pipeline, tmp_path):
    """A finished run (every output newer than its inputs: nothing for Snakemake to do), recorded under
    --name: `dvc exp show` lists it with its params and test accuracy."""
    require_tool("snakemake")
    repo = copy_workspace(pipeline[0], tmp_path / "repo")
    recorded = run(["litpipe", "record", "--name", "cluster-run-1"], repo).stdout
    assert re.search(r"recorded as DVC experiment cluster-run-1\b", recorded), recorded
    assert experiment_names(repo) == {"cluster-run-1"}
    rows = list(csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], repo).stdout)))
    row = next(row for row in rows if row["Experiment"] == "cluster-run-1")
    tested = json.loads((repo / "results/test/metrics.json").read_text())
    assert float(row["accuracy"]) == pytest.approx(tested["accuracy"])
    assert [float(row["optim.lr"])] * 2 == learning_rates(repo)
