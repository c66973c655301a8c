"""Code dependencies complete by construction: each stage's src/litpipe deps in dvc.yaml are exactly the package
files its code imports; `litpipe dag --check` fails when they drift and `--write` puts them right.

The import closure is checked on small packages written here (each import form, with the files it must and
must not reach), and on this repository against what each stage's code really imports when it runs."""

import json
from contextlib import chdir
from pathlib import Path

import pytest
import yaml

from litpipe.config import load_params
from litpipe.errors import ConfigError
from litpipe.imports import closure
from litpipe.stages import sanity

from .helpers import ROOT, copy_repo, import_records, run, use_network, write_network


def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


PACKAGE = {
    "litpipe/__init__.py": "",
    "litpipe/top.py": "import os\nfrom litpipe import plain, plugins, sub\nfrom litpipe.named import thing\n",
    "litpipe/plain.py": "import numpy\n",
    "litpipe/named.py": "thing = 1\n",
    "litpipe/sub/__init__.py": "from . import relative\n",
    "litpipe/sub/relative.py": "from ..lazy import nothing  # noqa\n",
    "litpipe/lazy.py": "def later():\n    import litpipe.deep.inner\n",
    "litpipe/deep/__init__.py": "",
    "litpipe/deep/inner.py": "from .sibling import x\n",
    "litpipe/deep/sibling.py": "x = 1\n",
    "litpipe/unused.py": "import litpipe.top\n",  # imports the root, but nothing imports it
    "litpipe/plugins.py": "import importlib\nimportlib.import_module('litpipe.dynamic')\n"
    "name = 'litpipe.' + 'unnamed'\nimportlib.import_module(name)\n",
    "litpipe/dynamic.py": "",  # imported by a name written out
    "litpipe/unnamed.py": "",  # imported by a name made at run time: a root, for whoever asks
}


def test_the_closure_follows_every_import_form_and_nothing_else(tmp_path):
    write_package(tmp_path, PACKAGE)
    found = {
        path.relative_to(tmp_path / "src").as_posix()
        for path in closure([tmp_path / "src/litpipe/top.py"], tmp_path / "src")
    }
    assert found == {
        "litpipe/__init__.py",
        "litpipe/top.py",  # the root itself
        "litpipe/plain.py",  # from litpipe import module
        "litpipe/named.py",  # from litpipe.module import name
        "litpipe/sub/__init__.py",  # a package runs its __init__
        "litpipe/sub/relative.py",  # from . import module
        "litpipe/lazy.py",  # from ..module import name
        "litpipe/deep/__init__.py",  # an import inside a function, through its package
        "litpipe/deep/inner.py",
        "litpipe/deep/sibling.py",  # from .module import name
        "litpipe/plugins.py",
        "litpipe/dynamic.py",  # importlib.import_module("litpipe.dynamic")
    }


def test_a_root_in_the_package_brings_the_packages_it_is_in(tmp_path):
    """The CLI imports a stage's module by a name made at run time: a root, whose import runs its package's
    __init__.py as well."""
    write_package(tmp_path, PACKAGE)
    found = {
        path.relative_to(tmp_path / "src").as_posix()
        for path in closure([tmp_path / "src/litpipe/deep/sibling.py"], tmp_path / "src")
    }
    assert found == {"litpipe/__init__.py", "litpipe/deep/__init__.py", "litpipe/deep/sibling.py"}


def test_the_closure_of_a_notebook_is_that_of_its_code_cells(tmp_path):
    write_package(tmp_path, PACKAGE)
    notebook = tmp_path / "report.ipynb"
    cells = [
        {"cell_type": "markdown", "source": ["import litpipe.unused  (prose, not code)"]},
        {"cell_type": "code", "source": ["%matplotlib inline\n", "!ls\n", "from litpipe.deep import inner\n"]},
    ]
    notebook.write_text(json.dumps({"cells": cells}))
    found = {path.relative_to(tmp_path / "src").as_posix() for path in closure([notebook], tmp_path / "src")}
    assert found == {
        "litpipe/__init__.py",
        "litpipe/deep/__init__.py",
        "litpipe/deep/inner.py",
        "litpipe/deep/sibling.py",
    }


