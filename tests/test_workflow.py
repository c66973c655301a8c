"""Snakemake describes the same DAG as dvc.yaml, lints clean, and runs the pipeline locally."""

import json
from pathlib import Path

import pytest
import yaml

from .conftest import FAST, ROOT, STAGES, copy_repo, edit_params, require_tool, run

# Snakemake-only rules: the search's fan-out (setup, then N workers before `search` collects)
# and the default target.
SNAKEMAKE_ONLY = {"all", "search_setup", "search_worker"}


def dvc_stages() -> dict[str, dict]:
    """Stage -> command, outputs (outs and metrics), persistent outputs."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    described = {}
    for name, stage in stages.items():
        outputs, persistent = set(), set()
        for entry in stage.get("outs", []) + stage.get("metrics", []):
            path, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
            (persistent if options.get("persist") else outputs).add(path)
        described[name] = {"cmd": stage["cmd"], "outputs": outputs, "persistent": persistent}
    return described


def snakemake_rules(repo: Path) -> dict[str, dict]:
    """Rule -> shell command and outputs (output and log files), read through Snakemake's own parser."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings()) as api:
        workflow = api.workflow(resource_settings=ResourceSettings(), snakefile=repo / "Snakefile", workdir=repo)
        rules = workflow._workflow.rules  # noqa: SLF001  (the API exposes execution, not rule listings)
        return {
            rule.name: {"cmd": rule.shellcmd, "outputs": {str(f) for f in [*rule.output, *rule.log]}} for rule in rules
        }


def test_dvc_yaml_and_snakefile_describe_the_same_stages():
    dvc, snakemake = dvc_stages(), snakemake_rules(ROOT)
    assert list(dvc) == STAGES
    assert set(snakemake) - SNAKEMAKE_ONLY == set(dvc)
    for name, stage in dvc.items():
        rule = snakemake[name]
        # The fanned-out search's closing rule runs the stage's collect part.
        fan_out = f"{name}_worker" in snakemake
        assert rule["cmd"] == stage["cmd"] + (" --part collect" if fan_out else ""), name
        assert rule["outputs"] == stage["outputs"], name
        # Persistent outputs (the study journal, tb/search) are what a re-run resumes from:
        # Snakemake would delete a declared output before re-running, so it must not declare them.
        assert not (rule["outputs"] & stage["persistent"]), name


def test_parity_check_notices_a_drifted_output(tmp_path):
    """The comparison above is not vacuous: a renamed output in the Snakefile breaks it."""
    repo = copy_repo(tmp_path)
    rules = repo / "workflow/rules/training.smk"
    rules.write_text(rules.read_text().replace('"results/fit/curves.png"', '"results/fit/curve.png"'))
    assert snakemake_rules(repo)["fit"]["outputs"] != dvc_stages()["fit"]["outputs"]


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


@pytest.mark.integration
def test_snakemake_runs_the_pipeline_locally_with_two_search_workers(tmp_path):
    require_tool("snakemake")
    repo = copy_repo(tmp_path)
    edit_params(repo, {**FAST, "search.n_workers": 2})
    run(["snakemake", "--cores", "2"], repo)
    for stage, outputs in ((s, d["outputs"]) for s, d in dvc_stages().items()):
        for output in outputs:
            assert (repo / output).exists(), (stage, output)
    trials = (repo / "results/search/trials.csv").read_text().splitlines()
    assert len(trials) == 1 + 2  # FAST's two-point grid, each point once across the two worker jobs
    assert json.loads((repo / "results/test/metrics.json").read_text())["accuracy"] > 0.5
    assert (repo / "logs/search-worker0.log").exists() and (repo / "logs/search-worker1.log").exists()
