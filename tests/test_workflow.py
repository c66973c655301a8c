"""Snakemake describes the same DAG as dvc.yaml, lints clean, and runs the pipeline locally."""

import csv
import io
import json
import os
import re
import signal
import subprocess
import threading
from contextlib import chdir
from pathlib import Path

import psutil
import pytest
import yaml
from optuna.trial import TrialState

from litpipe import paths
from litpipe.config import load_params
from litpipe.search.study import open_study

from .helpers import (
    FAST,
    ROOT,
    STAGES,
    copy_repo,
    copy_workspace,
    edit_params,
    freeze_a_worker_mid_trial,
    missing,
    require_tool,
    run,
    stop,
    tool_env,
    wait_until,
    use_network,
    write_network,
)


def snakemake_rules(repo: Path) -> dict[str, dict]:
    """Rule -> command, inputs, outputs (output and log files) and tracked params, read through Snakemake's
    own parser."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings()) as api:
        workflow = api.workflow(resource_settings=ResourceSettings(), snakefile=repo / "Snakefile", workdir=repo)
        rules = workflow._workflow.rules  # noqa: SLF001  (the API exposes execution, not rule listings)
        return {
            rule.name: {
                "cmd": getattr(rule.params, "command", rule.shellcmd),
                "inputs": {str(f) for f in rule.input},
                "outputs": {str(f) for f in [*rule.output, *rule.log]},
                "params": getattr(rule.params, "tracked", None),
            }
            for rule in rules
        }


def files_of(repo: Path, dep: str) -> set[str]:
    """A dependency as files: itself, or the files in it (a directory), as DVC hashes them."""
    path = repo / dep
    if not path.is_dir():
        return {dep}
    return {f.relative_to(repo).as_posix() for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts}


def raw_stages(repo: Path) -> dict[str, dict]:
    """dvc.yaml's stages as YAML reads them: each stage's command, deps, params, and outputs with their options."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    for spec in stages.values():
        entries = [
            entry if isinstance(entry, dict) else {entry: {}}
            for entry in spec.get("outs", []) + spec.get("metrics", [])
        ]
        spec["out_paths"] = {path for entry in entries for path, options in entry.items() if not options.get("persist")}
        spec["persistent"] = {path for entry in entries for path, options in entry.items() if options.get("persist")}
    return stages


def test_every_stage_of_dvc_yaml_is_a_snakemake_rule_with_its_command_inputs_outputs_and_params():
    """A safety net under the mechanism (the rules are built from dvc.yaml by litpipe.dag): checked against
    dvc.yaml and params.yaml as YAML reads them, not against the code that builds the rules."""
    stages, rules = raw_stages(ROOT), snakemake_rules(ROOT)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    seeds, workers = params["replicates"]["seeds"], params["search"]["n_workers"]
    assert list(stages) == STAGES
    # The stages that run in parts: the search's setup and workers, the fit's further seeds; and the default target.
    parts = {"search_setup", *(f"search_worker{index}" for index in range(workers))}
    parts |= {f"fit_seed_{seed}" for seed in seeds[1:]}
    assert set(rules) == set(stages) | parts | {"all"}
    outputs = {out for spec in stages.values() for out in spec["out_paths"] | spec["persistent"]}
    replicate_dirs = {"models/replicates", "results/replicates", "tb/replicates"}  # each further seed's entries
    assert replicate_dirs <= stages["fit"]["out_paths"]
    commands = {"search": "litpipe search --part collect", "fit": f"litpipe fit --seed {seeds[0]}"}
    for name, spec in stages.items():
        rule, first = rules[name], rules["search_setup" if name == "search" else name]
        assert rule["cmd"] == commands.get(name, spec["cmd"]), name
        assert rule["outputs"] == spec["out_paths"] - replicate_dirs, name
        # Persistent outputs (the study journal, tb/search) are what a re-run resumes from:
        # Snakemake would delete a declared output before re-running, so it must not declare them.
        assert not (rule["outputs"] & spec["persistent"]), name
        for dep in spec["deps"]:
            if dep in replicate_dirs:  # stands for each further seed's entries: none with one seed (test below)
                continue
            upstream = {out for out in outputs if dep == out or dep.startswith(out + "/")}
            assert upstream & first["inputs"] or files_of(ROOT, dep) <= first["inputs"], dep
        assert set(first["params"]) == set(spec.get("params", [])), name
        for dotted, value in first["params"].items():
            node = params
            for key in dotted.split("."):
                node = node[key]
            assert value == node, (name, dotted)
    workers_rules = [rules[f"search_worker{index}"] for index in range(workers)]
    assert [rule["cmd"] for rule in workers_rules] == [
        f"litpipe search --part worker --worker {i}" for i in range(workers)
    ]
    assert [rule["outputs"] for rule in workers_rules] == [
        {f"results/search/jobs/worker{i}.done", f"logs/search-worker{i}.log"} for i in range(workers)
    ]


