"""What the tests share: a throwaway copy of the repository, the real tools run in it, skip-or-fail for
a missing tool, and the fast settings. Fixtures are in conftest.py."""

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the environment litpipe, dvc and friends are installed in

# Under CI (.ci/run sets this) every skip but a needs_gpu test's is a failure (conftest.py's report hook).
REQUIRE_TOOLS = os.environ.get("LITPIPE_REQUIRE_TOOLS") == "1"


def missing(message: str) -> None:
    """A real component a test needs is absent: skip on a laptop; under CI the skip is reported as a failure."""
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


def run(
    args: list[str], cwd: Path, check: bool = True, timeout: float = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a tool in `cwd` (with `env` added to the tools' environment); its output, or an error with it."""
    result = subprocess.run(
        args, cwd=cwd, env={**tool_env(), **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
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


IMPORT_RECORDER = Path(__file__).parent / "import_recorder"  # a sitecustomize.py: see its docstring


def import_records(repo: Path) -> Path:
    """Where the pipeline fixture's processes record the litpipe modules they loaded: beside the workspace."""
    return repo.with_name(f"{repo.name}.imports")


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
    "search.space": {"model.kwargs.mlp.width": [32, 64]},
}


STAGES = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])  # in dvc.yaml's order (the run's)


def chromium() -> str:
    """Debian's headless Chromium, driven through playwright, for the tests that open the report."""
    path = shutil.which("chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        missing("needs Debian's chromium and the playwright package")
    return path


def require_module(name: str) -> None:
    """An optional Python package the tests exercise (installed by `make test` through the dev extra)."""
    if importlib.util.find_spec(name) is None:
        missing(f"the {name} package is not installed (pip install -e '.[dev]')")


def assert_checkpoint_is_averaged(path: Path) -> int:
    """The checkpoint holds a weight average, not the raw weights being trained: Lightning's WeightAveraging
    saves the average as `state_dict`, the trained weights as `current_model_state` and the average's own
    state (how many weight sets it holds, `n_averaged`) as `averaging_state`. Returns that count."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert "averaging_state" in checkpoint, f"{path} holds raw weights: the average never got into it"
    averaged = int(checkpoint["averaging_state"]["n_averaged"])
    assert averaged > 0, f"{path} holds an average of nothing (n_averaged {averaged})"
    average, trained = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert average.keys() == trained.keys()
    assert any(not torch.equal(average[name], trained[name]) for name in trained), "the average is the raw weights"
    return averaged


Seen = TypeVar("Seen")


def wait_until(event: Callable[[], Seen], timeout: float, what: str) -> Seen:
    """Wait for an observable event (what `event` returns once it is truthy), failing at a deadline; the
    short pause between looks only spares the CPU."""
    deadline = time.monotonic() + timeout
    while not (seen := event()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        time.sleep(0.05)
    return seen


TRIAL_EPOCH = re.compile(r" trial (\d+) epoch (\d+)/\d+ ")
TRIAL_ENDED = re.compile(r" worker \d+: trial (\d+) [A-Z]+$")


def search_progress(workspace: Path) -> tuple[dict[int, int], set[int]]:
    """What the search workers have logged (logs/search*.log): the epochs each trial has trained, and the
    trials that ended. A line still being written is not read."""
    epochs, ended = {}, set()
    for log in (workspace / "logs").glob("search*.log"):
        for line in log.read_text(errors="replace").split("\n")[:-1]:
            if trained := TRIAL_EPOCH.search(line):
                epochs[int(trained[1])] = int(trained[2])
            elif finished := TRIAL_ENDED.search(line):
                ended.add(int(finished[1]))
    return epochs, ended


def is_stopped(pid: int) -> bool:
    """SIGSTOP has taken effect: the process is in state T (/proc/<pid>/stat, after the command's name)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in ("T", "t")


def stop(pid: int) -> None:
    """SIGSTOP, and wait until it has taken effect."""
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: is_stopped(pid), 10, f"stop of process {pid}")


def catches(pid: int, signum: signal.Signals) -> bool:
    """The process has a handler of its own for the signal (the SigCgt mask of /proc/<pid>/status): without
    one, the signal takes its default action, which for SIGTERM and SIGUSR1 ends the process."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.MULTILINE)[1], 16)
    return bool(caught >> (signum - 1) & 1)


def expected_spread(values: list[float]) -> dict[str, float]:
    """The spread over seeds as specified, computed here with NumPy and SciPy: the mean, the sample standard
    deviation and Student's t 95% interval of the mean; for identical values (no spread) std 0 and the
    interval [x, x] (SciPy's t.interval gives nan for a scale of 0)."""
    data = np.asarray(values, dtype=float)
    if np.all(data == data[0]):
        return {"mean": data[0], "std": 0.0, "ci95_low": data[0], "ci95_high": data[0]}
    low, high = stats.t.interval(0.95, len(data) - 1, loc=data.mean(), scale=stats.sem(data))
    return {"mean": data.mean(), "std": data.std(ddof=1), "ci95_low": low, "ci95_high": high}


def freeze_a_worker_mid_trial(
    workspace: Path, worker_of: Callable[[int], int | None], max_epochs: int, alive: Callable[[], bool]
) -> tuple[int, int]:
    """Stop (SIGSTOP) a search worker in the middle of a trial's training, once another trial has completed,
    and return (that trial's number, the worker's pid) with the worker still stopped.

    A signal sent to it now lands during training: its log shows at least one epoch of the trial (so the
    Trainer and its SIGTERM handling are running) and two to go (Lightning acts on SIGTERM at an epoch's end;
    scancel continues a job's processes just before it signals them), and it cannot move on until it is
    continued (SIGCONT). `worker_of` gives the pid of the worker running a trial, or None; `alive` says
    whether the run under test still runs."""

    def frozen_mid_trial() -> tuple[int, int] | None:
        assert alive(), "the search ended before a trial could be interrupted"
        epochs, ended = search_progress(workspace)
        training = [n for n, k in epochs.items() if n not in ended and k < max_epochs - 1]
        if not ended or not training or (pid := worker_of(training[0])) is None:
            return None
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:  # it finished its last trial and exited since the study was read
            return None
        wait_until(lambda: is_stopped(pid), 10, f"stop of worker {pid}")
        epochs, ended = search_progress(workspace)  # it may have moved on between the two looks
        if training[0] not in ended and epochs[training[0]] < max_epochs - 1:
            return training[0], pid
        os.kill(pid, signal.SIGCONT)
        return None

    return wait_until(frozen_mid_trial, 300, "trial seen training after another completed")


def ready_to_fit(workspace: Path, params: dict, changes: dict) -> Path:
    """`workspace` with params.yaml (`params` with dotted `changes`), the data prepared and an (empty) search
    result: what the fit needs."""
    from litpipe import paths
    from litpipe.config import Params
    from litpipe.io import write_json
    from litpipe.stages import prepare

    validated = Params.model_validate(params).override(changes)
    (workspace / "params.yaml").write_text(yaml.safe_dump(validated.model_dump(), sort_keys=False))
    cwd = os.getcwd()
    os.chdir(workspace)
    try:
        prepare.run(validated)
        write_json(paths.SEARCH_BEST, {"params": {}})
    finally:
        os.chdir(cwd)
    return workspace


# --- a researcher's own network ------------------------------------------------------------------------------

# A researcher's small ResNet with BatchNorm, two constructor arguments of its own, in a file of the repository
# that imports a sibling module of its package.
BLOCKS = '''
from torch import nn


class Residual(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
        )

    def forward(self, x):
        return nn.functional.relu(x + self.body(x))
'''
NETWORK = '''
from torch import nn

from nets.blocks import Residual


class SmallResNet(nn.Module):
    def __init__(self, input_shape, num_classes, channels: int, blocks: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.stage1 = nn.Sequential(*[Residual(channels) for _ in range(blocks)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x):
        return self.head(self.stage1(self.stem(x)))


class NoShapes(nn.Module):
    """Takes neither input_shape nor num_classes: sized by its arguments alone."""

    def __init__(self, features: int, outputs: int):
        super().__init__()
        self.flatten, self.linear = nn.Flatten(), nn.Linear(features, outputs)

    def forward(self, x):
        return self.linear(self.flatten(x))


def helper():
    return 1
'''


def write_network(repo: Path) -> None:
    """The researcher's package `nets` at the repository root: nets/small.py, which imports nets/blocks.py."""
    (repo / "nets").mkdir()
    (repo / "nets/__init__.py").write_text("")
    (repo / "nets/blocks.py").write_text(BLOCKS)
    (repo / "nets/small.py").write_text(NETWORK)


def use_network(repo: Path, arch: str = "nets/small.py:SmallResNet", searched: list[str] | None = None) -> None:
    """params.yaml trains `arch` (SmallResNet, however it is named) with two arguments of its own (the search
    varies its channels, and the network among `searched`); its comments and every other line stay."""
    path = repo / "params.yaml"
    text = re.sub(r"(?m)^  arch: \S+", f"  arch: {arch}", path.read_text(), count=1)
    text = re.sub(r"(?m)^  kwargs:.*\n", lambda m: f"{m[0]}    SmallResNet:\n      channels: 8\n      blocks: 1\n", text, count=1)
    space = "    model.kwargs.SmallResNet.channels: [8, 16]\n" + (f"    model.arch: [{', '.join(searched)}]\n" if searched else "")
    text = re.sub(r"(?m)^  space:(.*)\n(    .*\n)+", lambda m: f"  space:{m[1]}\n{space}", text, count=1)
    path.write_text(text)