def test_dvc_yaml_lists_exactly_what_each_stage_imports():
    result = run(["litpipe", "dag", "--check"], ROOT, check=False)
    assert result.returncode == 0, result.stderr


def code_deps_in(repo: Path) -> dict[str, set[str]]:
    """Each stage's src/litpipe deps, read from dvc.yaml as YAML."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    return {
        name: {dep for dep in spec.get("deps", []) if dep.startswith("src/litpipe/")} for name, spec in stages.items()
    }


def test_a_new_import_is_drift_until_written_and_writing_keeps_everything_else(tmp_path):
    repo = copy_repo(tmp_path)
    before = code_deps_in(repo)
    assert "src/litpipe/spread.py" not in before["analyze"]
    module = repo / "src/litpipe/stages/analyze.py"
    # An import inside a function, of a module the stage did not import before.
    module.write_text(module.read_text() + "\n\ndef later():\n    from litpipe import spread\n\n    return spread\n")
    checked = run(["litpipe", "dag", "--check"], repo, check=False)
    assert checked.returncode == 1
    drift = [line for line in checked.stderr.splitlines() if line.startswith("dvc.yaml:")]
    assert drift == ["dvc.yaml: stage analyze: missing src/litpipe/spread.py"], checked.stderr

    text = (repo / "dvc.yaml").read_text()
    run(["litpipe", "dag", "--write"], repo)
    after = code_deps_in(repo)
    assert after == {**before, "analyze": before["analyze"] | {"src/litpipe/spread.py"}}
    assert run(["litpipe", "dag", "--check"], repo).returncode == 0
    # Only that line is new: comments, the other deps and every other stage stay as they were.
    written = (repo / "dvc.yaml").read_text().splitlines()
    assert sorted(written) == sorted(text.splitlines() + ["      - src/litpipe/spread.py"])
    assert [line for line in written if "#" in line] == [line for line in text.splitlines() if "#" in line]


def test_a_dep_written_by_hand_is_drift_both_ways(tmp_path):
    repo = copy_repo(tmp_path)
    pipeline = (repo / "dvc.yaml").read_text()
    # One stage loses a file it imports, another gains one it does not import.
    pipeline = pipeline.replace("      - src/litpipe/spread.py\n", "", 1)
    pipeline = pipeline.replace(
        "      - src/litpipe/stages/prepare.py\n",
        "      - src/litpipe/stages/prepare.py\n      - src/litpipe/bench.py\n",
    )
    (repo / "dvc.yaml").write_text(pipeline)
    checked = run(["litpipe", "dag", "--check"], repo, check=False)
    assert checked.returncode == 1
    assert "dvc.yaml: stage prepare: not imported src/litpipe/bench.py" in checked.stderr
    assert "dvc.yaml: stage search: missing src/litpipe/spread.py" in checked.stderr  # its first stage


def test_the_notebook_and_the_data_loaders_are_where_they_run():
    """The report's notebook imports litpipe modules that the report stage's own module does not; only prepare
    runs the dataset loaders; prepare never reads the prepared splits' loader."""
    deps = code_deps_in(ROOT)
    assert "src/litpipe/experiments.py" in deps["report"]  # imported by workflow/notebooks/report.ipynb
    loaders = {"src/litpipe/data/folder.py", "src/litpipe/data/torchvision_sets.py", "src/litpipe/data/synthetic.py"}
    assert {stage for stage, files in deps.items() if files & loaders} == {"prepare"}
    assert "src/litpipe/data/prepared.py" not in deps["prepare"]
    assert {stage for stage, files in deps.items() if "src/litpipe/checkpoints.py" in files} >= {"fit", "test"}
    assert not {stage for stage, files in deps.items() if files & {"src/litpipe/bench.py", "src/litpipe/codedeps.py"}}


def stage_of(argv: list[str]) -> str | None:
    """The stage a recorded process ran: `litpipe <stage> ...` or `python -m litpipe.cli <stage> ...` (search
    workers, further seeds), or the report's notebook kernel; None for anything else."""
    if argv[0].endswith(("/litpipe", "/litpipe/cli.py")):
        return argv[1]
    return "report" if "ipykernel_launcher" in argv[0] else None