def test_each_further_seed_is_a_fit_job_of_its_own_whose_outputs_the_later_rules_wait_for(tmp_path):
    """replicates.seeds [3, 1, 2]: rule `fit` trains seed 3 (the stage's own outputs), fit_seed_1 and fit_seed_2
    one seed each into dvc.yaml's replicate directories, with the fit's inputs and params; test, report and the
    default target need every seed's files."""
    repo = copy_repo(tmp_path)
    edit_params(repo, {"replicates.seeds": [3, 1, 2]})
    rules = snakemake_rules(repo)
    assert rules["fit"]["cmd"] == "litpipe fit --seed 3"
    assert {name for name in rules if name.startswith("fit_")} == {"fit_seed_1", "fit_seed_2"}
    for seed in (1, 2):
        rule = rules[f"fit_seed_{seed}"]
        assert rule["cmd"] == f"litpipe fit --seed {seed}"
        made = {
            f"models/replicates/seed-{seed}.ckpt",
            f"results/replicates/seed-{seed}",
            f"tb/replicates/seed-{seed}",
            f"logs/fit-seed-{seed}.log",
        }
        assert rule["outputs"] == made
        assert rule["inputs"] == rules["fit"]["inputs"] and rule["params"] == rules["fit"]["params"]
        assert f"models/replicates/seed-{seed}.ckpt" in rules["test"]["inputs"]
        assert f"results/replicates/seed-{seed}" in rules["report"]["inputs"]
        assert made - {f"logs/fit-seed-{seed}.log"} <= rules["all"]["inputs"]
    assert not any(name.endswith("replicates") for name in rules["test"]["inputs"] | rules["report"]["inputs"])
    planned = run(["snakemake", "--cores", "2", "--dry-run", "--quiet", "rules"], repo).stdout
    assert re.search(r"^fit_seed_1\s+1$", planned, re.MULTILINE) and re.search(r"^fit_seed_2\s+1$", planned, re.M)


def test_the_files_handed_between_stages_are_outputs_and_the_reports_inputs_are_its_deps():
    """paths.py names each file once; dvc.yaml must declare it (an output, or inside one), and the report
    stage must depend on everything the notebook reads, or DVC would not re-run the report when it changes."""
    stages = raw_stages(ROOT)
    outputs = [out for spec in stages.values() for out in spec["out_paths"] | spec["persistent"]]

    def within(path: str, candidates) -> bool:
        return any(path == c or path.startswith(c.rstrip("/") + "/") for c in candidates)

    # The report reads every stage's timing file from one directory: each file is checked below. It reads the
    # rules' benchmark files when a Snakemake run left them: no stage's outputs (paths.BENCHMARKS).
    read = {name: path for name, path in paths.report_inputs().items() if name not in ("timing", "benchmarks")}
    handed_on = [paths.SANITY_SUMMARY, paths.LR_FIND_RESULT, paths.SEARCH_BEST, paths.FIT_ACTIVATIONS]
    for path in [str(p) for p in handed_on] + list(read.values()):
        assert within(path, outputs), path
    for name, path in read.items():
        assert within(path, stages["report"]["deps"]), name
    timings = {paths.timing_file(stage).as_posix() for stage in stages if stage != "report"}
    assert timings <= set(outputs) and timings <= set(stages["report"]["deps"])


TOY_STAGE = {
    "cmd": "mkdir -p results && cp data/toy.csv results/toy.csv",
    "deps": ["data/toy.csv"],
    "params": ["report.title"],
    "outs": ["results/toy.csv"],
}


@pytest.mark.slow
def test_a_stage_added_to_dvc_yaml_runs_under_both_engines(tmp_path):
    """No other file edited: the Snakefile finds the stage, runs it, and both engines see its data change."""
    require_tool("dvc")
    require_tool("snakemake")
    repo = copy_repo(tmp_path)
    (repo / "data/toy.csv").write_text("a,b\n1,2\n")
    pipeline = yaml.safe_load((repo / "dvc.yaml").read_text())
    pipeline["stages"]["toy"] = TOY_STAGE
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))

    assert "toy" in jobs(run(["snakemake", "--cores", "2", "--dry-run"], repo))  # part of the default target
    run(["snakemake", "--cores", "2", "results/toy.csv"], repo)
    assert (repo / "results/toy.csv").read_text() == "a,b\n1,2\n"
    (repo / "results/toy.csv").unlink()
    run(["dvc", "repro", "toy"], repo)
    assert (repo / "results/toy.csv").read_text() == "a,b\n1,2\n"

    (repo / "data/toy.csv").write_text("a,b\n3,4\n")
    assert dvc_would_run(repo, "toy") == {"toy"}
    assert jobs(run(["snakemake", "--cores", "2", "--dry-run", "results/toy.csv"], repo)) == {"toy"}


