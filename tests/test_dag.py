"""Code dependencies complete by construction: each stage's src/litpipe deps in dvc.yaml are exactly the package
files its code imports; `litpipe dag --check` fails when they drift and `--write` puts them right.

The import closure is checked on small packages written here (each import form, with the files it must and
must not reach), and on this repository against what each stage's code really imports when it runs."""

import json
from pathlib import Path

import pytest
import yaml

from litpipe.imports import closure

from .helpers import ROOT, copy_repo, import_records, run


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
    assert "dvc.yaml: stage test: missing src/litpipe/spread.py" in checked.stderr


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
