"""What the tests share: a throwaway copy of the repository, the real tools run in it, skip-or-fail for
a missing tool, and the fast settings. Fixtures are in conftest.py."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the environment litpipe, dvc and friends are installed in

# Under CI (.ci/run sets this) a missing tool fails the test instead of skipping it.
REQUIRE_TOOLS = os.environ.get("LITPIPE_REQUIRE_TOOLS") == "1"


def missing(message: str) -> None:
    """A real component a test needs is absent: skip on a laptop, fail under CI."""
    if REQUIRE_TOOLS:
        pytest.fail(f"{message} (LITPIPE_REQUIRE_TOOLS=1)")
    pytest.skip(message)


def require_tool(name: str) -> str:
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        missing(f"{name} is not installed")
    return path


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # dvc exp commits to hidden refs; CI machines may have no git identity.
    for who in ("AUTHOR", "COMMITTER"):
        env.setdefault(f"GIT_{who}_NAME", "litpipe tests")
        env.setdefault(f"GIT_{who}_EMAIL", "tests@litpipe.invalid")
    env.pop("CUBLAS_WORKSPACE_CONFIG", None)
    return env


def run(args: list[str], cwd: Path, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


def copy_repo(destination: Path) -> Path:
    """The working tree (tracked and new files, not ignored ones) as a fresh git repository."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    # The copy starts clean: no outputs or lock from a run in the source tree.
    (destination / "dvc.lock").unlink(missing_ok=True)
    for name in ("results/test/metrics.json", "results/fit/metrics.json"):
        (destination / name).unlink(missing_ok=True)
    run(["git", "init", "-q", "-b", "main"], destination)
    run(["git", "add", "-A"], destination)
    run(["git", "commit", "-q", "-m", "copy of litpipe for a test"], destination)
    return destination


def copy_workspace(finished: Path, destination: Path) -> Path:
    """A copy of a workspace a fixture finished, for a test that changes it: files, times (which Snakemake
    compares), git, the DVC cache and Snakemake's records."""
    shutil.copytree(finished, destination, symlinks=True)
    return destination


def edit_params(repo: Path, changes: dict[str, object]) -> None:
    """Set dotted keys in the copy's params.yaml."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


# Small enough that the whole DAG runs in well under a minute on two cores.
FAST = {
    "train.max_epochs": 6,
    "train.early_stopping_patience": 2,
    "sanity.overfit_epochs": 60,
    "lr_find.num_training": 20,
    "search.max_epochs": 3,
    "search.space": {"model.width": [32, 64]},
}


STAGES = ["prepare", "sanity", "lr_find", "search", "fit", "test", "analyze", "report"]


def require_module(name: str) -> None:
    """An optional Python package the tests exercise (installed by `make test` through the dev extra)."""
    if importlib.util.find_spec(name) is None:
        missing(f"the {name} package is not installed (pip install -e '.[dev]')")