def jobs(result: subprocess.CompletedProcess) -> set[str]:
    """The stages a Snakemake dry run would run: its rules, the search's (workers, re-evaluations) and the fit's fan-out
    as their stage."""
    rules = set(re.findall(r"^(?:local)?rule (\w+):$", result.stdout + result.stderr, re.MULTILINE))
    return {re.sub(r"_setup$|_worker\d+$|_reevaluate\d+_seed\d+$|_seed_\d+$", "", rule) for rule in rules} - {"all"}


def dvc_would_run(repo: Path, *targets: str) -> set[str]:
    """The stages `dvc repro` would run: each changed stage and everything downstream of it (a changed
    stage's outputs change, unless the change made no difference to them)."""
    result = run(["dvc", "repro", "--dry", "--force-downstream", *targets], repo)
    return set(re.findall(r"^Running stage '(\w+)'", result.stdout, re.MULTILINE))


EDITS = {
    "a tracked param": ("params.yaml", "  lr: 0.002", "  lr: 0.003"),
    "the report notebook": ("workflow/notebooks/report.ipynb", '"cells": [', '"cells":  ['),
}


@pytest.mark.integration
@pytest.mark.parametrize("edit", EDITS, ids=list(EDITS))
def test_an_edit_reruns_the_same_stages_under_both_engines(edit, pipeline, local_run, tmp_path):
    """On copies of a finished `dvc repro` and a finished `snakemake` run, the same edit: the same stages
    would run again."""
    path, old, new = EDITS[edit]
    would_run = {}
    for engine, finished in (("dvc", pipeline[0]), ("snakemake", local_run)):
        repo = copy_workspace(finished, tmp_path / engine)
        text = (repo / path).read_text()
        assert old in text, (path, old)
        (repo / path).write_text(text.replace(old, new, 1))
        would_run[engine] = dvc_would_run(repo) if engine == "dvc" else jobs(run(["snakemake", "-n"], repo))
    assert would_run["dvc"] == would_run["snakemake"] != set()


# A line appended to a package file: the stages that import it must re-run, and some that must not; then the
# stages a dry run of either engine must leave out (those upstream of every stage that imports it).
CODE_EDITS = {
    "checkpoints.py": ({"fit", "test"}, {"prepare", "report"}, {"prepare"}),  # how checkpoints are written, read
    "data/prepared.py": ({"sanity", "fit", "report"}, {"prepare"}, {"prepare"}),  # batching: prepare only writes
    "data/folder.py": ({"prepare"}, set(STAGES) - {"prepare"}, set()),  # a dataset loader: only prepare runs it
    "bench.py": (set(), set(STAGES), set(STAGES)),  # a tool beside the stages
}


def stages_with_changed_deps(repo: Path) -> set[str]:
    """The stages `dvc status` finds a changed dependency of (not those downstream of them)."""
    status = json.loads(run(["dvc", "status", "--json"], repo).stdout or "{}")
    return {stage for stage, changes in status.items() if any("changed deps" in change for change in changes)}


def stages_with_input(repo: Path, path: str) -> set[str]:
    """The stages whose Snakemake rules (the fan-out rules as their stage) have `path` as an input. A dry run
    names only one reason per job, and for a job downstream of another it names that one."""
    rules = {name for name, rule in snakemake_rules(repo).items() if path in rule["inputs"]}
    return {re.sub(r"_setup$|_worker\d+$|_reevaluate\d+_seed\d+$|_seed_\d+$", "", rule) for rule in rules} - {"all"}


@pytest.mark.integration
@pytest.mark.parametrize("edited", CODE_EDITS)
def test_a_code_edit_reruns_the_stages_that_import_it_under_both_engines(edited, pipeline, local_run, tmp_path):
    """On copies of a finished `dvc repro` and a finished `snakemake` run, a line appended to a package file:
    both engines see it as an input of the same stages, those whose code imports it (no others), and their dry
    runs plan the same stages; a file no stage imports re-runs nothing."""
    must, must_not, left_out = CODE_EDITS[edited]
    path = f"src/litpipe/{edited}"
    changed, planned = {}, {}
    for engine, finished in (("dvc", pipeline[0]), ("snakemake", local_run)):
        repo = copy_workspace(finished, tmp_path / engine)
        (repo / path).write_text((repo / path).read_text() + "\n# edited\n")
        if engine == "dvc":
            changed[engine], planned[engine] = stages_with_changed_deps(repo), dvc_would_run(repo)
        else:
            changed[engine], planned[engine] = stages_with_input(repo, path), jobs(run(["snakemake", "-n"], repo))
    assert changed["dvc"] == changed["snakemake"]
    assert must <= changed["dvc"] and not must_not & changed["dvc"], changed["dvc"]
    assert planned["dvc"] == planned["snakemake"]
    assert changed["dvc"] <= planned["dvc"] and not left_out & planned["dvc"], planned["dvc"]


