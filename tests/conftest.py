"""Shared fixtures: a throwaway copy of the repository and helpers to run the real tools in it."""

import importlib.util
import os
import shutil
import subprocess
import sys
import time
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


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> tuple[Path, str, float]:
    """The default pipeline, run once by `dvc repro` exactly as the README's `make repro` does:
    the repository copy, dvc's output, and the wall time. Tests that change it restore it."""
    require_tool("dvc")
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    started = time.perf_counter()
    result = run(["dvc", "repro"], repo)
    return repo, result.stdout, time.perf_counter() - started


@pytest.fixture
def digits(tmp_path, monkeypatch, default_params):
    """A temporary working directory with the digits data prepared; returns FAST params."""
    from litpipe.config import Params
    from litpipe.stages import prepare

    monkeypatch.chdir(tmp_path)
    params = Params.model_validate(default_params).override({k: v for k, v in FAST.items() if k != "search.space"})
    prepare.run(params)
    return params


def require_module(name: str) -> None:
    """An optional Python package the tests exercise (installed by `make test` through the dev extra)."""
    if importlib.util.find_spec(name) is None:
        missing(f"the {name} package is not installed (pip install -e '.[dev]')")


@pytest.fixture(scope="session")
def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())