@pytest.mark.slow
def test_what_each_stage_imports_when_it_runs_is_among_its_deps(pipeline):
    """The safety net under the static closure: every litpipe module that each process of the default
    pipeline loaded (recorded as it exited, tests/import_recorder) is among its stage's deps."""
    declared, loaded = code_deps_in(pipeline[0]), {}
    for record in map(json.loads, (path.read_text() for path in import_records(pipeline[0]).glob("*.json"))):
        stage = stage_of(record["argv"])
        if stage is not None:
            files = {Path(file).relative_to(ROOT).as_posix() for file in record["files"]}
            loaded[stage] = loaded.get(stage, set()) | files
    assert set(loaded) == set(declared), "a stage's processes were not recorded"
    for stage, files in loaded.items():
        assert files <= declared[stage], (stage, sorted(files - declared[stage]))


# --- a researcher's own network: a dependency of the stages that build networks -------------------------------

BUILDERS = {"sanity", "lr_find", "search", "fit", "test", "analyze"}  # their code imports models/zoo.py


def network_deps_in(repo: Path) -> dict[str, set[str]]:
    """Each stage's deps under nets/, read from dvc.yaml as YAML."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    return {name: {dep for dep in spec.get("deps", []) if dep.startswith("nets/")} for name, spec in stages.items()}


@pytest.mark.parametrize("arch", ["nets/small.py:SmallResNet", "nets.small:SmallResNet"])
def test_the_network_params_name_is_written_to_the_stages_that_build_networks(tmp_path, arch):
    repo = copy_repo(tmp_path)
    write_network(repo)
    (repo / "nets/unused.py").write_text("import torch\n")  # in the package, imported by nothing
    use_network(repo, arch)
    checked = run(["litpipe", "dag", "--check"], repo, check=False)
    assert checked.returncode == 1
    assert "dvc.yaml: stage sanity: missing nets/__init__.py, nets/blocks.py, nets/small.py" in checked.stderr
    run(["litpipe", "dag", "--write"], repo)
    files = {"nets/__init__.py", "nets/blocks.py", "nets/small.py"}  # the file, and what it imports
    assert network_deps_in(repo) == {stage: files if stage in BUILDERS else set() for stage in network_deps_in(ROOT)}
    assert run(["litpipe", "dag", "--check"], repo).returncode == 0

    # Back to litpipe's own network: the files go again, and nothing else changed.
    (repo / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    assert run(["litpipe", "dag", "--check"], repo, check=False).returncode == 1
    run(["litpipe", "dag", "--write"], repo)
    assert (repo / "dvc.yaml").read_text() == (ROOT / "dvc.yaml").read_text()


def test_the_networks_the_search_may_choose_are_deps_while_it_is_on(tmp_path):
    repo = copy_repo(tmp_path)
    write_network(repo)
    (repo / "other.py").write_text("from nets.blocks import Residual\n\n\nclass Other(Residual):\n    pass\n")
    use_network(repo, "mlp", searched=["mlp", "other.py:Other", "torch.nn:Identity"])  # torch: installed, not ours
    run(["litpipe", "dag", "--write"], repo)
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert {dep for dep in stages["search"]["deps"] if not dep.startswith(("src/", "data/", "results/"))} == {
        "other.py",
        "nets/__init__.py",
        "nets/blocks.py",
    }
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("  enabled: true", "  enabled: false", 1))
    run(["litpipe", "dag", "--write"], repo)
    assert "other.py" not in (repo / "dvc.yaml").read_text()


def test_a_stage_refuses_a_network_dvc_yaml_does_not_list(tmp_path):
    """`dvc exp run -S model.arch=nets/small.py:SmallResNet` without `litpipe dag --write`: editing the network
    would re-run nothing, so the stages that build it refuse (their `check`, which cli.py runs before any work:
    the CLI's path for such refusals is in test_faults.py)."""
    repo = copy_repo(tmp_path)
    write_network(repo)
    use_network(repo)
    with chdir(repo), pytest.raises(ConfigError) as refused:
        sanity.check(load_params())
    assert str(refused.value) == (
        "model.arch: dvc.yaml does not list nets/__init__.py, nets/blocks.py, nets/small.py among the deps of the "
        "stages that build the network, so editing it would re-run nothing; run `litpipe dag --write`"
    )
    run(["litpipe", "dag", "--write"], repo)
    with chdir(repo):
        sanity.check(load_params())