@pytest.mark.integration
def test_a_researchers_network_is_an_input_of_the_stages_that_build_networks_under_both_engines(
    pipeline, local_run, tmp_path
):
    """The network named in params.yaml, written into dvc.yaml by `litpipe dag --write`: an edit of a file it
    imports re-runs the stages that build networks, and no other, under both engines."""
    builders = {"sanity", "lr_find", "search", "fit", "test", "analyze"}
    changed = {}
    for engine, finished in (("dvc", pipeline[0]), ("snakemake", local_run)):
        repo = copy_workspace(finished, tmp_path / engine)
        write_network(repo)
        use_network(repo)
        run(["litpipe", "dag", "--write"], repo)
        if engine == "dvc":
            run(["dvc", "commit", "--force"], repo)  # as README "Change the code": outputs accepted as they are
            assert stages_with_changed_deps(repo) == set()
        blocks = repo / "nets/blocks.py"
        blocks.write_text(blocks.read_text() + "\n# edited\n")
        if engine == "dvc":
            changed[engine] = stages_with_changed_deps(repo)
        else:
            changed[engine] = stages_with_input(repo, "nets/blocks.py")
    assert changed["dvc"] == changed["snakemake"] == builders


def test_snakemake_lint_is_clean():
    require_tool("snakemake")
    result = run(["snakemake", "--lint"], ROOT)
    output = result.stdout + result.stderr
    assert "Congratulations" in output and "Lints for" not in output


def test_invalid_params_stop_snakemake_before_scheduling(tmp_path):
    repo = copy_repo(tmp_path)
    edit_params(repo, {"optim.lr": -1})
    result = run(["snakemake", "--cores", "1", "--dry-run"], repo, check=False)
    assert result.returncode != 0
    assert "optim.lr: input should be greater than 0" in result.stdout + result.stderr


@pytest.mark.parametrize("option", [["--config", "seed=3"], ["--configfile", "params.yaml"]])
def test_snakemake_config_is_refused_not_ignored(option):
    require_tool("snakemake")
    result = run(["snakemake", "--cores", "1", "--dry-run", *option], ROOT, check=False)
    assert result.returncode != 0
    assert "snakemake --config is not read; set values in params.yaml" in result.stdout + result.stderr


def dry_run_resources(result: subprocess.CompletedProcess) -> dict[str, dict[str, str]]:
    """Rule -> the resources a dry run shows its (first) job asking for."""
    asked, rule = {}, None
    for line in result.stdout.splitlines():
        if match := re.fullmatch(r"(?:local)?rule (\w+):", line):
            rule = match[1]
        elif rule and line.startswith("    resources: "):
            asked[rule] = dict(item.split("=", 1) for item in line.removeprefix("    resources: ").split(", "))
    return asked


def test_a_sites_profile_replaces_the_default_resources(tmp_path):
    """The slurm.local/config.yaml docs/cluster.md shows, on top of the slurm profile: the rules it names ask for
    its numbers (an expression of the attempt too), the others for the defaults of workflow/rules/common.smk."""
    require_tool("snakemake")
    example = re.search(
        r"```yaml\n# slurm.local/config.yaml\n(.*?)```", (ROOT / "docs/cluster.md").read_text(), re.DOTALL
    )
    site = tmp_path / "slurm.local"
    site.mkdir()
    (site / "config.yaml").write_text(example[1])
    result = run(["snakemake", "--profile", "slurm", "--profile", str(site), "--dry-run", "--forceall"], ROOT)
    asked = dry_run_resources(result)
    assert (asked["fit"]["runtime"], asked["fit"]["mem_mb"]) == ("240", "16000")
    assert asked["sanity"]["runtime"] == "30"  # "30 * 2 ** (attempt - 1)", for the first attempt
    assert (asked["lr_find"]["runtime"], asked["lr_find"]["mem_mb"]) == ("60", "4000")  # not named: the defaults


# --- SLURM ---------------------------------------------------------------------------------------

# A second seed: a fit job of its own; a resume point at every epoch's end.
# The two best configurations trained again with each seed, a job each: the fit takes the best mean.
SLURM_FAST = {
    **FAST,
    "search.n_workers": 2,
    "search.reevaluate_top_k": 2,
    "replicates.seeds": [0, 1],
    "train.resume_every_minutes": 1e-6,
}
REEVALUATIONS = {f"search_reevaluate{candidate}_seed{seed}" for candidate in (0, 1) for seed in (0, 1)}
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/")


def slurm_cluster() -> None:
    """A running SLURM cluster (as .ci/slurm-up.sh starts one), else skip (fail under CI)."""
    require_tool("sbatch")
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.split()
    if not {"idle", "mixed", "allocated"} & set(state):
        missing(f"no SLURM node up (sinfo: {state or 'no answer'}); start one with .ci/slurm-up.sh")


def snakemake_on_slurm(*targets: str) -> list[str]:
    # The plugin waits 40 s before its first status check and 10 s between checks by default:
    # polite on a busy cluster, but most of the wall time of a DAG of short test jobs.
    return [
        "snakemake",
        "--profile",
        "slurm",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--seconds-between-status-checks",
        "1",
        *targets,
    ]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    require_tool("snakemake")
    repo = copy_repo(tmp_path_factory.mktemp("local"))
    edit_params(repo, SLURM_FAST)
    run(["snakemake", "--cores", "2"], repo)
    return repo


@pytest.mark.integration
def test_each_rule_records_its_time_and_memory_and_the_report_suggests_a_limit_for_each(local_run):
    """Snakemake's benchmark file of every rule, and each stage's own timing: the report's Runtime section
    turns them into a --time and --mem per stage and per rule, and a set-resources block for a site's profile."""
    rules = set(snakemake_rules(local_run)) - {"all"}
    benchmarks = {path.stem: path for path in (local_run / paths.BENCHMARKS).glob("*.tsv")}
    assert set(benchmarks) == rules
    for rule, path in benchmarks.items():
        measured = next(csv.DictReader(path.open(), delimiter="\t"))
        assert float(measured["s"]) > 0 and float(measured["max_rss"]) > 0, rule
    for stage in STAGES:
        timing = json.loads((local_run / paths.timing_file(stage)).read_text())
        assert timing["seconds"] > 0 and timing["peak_mb"] > 0, stage
    html = (local_run / "reports/report.html").read_text()
    assert "suggested SLURM --time" in html and "suggested SLURM --mem" in html
    assert all(f">{rule}<" in html for rule in rules - {"report"})  # the report's own is written after it
    assert "set-resources:\n  analyze:\n    runtime: 10\n    mem_mb: " in html


def search_results(repo: Path) -> list[tuple]:
    rows = csv.DictReader((repo / "results/search/trials.csv").open())
    return sorted((row["params_model.kwargs.mlp.width"], row["state"], row["value"]) for row in rows)


@pytest.mark.integration
def test_snakemake_runs_the_pipeline_locally_with_two_search_workers(local_run):
    for name, spec in raw_stages(ROOT).items():
        for output in spec["out_paths"]:
            assert (local_run / output).exists(), (name, output)
    # FAST's two-point grid, each point exactly once across the two worker jobs, and both completed.
    results = search_results(local_run)
    assert sorted(width for width, _, _ in results) == sorted(
        str(w) for w in SLURM_FAST["search.space"]["model.kwargs.mlp.width"]
    )
    assert {state for _, state, _ in results} == {"COMPLETE"}
    assert json.loads((local_run / "results/test/metrics.json").read_text())["accuracy"] > 0.5
    for index in (0, 1):  # each worker job ran until the shared study needed no more trials
        assert f"worker {index}: no trials left" in (local_run / f"logs/search-worker{index}.log").read_text()


@pytest.mark.integration
def test_the_fit_takes_the_configuration_with_the_best_mean_over_seeds_and_the_report_shows_both(local_run):
    """search.reevaluate_top_k 2 with seeds [0, 1]: each of the two best trials' configurations trained again with
    both seeds (a job each); best.json, and so the fit, takes the best mean validation loss over the seeds, and
    the report's search section shows it beside the best single trial."""
    trials = {int(row["number"]): row for row in csv.DictReader((local_run / "results/search/trials.csv").open())}
    reruns = [json.loads(path.read_text()) for path in (local_run / "results/search/jobs").glob("reevaluate*.json")]
    assert sorted((rerun["candidate"], rerun["seed"]) for rerun in reruns) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    means = {}
    for rerun in reruns:
        means.setdefault(rerun["trial"], []).append(rerun["value"])
        # The search's own seed (0) is the trial itself; the other seed is trained again, to its own number.
        reused = rerun["seed"] == SLURM_FAST.get("seed", 0)
        assert rerun.get("reused", False) == reused
        assert (rerun["value"] == float(trials[rerun["trial"]]["value"])) == reused
    means = {trial: sum(values) / len(values) for trial, values in means.items()}
    single = min(trials, key=lambda number: (float(trials[number]["value"]), number))
    best = json.loads((local_run / "results/search/best.json").read_text())
    assert best["chosen_by"] == "mean over seeds" and best["best_trial"] == single
    assert best["trial"] == min(means, key=lambda trial: (means[trial], trial))
    assert best["params"] == next(r["params"] for r in reruns if r["trial"] == best["trial"])
    fitted = json.loads((local_run / "results/fit/summary.json").read_text())["searched_params"]
    assert fitted == best["params"]
    section = (local_run / "reports/report.html").read_text().split(">Hyperparameter search")[1].split("<h2")[0]
    assert f"the fit takes trial {best['trial']}, the best <b>mean</b> validation loss" in section
    assert ("is not the best over seeds" in section) == (single != best["trial"])
    other = next(trial for trial in means if trial != best["trial"])
    assert (
        "mean val loss over seeds" in section
        and f"Trial {other} against trial {best['trial']}, paired by seed" in section
    )


@pytest.mark.integration
def test_profile_slurm_submits_every_compute_rule_and_matches_the_local_run(local_run, tmp_path):
    slurm_cluster()
    repo = copy_repo(tmp_path)
    edit_params(repo, SLURM_FAST)
    with SlurmJobStates() as states:
        result = run(snakemake_on_slurm(), repo)
    submitted = SUBMITTED.findall(result.stdout + result.stderr)
    rules = {rule for _, rule in submitted}
    workers = {"search_worker0", "search_worker1"}  # a job each
    assert rules == {
        *("sanity", "lr_find", *workers, *REEVALUATIONS, "search", "fit", "fit_seed_1", "test", "analyze", "report")
    }
    assert len(submitted) == len(rules)
    assert [states.last.get(job) for job, _ in submitted] == ["COMPLETED"] * len(submitted)  # SLURM itself ran them
    # The same outputs as the local run, with the same numbers.
    assert search_results(repo) == search_results(local_run)
    for metrics in ("results/test/metrics.json", "results/fit/metrics.json"):
        assert json.loads((repo / metrics).read_text()) == json.loads((local_run / metrics).read_text())

    # Recorded as a DVC experiment: listed with its params and test accuracy, and its outputs come back.
    recorded = run(["litpipe", "record"], repo).stdout
    name = re.search(r"recorded as DVC experiment (slurm-\S+):", recorded).group(1)
    rows = list(csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], repo).stdout)))
    row = next(row for row in rows if row["Experiment"] == name)
    test_metrics = json.loads((repo / "results/test/metrics.json").read_text())
    assert float(row["accuracy"]) == pytest.approx(test_metrics["accuracy"])
    assert int(row["search.max_epochs"]) == SLURM_FAST["search.max_epochs"]
    checkpoint = (repo / "models/best.ckpt").read_bytes()
    params = (repo / "params.yaml").read_text()
    (repo / "models/best.ckpt").unlink()  # the workspace moves on: another run's outputs, other params
    (repo / "results/test/metrics.json").write_text("{}")
    edit_params(repo, {"seed": 7})
    run(["dvc", "exp", "apply", name], repo)
    assert (repo / "params.yaml").read_text() == params
    assert (repo / "models/best.ckpt").read_bytes() == checkpoint
    assert json.loads((repo / "results/test/metrics.json").read_text()) == test_metrics


class SlurmJobStates:
    """The last state squeue showed for every job, and what it asked for, watched while a run goes on: SLURM
    forgets a finished job MinJobAge (300 s by default) after it ends, so asking once a long run is over would
    miss its first jobs. Looking every two seconds cannot miss a state that is shown for minutes."""

    def __init__(self) -> None:
        self.last: dict[str, str] = {}
        self.asked: dict[str, tuple[str, str]] = {}  # job -> (its time limit, its memory), as squeue shows them
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)

    def _look(self) -> None:
        shown = subprocess.run(
            ["squeue", "-h", "-t", "all", "-o", "%i %T %l %m"], check=False, capture_output=True, text=True
        )
        for job, state, limit, memory in (line.split() for line in shown.stdout.splitlines() if line.strip()):
            self.last[job], self.asked[job] = state, (limit, memory)

    def _watch(self) -> None:
        while not self._done.wait(2):
            self._look()

    def __enter__(self) -> "SlurmJobStates":
        self._watcher.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._watcher.join()
        self._look()  # the jobs that ended since the last look


def processes_of(command: str, workspace: Path) -> list[psutil.Process]:
    """The running `litpipe <command>` processes whose working directory is `workspace`."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        cmdline, cwd = " ".join(process.info["cmdline"] or []), process.info["cwd"]
        if cwd == str(workspace) and f"litpipe {command}" in cmdline and "srun" not in cmdline:
            found.append(process)
    return found


def job_of(process: psutil.Process) -> str:
    environ = Path(f"/proc/{process.pid}/environ").read_text().split("\0")
    return dict(v.split("=", 1) for v in environ if "=" in v)["SLURM_JOB_ID"]


def process_of(command: str, workspace: Path) -> psutil.Process | None:
    found = processes_of(command, workspace)
    return found[0] if found else None


def start_snakemake_until(args: list[str], repo: Path, progress: str, timeout: float) -> subprocess.Popen:
    """Snakemake started in the background (its output in snakemake.out beside the repository), once `progress` is
    in the fit's log (or Snakemake ended)."""
    with (repo.parent / "snakemake.out").open("w") as output:
        started = subprocess.Popen(args, cwd=repo, env=tool_env(), stdout=output, stderr=subprocess.STDOUT)
    fit_log = repo / "logs/fit.log"
    wait_until(
        lambda: started.poll() is not None or fit_log.exists() and progress in fit_log.read_text(),
        timeout,
        f"'{progress}' in the fit's log",
    )
    return started


@pytest.mark.integration
def test_a_fit_job_killed_outright_resumes_on_its_retry_to_the_same_numbers(local_run, tmp_path):
    """`scancel -s KILL` of the fit's job after a resume point: no handler runs, and the profile's retry resumes
    from the resume point and ends with the test metrics of the uninterrupted local run."""
    slurm_cluster()
    repo = copy_workspace(local_run, tmp_path / "repo")
    (repo / paths.BEST_CKPT).unlink()  # the first seed's fit and what follows it run again
    fit_log = repo / "logs/fit.log"
    fit_log.unlink()  # the local run's: it has resume points too
    started = start_snakemake_until(snakemake_on_slurm(), repo, "resume point at epoch 2:", 300)
    fit = process_of("fit --seed 0", repo)
    assert fit is not None and started.poll() is None, (tmp_path / "snakemake.out").read_text()[-3000:]
    stop(fit.pid)  # held before training ends, however fast the machine
    run(["scancel", "--signal", "KILL", job_of(fit)], repo)
    assert started.wait(timeout=900) == 0, (tmp_path / "snakemake.out").read_text()[-3000:]
    assert "resuming the fit from models/resume.ckpt" in fit_log.read_text()
    assert not (repo / paths.RESUME_CKPT).exists()
    metrics = "results/test/metrics.json"
    assert (repo / metrics).read_bytes() == (local_run / metrics).read_bytes()


DDP_ON_SLURM = {
    **FAST,
    "search.enabled": False,
    "train.accelerator": "cpu",
    "train.devices": 2,
    "train.strategy": "ddp",
    "train.max_epochs": 12,
    "train.early_stopping_patience": 50,
    "train.resume_every_minutes": 0,
}


@pytest.mark.integration
def test_a_ddp_fit_is_one_slurm_job_of_a_task_per_rank_and_a_signal_stops_both_ranks(tmp_path):
    """train.devices: 2 on CPU (gloo): the fit is one job of two tasks, each a rank started by srun. SIGUSR1 to the
    job mid-training stops both ranks at the same epoch's end with a resume point, and the profile's retry
    resumes both and finishes."""
    slurm_cluster()
    repo = copy_repo(tmp_path / "repo")
    edit_params(repo, DDP_ON_SLURM)
    one_core = ["--set-resources", "fit:cpus_per_task=1", "--set-threads", "fit=1"]  # two tasks on CI's two cores
    started = start_snakemake_until([*snakemake_on_slurm("fit"), *one_core], repo, "epoch 3/", 600)
    fit_log = repo / "logs/fit.log"
    ranks = processes_of("fit --seed 0", repo)
    assert len(ranks) == 2 and started.poll() is None, (tmp_path / "snakemake.out").read_text()[-3000:]
    assert len({job_of(rank) for rank in ranks}) == 1  # one job, two tasks
    for rank in ranks:
        stop(rank.pid)  # held mid-training: the signal lands before training ends, however fast the machine
    run(["scancel", "--signal", "USR1", job_of(ranks[0])], repo)
    for rank in ranks:
        os.kill(rank.pid, signal.SIGCONT)
    assert started.wait(timeout=900) == 0, (tmp_path / "snakemake.out").read_text()[-3000:]
    first_attempt = (repo / ".snakemake/slurm_logs/rule_fit").glob("*.log")
    preempted = [
        line for path in first_attempt for line in path.read_text().splitlines() if "fit preempted by SIGUSR1" in line
    ]
    assert len(preempted) == 2 and len({line.split(" at epoch ")[1].split(";")[0] for line in preempted}) == 1, (
        preempted
    )
    assert "resuming the fit from models/resume.ckpt" in fit_log.read_text()
    assert "resuming the fit from models/resume.ckpt" in (repo / "logs/fit.rank1.log").read_text()
    summary = json.loads((repo / paths.FIT_SUMMARY).read_text())
    assert summary["epochs"] == DDP_ON_SLURM["train.max_epochs"]


@pytest.mark.integration
def test_scancel_of_a_search_worker_then_a_rerun_completes_the_study(local_run, tmp_path):
    slurm_cluster()
    repo = copy_workspace(local_run, tmp_path / "repo")  # with a new search space, only the search re-runs
    space = {"model.kwargs.mlp.width": [8, 16, 32], "model.kwargs.mlp.depth": [1, 2]}
    edit_params(repo, {**SLURM_FAST, "search.space": space, "search.max_epochs": 6, "search.pruner": "none"})
    # Up to the search only: the rest of the DAG under SLURM is the test above's. Output to a file: a pipe
    # nobody reads while Snakemake runs would block it once full. No retries (the profile's would submit the
    # cancelled worker's job again at once): the state the cancel left is checked before the re-run.
    with (tmp_path / "snakemake.out").open("w") as output:
        started = subprocess.Popen(
            [*snakemake_on_slurm("search"), "--retries", "0"],
            cwd=repo,
            env=tool_env(),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    params = load_params(repo / "params.yaml")
    jobs_of_workers: dict[int, str] = {}

    def worker_in_a_job(number: int) -> int | None:
        """The pid of the SLURM job's worker running trial `number` (the job id noted), or None."""
        with chdir(repo):
            trial = open_study(params).trials[number]
        if trial.state != TrialState.RUNNING or "worker" not in trial.user_attrs:
            return None
        pid = int(trial.user_attrs["worker"].rpartition(":")[2])
        try:
            environ = Path(f"/proc/{pid}/environ").read_text()
        except FileNotFoundError:  # it finished its last trial and exited since the study was read
            return None
        variables = dict(v.split("=", 1) for v in environ.split("\0") if "=" in v)
        if "SLURM_JOB_ID" not in variables:
            return None
        jobs_of_workers[pid] = variables["SLURM_JOB_ID"]
        return pid

    victim, pid = freeze_a_worker_mid_trial(repo, worker_in_a_job, 6, lambda: started.poll() is None)
    run(["scancel", jobs_of_workers[pid]], repo)  # SLURM continues the stopped worker and sends it SIGTERM
    assert started.wait(timeout=600) != 0
    output = (tmp_path / "snakemake.out").read_text()
    assert "search_worker" in output and ("CANCELLED" in output or "exit status 1" in output), output[-2000:]

    # Before the re-run: the cancelled worker failed its trial and queued the point again. The other worker
    # goes on while Snakemake winds down and may take that point: then a later trial completed it.
    with chdir(repo):
        trials = open_study(params).trials
    point = trials[victim].system_attrs["fixed_params"]
    assert trials[victim].state == TrialState.FAIL
    assert point in [
        t.system_attrs["fixed_params"]
        for t in trials[victim + 1 :]
        if t.state in (TrialState.WAITING, TrialState.COMPLETE)
    ]
    before = completed_trials(repo, params)
    assert 0 < len(before) <= 6

    run(snakemake_on_slurm("search"), repo)  # the re-run: the cancelled worker's job again, then the collect
    after = completed_trials(repo, params)
    assert len(after) == 6 and len({p for p, _ in after.values()}) == 6  # every point exactly once
    assert all(after[number] == done for number, done in before.items())  # completed trials kept, not re-run


def completed_trials(repo: Path, params) -> dict[int, tuple]:
    with chdir(repo):
        trials = open_study(params).get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return {t.number: (tuple(sorted(t.params.items())), t.value) for t in trials}


# About 100 s of work: more than a 1-minute limit lets a job run (SLURM looks for jobs past their limit every
# 30 s, so it stops one 60 to 91 s after its start), less than the 2 minutes a retry gets.
SLOW_STAGE = {"cmd": "sleep 100 && mkdir -p results && echo done > results/slow.txt", "outs": ["results/slow.txt"]}


@pytest.mark.integration
def test_a_job_whose_first_attempt_runs_out_of_time_succeeds_on_its_retry_with_more(tmp_path):
    """A stage added to dvc.yaml, with the light rules' default time cut to 1 minute in common.smk (the one
    place of defaults): SLURM stops the first attempt at its limit, and the profile's retry, asking for twice
    the time and memory, completes it."""
    slurm_cluster()
    repo = copy_repo(tmp_path)
    pipeline = yaml.safe_load((repo / "dvc.yaml").read_text())
    pipeline["stages"]["slow"] = SLOW_STAGE
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    common = repo / "workflow/rules/common.smk"
    default = '"light": dict(runtime=15, mem_mb=2000,'
    assert default in common.read_text()
    common.write_text(common.read_text().replace(default, '"light": dict(runtime=1, mem_mb=2000,'))

    with SlurmJobStates() as states:
        result = run(snakemake_on_slurm("results/slow.txt"), repo)
    output = result.stdout + result.stderr
    jobs = [job for job, rule in SUBMITTED.findall(output) if rule == "slow"]
    assert len(jobs) == 2, output[-3000:]  # the first attempt and its retry
    assert f"SLURM-job '{jobs[0]}' failed, SLURM status is: 'TIMEOUT'" in output
    assert [states.last.get(job) for job in jobs] == ["TIMEOUT", "COMPLETED"]
    assert [states.asked.get(job) for job in jobs] == [("1:00", "2000M"), ("2:00", "4000M")]
    assert "DUE TO TIME LIMIT" in (repo / f".snakemake/slurm_logs/rule_slow/{jobs[0]}.log").read_text()
    assert (repo / "results/slow.txt").read_text() == "done\n"
    measured = next(csv.DictReader((repo / paths.benchmark_file("slow")).open(), delimiter="\t"))
    assert float(measured["s"]) >= 100  # the retry's wall time, in the rule's benchmark file
