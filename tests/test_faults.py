"""Fault injection: every way a run can go wrong that a researcher will meet, each loud, one line, and
losing nothing; every interruption recoverable to the same numbers.

- bad params.yaml: exit 2, one line naming the key, no output touched;
- stages out of order, a missing dataset or device: one line naming the file (and the stage that makes it);
- damaged data and checkpoints: one line naming the file; nothing in a checkpoint's pickle runs;
- SIGTERM or SIGUSR1 anywhere in a fit: run again, the test metrics are byte-identical;
- two `dvc repro` at once; a study database that cannot be reached;
- markup in the strings the report shows; the servers the README starts.
"""

import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from litpipe import paths

from .helpers import (
    ROOT,
    assert_checkpoint_is_averaged,
    catches,
    chromium,
    copy_repo,
    copy_workspace,
    edit_params,
    ready_to_fit,
    require_tool,
    run,
    stop,
    tool_env,
    wait_until,
)


def litpipe(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["litpipe", *args], cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=300)


def snapshot(workspace: Path) -> dict[str, bytes | None]:
    """Every file's bytes, and every directory (None), under the workspace but git's own records."""
    return {
        str(path.relative_to(workspace)): None if path.is_dir() else path.read_bytes()
        for path in sorted(workspace.rglob("*"))
        if ".git" not in path.relative_to(workspace).parts
    }


def assert_one_line_failure(result: subprocess.CompletedProcess, code: int, *named: str) -> None:
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    assert result.stderr.count("\n") == 1, result.stderr
    for name in named:
        assert name in result.stderr, result.stderr


def assert_unchanged(workspace: Path, before: dict[str, bytes | None], failed_log: str | None = None) -> None:
    """No file created, removed or rewritten; but for `failed_log`, the failed stage's log, when it ran."""
    after = snapshot(workspace)
    if failed_log:
        assert "failed" in (workspace / failed_log).read_text()
        del after[failed_log]
    assert after.keys() == before.keys(), "files created or removed"
    assert [name for name in before if after[name] != before[name]] == [], "files rewritten"


# --- params.yaml: exit 2, one line naming the key, before any work -----------------------------------

# (line of params.yaml, what it becomes, what the one line says)
BAD_PARAMS = {
    "bool as a number": ("  lr: 0.002", "  lr: true", "optim.lr: input should be a valid number (got True)"),
    "string as an integer": ("  batch_size: 64", "  batch_size: '64'", "train.batch_size: input should be a valid integer"),
    "float as an integer": ("  batch_size: 64", "  batch_size: 1e3", "train.batch_size: input should be a valid integer (got 1000.0)"),
    "number as a boolean": ("  compile: false", "  compile: 0", "train.compile: input should be a valid boolean"),
    "yes as a boolean": ("  histograms: true", "  histograms: yes", "observe.histograms: input should be a valid boolean (got 'yes')"),
    "number as a string": ("  title: litpipe report", "  title: 5", "report.title: input should be a valid string"),
    "infinite weight decay": ("  weight_decay: 0.0001", "  weight_decay: .inf", "optim.weight_decay: input should be a finite number"),
    "nan clipping": ("  gradient_clip_val: 1.0", "  gradient_clip_val: .nan", "train.gradient_clip_val: input should be a finite number"),
    "infinite lr range": ("  max_lr: 1.0", "  max_lr: .inf", "lr_find.max_lr: input should be a finite number"),
    "infinite search value": ("    model.kwargs.mlp.dropout: [0.1, 0.3]", "    model.kwargs.mlp.dropout: [0.1, .inf]", "search.space.model.kwargs.mlp.dropout"),
    "infinite search range": ("    model.kwargs.mlp.dropout: [0.1, 0.3]", "    model.kwargs.mlp.dropout: {low: 0.1, high: .inf}", "search.space.model.kwargs.mlp.dropout"),
    "seed beyond 2**32": ("\nseed: 0\n", "\nseed: 1180591620717411303424\n", "seed: input should be less than or equal to 4294967295"),
    "negative split seed": ("  split_seed: 0", "  split_seed: -1", "data.split_seed: input should be greater than or equal to 0"),
    "count beyond a C int": ("  max_epochs: 60", "  max_epochs: 99999999999", "train.max_epochs: input should be less than or equal to 2147483647"),
    "fraction out of range": ("  val_fraction: 0.15", "  val_fraction: 1.0", "data.val_fraction: input should be less than 1"),
    "misspelt key": ("  stem: auto", "  steam: auto", "model.steam: unknown key (did you mean stem?)"),
    "unknown section": ("report:\n", "reprot:\n", "reprot: unknown key"),
    "misspelt search key": ("    model.kwargs.mlp.width: [128, 512]", "    model.widht: [128, 512]", "search.space: unknown key 'model.widht'"),
    "misspelt range key": ("    model.kwargs.mlp.dropout: [0.1, 0.3]", "    model.kwargs.mlp.dropout: {low: 0.1, hihg: 0.3}", "unknown key 'hihg'"),
    "duplicate key": ("      width: 256", "      width: 256\n      width: 512", "model.kwargs.mlp.width is written twice"),
    "duplicate top-level key": ("\nseed: 0\n", "\nseed: 0\nseed: 1\n", "seed is written twice"),
    "no such option": ("  stem: auto", "  stem: tiny", "model.stem: input should be 'auto', 'small' or 'standard'"),
    "no such sampler": ("  sampler: grid", "  sampler: bayes", "search.sampler: input should be 'grid', 'random' or 'tpe'"),
    "no such dataset": ("  dataset: digits", "  dataset: imagenet", "data.dataset: unknown dataset 'imagenet'"),
    "a seed listed twice": ("  seeds: [0]", "  seeds: [0, 1, 0]", "replicates.seeds: seed 0 is listed twice"),
    "no seeds": ("  seeds: [0]", "  seeds: []", "replicates.seeds: list should have at least 1 item"),
    "a seed as a string": ("  seeds: [0]", "  seeds: [0, '1']", "replicates.seeds.1: input should be a valid integer"),
    "one seed, not a list": ("  seeds: [0]", "  seeds: 3", "replicates.seeds: input should be a valid list"),
    "no replicate workers": ("  n_workers: 2             # replicate", "  n_workers: 0             # replicate", "replicates.n_workers: input should be greater than or equal to 1"),
}  # fmt: skip
BAD_FILES = {
    "empty": ("", "params.yaml: empty"),
    "unparsable": ("seed: [0\n", "params.yaml: line 2: not valid YAML"),
    "a list": ("- seed\n", "params.yaml: expected a mapping of sections at the top level"),
    "a python object": ("seed: !!python/object:os.system {}\n", "params.yaml: line 1: not valid YAML"),
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A workspace where `litpipe prepare` finished: splits, meta.json, its log and its timing."""
    workspace = tmp_path_factory.mktemp("prepared")
    shutil.copy(ROOT / "params.yaml", workspace / "params.yaml")
    assert litpipe(["prepare"], workspace).returncode == 0
    return workspace


def refused(prepared: Path, destination: Path, params_text: str, stage: str) -> subprocess.CompletedProcess:
    """`litpipe <stage>` with params.yaml replaced, in a copy of the prepared workspace; checks that nothing
    in it changed."""
    workspace = copy_workspace(prepared, destination)
    (workspace / "params.yaml").write_text(params_text)
    before = snapshot(workspace)
    result = litpipe([stage], workspace)
    assert_unchanged(workspace, before)
    return result


@pytest.mark.parametrize("case", BAD_PARAMS, ids=list(BAD_PARAMS))
def test_invalid_params_exit_2_naming_the_key_and_touch_nothing(prepared, tmp_path, case):
    line, replacement, message = BAD_PARAMS[case]
    text = (ROOT / "params.yaml").read_text()
    assert text.count(line) == 1, f"{line!r} is not one line of params.yaml"
    stage = ["prepare", "sanity", "search", "fit", "report"][len(case) % 5]  # validation comes before any stage
    result = refused(prepared, tmp_path / "workspace", text.replace(line, replacement), stage)
    assert_one_line_failure(result, 2, "litpipe: params.yaml: ", message)


# model.arch and model.kwargs, checked against the network's constructor by each stage that builds one
# (params.yaml's network and each one search.space offers), before any work; the other cases in test_zoo.py, and a misspelt argument in test_docs.py (the README's).
BAD_NETWORKS = {
    "searched network unknown": ("    model.kwargs.mlp.width: [128, 512]", "    model.arch: [mlp, resnett18]", "model.arch: unknown network 'resnett18' (did you mean resnet18?)"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_NETWORKS, ids=list(BAD_NETWORKS))
def test_a_network_that_cannot_be_built_is_refused_before_any_work(prepared, tmp_path, case):
    line, replacement, message = BAD_NETWORKS[case]
    text = (ROOT / "params.yaml").read_text()
    assert text.count(line) == 1, f"{line!r} is not one line of params.yaml"
    stage = "sanity"  # the first stage that builds one: it checks the search's networks too
    result = refused(prepared, tmp_path / "workspace", text.replace(line, replacement), stage)
    assert_one_line_failure(result, 2, "litpipe: params.yaml: ", message)


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_unusable_params_files_exit_2_and_touch_nothing(prepared, tmp_path, case):
    text, message = BAD_FILES[case]
    assert_one_line_failure(refused(prepared, tmp_path / "workspace", text, "fit"), 2, message)


@pytest.mark.slow
def test_invalid_bench_overrides_exit_2(prepared):
    for override, message in [("train.batch_size=true", "train.batch_size"), ("optim.lr=.nan", "optim.lr")]:
        assert_one_line_failure(litpipe(["bench", "-S", override], prepared), 2, message)


@pytest.mark.parametrize(("command", "tool"), [(["experiments"], "dvc"), (["record"], "snakemake")])
def test_a_tool_missing_from_path_is_one_line(tmp_path, command, tool):
    """`litpipe experiments` and `record` drive dvc, git and snakemake; without them on PATH (an environment not
    activated), one line naming the tool, not a traceback."""
    litpipe_itself = shutil.which("litpipe", path=tool_env()["PATH"])
    env = {**tool_env(), "PATH": "/usr/bin:/bin"}  # the system's, where make install puts nothing
    result = subprocess.run([litpipe_itself, *command], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert_one_line_failure(result, 1, f"{tool} is not on PATH")


# --- stages out of order, missing data or devices: one line naming the file and the stage ---------------


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("clone"))


@pytest.mark.parametrize(
    ("stage", "prepared_first", "missing_file", "maker"),
    [
        ("sanity", False, "data/prepared", "prepare"),
        ("fit", False, "data/prepared", "prepare"),
        ("fit", True, "results/search/best.json", "search"),
        ("search", True, "results/sanity/summary.json", "sanity"),
        ("test", True, "models/best.ckpt", "fit"),
        ("analyze", True, "models/best.ckpt", "fit"),
        ("report", True, "results/sanity", "sanity"),
    ],
)
def test_a_stage_run_too_early_names_what_is_missing_and_what_makes_it(
    fresh_clone, prepared, tmp_path, stage, prepared_first, missing_file, maker
):
    clone = copy_workspace(fresh_clone, tmp_path / "clone")
    if prepared_first:
        shutil.copytree(prepared / "data", clone / "data", dirs_exist_ok=True)
    before = snapshot(clone)
    result = litpipe([stage], clone)
    assert_one_line_failure(result, 1, f"{stage} needs {missing_file}", f"the {maker} stage", f"dvc repro {maker}")
    assert_unchanged(clone, before)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dataset", "root", "folder"), [("mnist", "nowhere", "MNIST"), ("fashion_mnist", "data", "FashionMNIST")]
)
def test_a_missing_dataset_is_one_line_naming_where_it_looked(prepared, tmp_path, dataset, root, folder):
    workspace = copy_workspace(prepared, tmp_path / "workspace")
    edit_params(workspace, {"data.dataset": dataset, "data.root": root})
    before = snapshot(workspace)
    result = litpipe(["prepare"], workspace)
    # torchvision's layout under data.root: the folder it looked in, not a word any message may hold.
    assert_one_line_failure(result, 1, "prepare failed", f"{root}/{folder}/raw")
    assert_unchanged(workspace, before, failed_log="logs/prepare.failed.log")


@pytest.mark.parametrize("accelerator", ["cuda", "mps"])
def test_a_device_that_is_not_there_is_one_line(prepared, tmp_path, accelerator):
    """One more CUDA GPU than the machine has (none on most): the fit asks for train.devices of them."""
    if accelerator == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")  # macOS only: CI runs on Linux
    workspace = copy_workspace(prepared, tmp_path / "workspace")
    (workspace / paths.SEARCH_BEST).parent.mkdir(parents=True)
    (workspace / paths.SEARCH_BEST).write_text('{"params": {}}')  # the fit's inputs are there
    devices = torch.cuda.device_count() + 1 if accelerator == "cuda" else 1
    edit_params(workspace, {"train.accelerator": accelerator, "train.devices": devices})
    before = snapshot(workspace)
    assert_one_line_failure(litpipe(["fit"], workspace), 1, f"train.accelerator: {accelerator}", "but this machine")
    assert_unchanged(workspace, before)


# --- damaged data and checkpoints: one line naming the file; nothing in a pickle runs --------------------


class RunsCode:
    """Pickled, it is a call to os.system: what a checkpoint from the internet may hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # in the middle: tensor data, which neither torch's archive nor .npy checksums
    path.write_bytes(bytes(data))


def code_in_pickle(path: Path) -> None:
    torch.save({"state_dict": {}, "hyper_parameters": RunsCode(path.parent / "ran")}, path)


def not_json(path: Path) -> None:
    path.write_text(path.read_text()[:-20])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damaged", "damage", "said"),
    [
        (paths.BEST_CKPT, truncate, "truncated or damaged"),
        (paths.BEST_CKPT, flip_a_byte, "do not match their checksum"),
        (paths.BEST_CKPT, code_in_pickle, "refused"),
        (paths.split_files("test")[0], truncate, "do not match the SHA-256"),
        (paths.split_files("test")[1], flip_a_byte, "do not match the SHA-256"),
        (paths.META, not_json, "not valid JSON"),
    ],
    ids=["ckpt-truncated", "ckpt-flipped", "ckpt-runs-code", "images-truncated", "labels-flipped", "meta-not-json"],
)
def test_a_damaged_file_is_one_line_naming_it(fitted, tmp_path, damaged, damage, said):
    workspace = copy_workspace(fitted, tmp_path / "workspace")
    damage(workspace / damaged)
    before = snapshot(workspace)
    result = litpipe(["test"], workspace)
    assert_one_line_failure(result, 1, f"test failed: {damaged}", said)
    assert not (workspace / "models/ran").exists(), "the checkpoint's pickle ran code"
    assert_unchanged(workspace, before, failed_log="logs/test.failed.log")  # the last good test's outputs stay


# --- interruptions: SIGTERM or SIGUSR1 anywhere in a fit, and the re-run ends with the same numbers -------

EPOCHS = 8
FIT_CHANGES = {
    "train.max_epochs": EPOCHS,
    "train.batch_size": 32,  # 39 steps an epoch: a fit held during training is seen there with time to spare
    "train.early_stopping_patience": 50,
    "train.swa_epoch_start": 0.25,  # averaging from the end of epoch 2 on
    "train.accelerator": "cpu",
}
COMPARED = [paths.TEST_METRICS, paths.FIT_HISTORY, paths.FIT_ACTIVATIONS, paths.FIT_METRICS]


def start(stage: str, workspace: Path, log: str) -> subprocess.Popen:
    # Output to a file: a pipe nobody reads fills up and blocks the child.
    with open(workspace / log, "w") as out:
        return subprocess.Popen(["litpipe", stage], cwd=workspace, env=tool_env(), stdout=out, stderr=subprocess.STDOUT)


def finish(stage: str, workspace: Path) -> str:
    process = start(stage, workspace, f"{stage}.out")
    assert process.wait(timeout=300) == 0, (workspace / f"{stage}.out").read_text()[-3000:]
    return (workspace / f"{stage}.out").read_text()


def fit_log(workspace: Path) -> str:
    log = workspace / "logs/fit.log"
    return log.read_text() if log.exists() else ""


def writes_its_log(fit: subprocess.Popen, workspace: Path) -> bool:
    """The process has opened its own logs/fit.log (the CLI moves an earlier run's aside first): what that
    file holds from now on is this run's."""
    try:
        opened = {Path(f.path) for f in psutil.Process(fit.pid).open_files()}
    except psutil.NoSuchProcess:
        return False
    return (workspace / "logs/fit.log").resolve() in opened


def hold(fit: subprocess.Popen, workspace: Path, progress: str | None) -> None:
    """Stop the fit (SIGSTOP) once `progress` is in its log, or with None as soon as it has opened its log,
    seconds before it has imported the training code. Held, it cannot move on before it is signalled."""
    wait_until(
        lambda: (
            fit.poll() is not None
            or writes_its_log(fit, workspace)
            and (progress is None or progress in fit_log(workspace))
        ),
        120,
        f"'{progress}' in the fit's log" if progress else "the fit's log",
    )
    assert fit.poll() is None, "the fit ended before it could be held"
    stop(fit.pid)


@pytest.fixture(scope="module")
def ready(tmp_path_factory, default_params) -> Path:
    return ready_to_fit(tmp_path_factory.mktemp("ready"), default_params, FIT_CHANGES)


@pytest.fixture(scope="module")
def fitted(ready, tmp_path_factory) -> Path:
    """A fit and a test that were never interrupted."""
    workspace = copy_workspace(ready, tmp_path_factory.mktemp("fitted") / "workspace")
    finish("fit", workspace)
    finish("test", workspace)
    return workspace


STARTING = None  # a fit held as soon as its log is open: before it listens for any signal


def interrupt(workspace: Path, signum: signal.Signals, progress: str | None) -> str:
    """Start a fit, hold it at `progress` (hold), send `signum` and let it go on: the signal lands there however
    fast the machine. Returns its output once it stopped. Each hold point has one outcome:
    - during training (an epoch line seen, the checkpoint's test not begun): the fit stops at the epoch's end
      with a resume checkpoint, exit status 1;
    - STARTING: no handler of the fit's own yet (the process's signal mask says so), so the signal's default
      action ends it; whatever an earlier run left to resume from stays as it was."""
    fit = start("fit", workspace, "interrupted.out")
    resume_before = [(workspace / path).read_bytes() if (workspace / path).exists() else None for path in RESUME]
    hold(fit, workspace, progress)
    if progress is STARTING:
        assert not catches(fit.pid, signum), f"the fit handles {signum.name} already: it was not held in time"
    else:
        assert "testing its checkpoint" not in fit_log(workspace), "the fit was held after training"
        assert catches(fit.pid, signum), f"the fit does not handle {signum.name} while training"
    fit.send_signal(signum)
    os.kill(fit.pid, signal.SIGCONT)
    code = fit.wait(timeout=120)
    (workspace / paths.BEST_CKPT).unlink(missing_ok=True)  # as DVC and Snakemake delete a failed job's outputs
    output = (workspace / "interrupted.out").read_text()
    assert "Traceback" not in output, output[-3000:]
    if progress is STARTING:
        assert code == -signum, output[-3000:]
        resume_after = [(workspace / path).read_bytes() if (workspace / path).exists() else None for path in RESUME]
        assert resume_after == resume_before
    else:
        assert code == 1 and f"fit preempted by {signum.name}" in output and f"saved {paths.RESUME_CKPT}" in output
    return output


RESUME = [paths.RESUME_CKPT]


@pytest.mark.slow
@pytest.mark.parametrize(
    "interruptions",
    [
        # before the average holds anything, then with weights averaged; each resumed
        [(signal.SIGUSR1, "epoch 1/"), (signal.SIGTERM, "epoch 5/")],
        [(signal.SIGTERM, STARTING)],  # before the fit listens: nothing saved, started over
        [(signal.SIGTERM, "epoch 3/"), (signal.SIGUSR1, STARTING)],  # the resumed fit's start: resumed later
    ],
    ids=["usr1-then-term-averaged", "term-while-starting", "usr1-while-the-resumed-fit-starts"],
)
def test_an_interrupted_fit_ends_with_the_uninterrupted_numbers(ready, fitted, tmp_path, interruptions):
    workspace = copy_workspace(ready, tmp_path / "workspace")
    for done, (signum, progress) in enumerate(interruptions, start=1):
        interrupt(workspace, signum, progress)
        # A resume point once a signal came during training; a fit killed while it starts leaves it as it was.
        resumable = any(held is not STARTING for _, held in interruptions[:done])
        assert (workspace / paths.RESUME_CKPT).exists() == resumable

    rerun = finish("fit", workspace)
    assert ("resuming the fit from" in rerun) == resumable
    finish("test", workspace)
    for path in COMPARED:
        assert (workspace / path).read_bytes() == (fitted / path).read_bytes(), f"{path} differs"
    epochs = [int(row["epoch"]) for row in csv.DictReader(open(workspace / paths.FIT_HISTORY))]
    assert epochs == list(range(EPOCHS))
    assert not (workspace / paths.RESUME_CKPT).exists()
    assert_checkpoint_is_averaged(workspace / paths.BEST_CKPT)


# --- resume points: a fit killed without warning (SIGKILL) resumes from its last one -----------------------

# Early stopping soon after the resume, free to stop from the end of epoch 4 on (averaging from epoch 2), with 78
# steps an epoch: a kill seen at an epoch's end lands in the next.
EARLY_STOP = {
    **FIT_CHANGES,
    "train.max_epochs": 40,
    "train.early_stopping_patience": 2,
    "train.swa_epoch_start": 0.05,
    "train.batch_size": 16,
}
EVERY_EPOCH = {"train.resume_every_minutes": 1e-6}  # a resume point at every epoch's end
DATA_PATHS = {
    "resident": {"train.data_path": "resident"},
    "loader": {"train.data_path": "loader", "train.loader_workers": 2},
}


@pytest.fixture(scope="module", params=list(DATA_PATHS))
def stopped_early(request, default_params, tmp_path_factory) -> tuple[Path, Path, int]:
    """A workspace ready to fit with EARLY_STOP on one data path, a copy where that fit and the test ran, never
    interrupted (at the default interval no resume point is written), and how many epochs it trained."""
    ready = ready_to_fit(tmp_path_factory.mktemp("early"), default_params, {**EARLY_STOP, **DATA_PATHS[request.param]})
    plain = copy_workspace(ready, tmp_path_factory.mktemp("early-plain") / "workspace")
    finish("fit", plain)
    finish("test", plain)
    summary = json.loads((plain / paths.FIT_SUMMARY).read_text())
    # Stopped by early stopping, not by min_epochs (4): the epoch before the last counts.
    assert summary["early_stopped"] and 6 <= summary["epochs"] < EARLY_STOP["train.max_epochs"], summary
    return ready, plain, summary["epochs"]


def assert_same_run(workspace: Path, plain: Path) -> None:
    for path in COMPARED:
        assert (workspace / path).read_bytes() == (plain / path).read_bytes(), f"{path} differs"
    assert not (workspace / paths.RESUME_CKPT).exists()


@pytest.mark.slow
def test_a_fit_killed_after_a_resume_point_resumes_there_and_ends_with_the_same_numbers(stopped_early, tmp_path):
    """SIGKILL, which no handler sees, in the epoch at whose end early stopping ends the fit: the re-run resumes
    from the resume point of the epoch before, which early stopping had checked (saved before that check, the
    re-run stopped an epoch late), and with it the best checkpoint and the batch order of the loader's workers
    (the first resumed epoch drew epoch 0's); it stops at the same epoch with byte-identical results."""
    ready, plain, epochs = stopped_early
    workspace = copy_workspace(ready, tmp_path / "workspace")
    edit_params(workspace, EVERY_EPOCH)
    fit = start("fit", workspace, "killed.out")
    hold(fit, workspace, f"resume point at epoch {epochs - 1}:")
    fit.send_signal(signal.SIGKILL)
    assert fit.wait(timeout=60) == -signal.SIGKILL
    assert (workspace / paths.RESUME_CKPT).exists()
    (workspace / paths.BEST_CKPT).unlink(missing_ok=True)  # as DVC and Snakemake delete a failed job's outputs

    rerun = finish("fit", workspace)
    assert f"resuming the fit from {paths.RESUME_CKPT}" in rerun
    finish("test", workspace)
    assert_same_run(workspace, plain)


@pytest.mark.slow
def test_a_signal_shortly_before_early_stopping_resumes_to_the_same_stop(stopped_early, tmp_path):
    """SIGTERM in one of the two epochs before early stopping ends the fit: the fit stops at that epoch's end, and
    the re-run stops where the uninterrupted fit did."""
    ready, plain, epochs = stopped_early
    workspace = copy_workspace(ready, tmp_path / "workspace")
    interrupt(workspace, signal.SIGTERM, f"epoch {epochs - 2}/")
    finish("fit", workspace)
    finish("test", workspace)
    assert_same_run(workspace, plain)


# A test split of most of the data, at 16 px through a CNN: testing the checkpoint takes about a second.
SLOW_TO_TEST = {
    **FIT_CHANGES,
    "train.max_epochs": 3,
    "model.arch": "cnn",
    "data.image_size": 16,
    "data.test_fraction": 0.9,
}


@pytest.fixture(scope="module")
def slow_to_test(default_params, tmp_path_factory) -> tuple[Path, Path]:
    """A workspace ready to fit with SLOW_TO_TEST, and a copy where that fit ran, never signalled."""
    ready = ready_to_fit(tmp_path_factory.mktemp("slow_to_test"), default_params, SLOW_TO_TEST)
    plain = copy_workspace(ready, tmp_path_factory.mktemp("plain") / "workspace")
    finish("fit", plain)
    return ready, plain


@pytest.mark.slow
@pytest.mark.parametrize(
    "progress",
    [
        "testing its checkpoint and writing its results",  # training over, the checkpoint's test next
        "test accuracy of the checkpoint",  # tested: writing history, activations, curves, metrics, summary
    ],
    ids=["before-the-checkpoints-test", "writing-the-results"],
)
def test_a_signal_after_training_lets_the_fit_finish_its_results(slow_to_test, tmp_path, progress):
    """SIGTERM once training is over, while the fit tests its checkpoint and writes its results: it finishes
    them and succeeds with the numbers of a fit never signalled (Lightning's own handler would stop the test)."""
    ready, plain = slow_to_test
    signalled = copy_workspace(ready, tmp_path / "signalled")
    fit = start("fit", signalled, "signalled.out")
    hold(fit, signalled, progress)
    assert "best epoch" not in fit_log(signalled), "held after its results were written"  # their last line
    assert catches(fit.pid, signal.SIGTERM)
    fit.send_signal(signal.SIGTERM)
    os.kill(fit.pid, signal.SIGCONT)
    code = fit.wait(timeout=120)
    output = (signalled / "signalled.out").read_text()
    assert code == 0 and "SIGTERM came after training: the fit finished its results" in output, output[-3000:]
    for path in (paths.FIT_HISTORY, paths.FIT_ACTIVATIONS, paths.FIT_METRICS):
        assert (signalled / path).read_bytes() == (plain / path).read_bytes(), f"{path} differs"
    summaries = [json.loads((workspace / paths.FIT_SUMMARY).read_text()) for workspace in (plain, signalled)]
    assert summaries[0]["test_acc_in_fit"] == summaries[1]["test_acc_in_fit"]


def test_a_sigterm_lightning_took_as_the_checkpoints_test_began_does_not_stop_it():
    """The one window a hold cannot reach (microseconds wide): the Trainer that tests the fit's checkpoint has
    installed Lightning's handlers, and the fit's have not replaced them yet. A SIGTERM then sets Lightning's
    flag, which would stop the test after its first batch (SIGTERMException); the fit's callback, as the test
    starts, takes the signals back and forgets the flag, keeping the signal for the fit to report."""
    import lightning.pytorch as pl

    from litpipe.preemption import Preemption

    preemption = Preemption("fingerprint", paths.fit_run(0, [0]))
    trainer = pl.Trainer(logger=False, enable_checkpointing=True, callbacks=[preemption])  # preemption: a Checkpoint
    trainer._signal_connector.register_signal_handlers()  # what trainer.test does first
    os.kill(os.getpid(), signal.SIGTERM)  # handled here, by Lightning's handler, before the next line
    assert trainer.received_sigterm
    preemption.on_test_start(trainer, pl.LightningModule())
    assert not trainer.received_sigterm, "Lightning would stop the checkpoint's test"
    os.kill(os.getpid(), signal.SIGTERM)  # a second one goes to the fit's handler alone
    assert not trainer.received_sigterm and preemption.signal == "SIGTERM"
    trainer._signal_connector.teardown()


@pytest.mark.slow
def test_a_fit_preempted_under_other_params_is_not_resumed(ready, tmp_path):
    workspace = copy_workspace(ready, tmp_path / "workspace")
    interrupt(workspace, signal.SIGTERM, "epoch 1/")
    edit_params(workspace, {"train.max_epochs": 3})
    rerun = finish("fit", workspace)
    assert "saved with other params or data: starting the fit afresh" in rerun
    assert "resuming" not in rerun
    assert [int(row["epoch"]) for row in csv.DictReader(open(workspace / paths.FIT_HISTORY))] == [0, 1, 2]


# --- the report shows every string as text ---------------------------------------------------------

SCRIPT = "<script>window.__pwned=1</script>"
TITLE = f"Weekly {SCRIPT} and <b>bold</b> report"
CLASS_NAME = "<img src=x onerror=window.__pwned=2>"  # an image that fails to load runs its onerror
SEARCHED_VALUE = "<u>wide</u>"
TRIAL_STATE = "<i>LOST</i>"
EXPERIMENT = "<s>exp-1</s>"

# Per source of outside strings: the string, and a check in the page that is true when it was rendered as
# markup instead of shown as text.
INJECTED = {
    "title script": (SCRIPT, "[...document.scripts].some(s => s.text.includes('__pwned'))"),
    "title bold": ("<b>bold</b>", "[...document.querySelectorAll('b')].some(e => e.textContent === 'bold')"),
    "class name": (CLASS_NAME, "[...document.images].some(i => !i.src.startsWith('data:'))"),
    "searched value": (SEARCHED_VALUE, "[...document.querySelectorAll('u')].some(e => e.textContent === 'wide')"),
    "trial state": (TRIAL_STATE, "[...document.querySelectorAll('i')].some(e => /lost/i.test(e.textContent))"),
    "experiment name": (EXPERIMENT, "[...document.querySelectorAll('s')].some(e => e.textContent === 'exp-1')"),
}  # fmt: skip


def inject_markup(repo: Path) -> None:
    """Markup in a param (report.title), meta.json (a class name) and the search's JSON and CSV results."""
    edit_params(repo, {"report.title": TITLE})
    meta_path = repo / "data/prepared/meta.json"
    meta = json.loads(meta_path.read_text())
    meta["class_names"][3] = CLASS_NAME
    meta_path.write_text(json.dumps(meta))
    best_path = repo / "results/search/best.json"
    best = json.loads(best_path.read_text())
    best["params"]["model.kwargs.mlp.width"] = SEARCHED_VALUE
    best_path.write_text(json.dumps(best))
    trials_path = repo / "results/search/trials.csv"
    with trials_path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    rows[0]["state"] = TRIAL_STATE
    with trials_path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def injected_report(pipeline, tmp_path_factory) -> dict:
    """The report stage alone, re-run on a copy of the finished pipeline with markup in its inputs, then
    opened in headless Chromium: the HTML source, the page's text, which injections rendered, and what
    the page requested or complained about."""
    from playwright.sync_api import sync_playwright

    executable = chromium()
    repo = copy_workspace(pipeline[0], tmp_path_factory.mktemp("injected") / "repo")
    inject_markup(repo)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DVC_EXP_NAME", EXPERIMENT)  # as `dvc exp run` names the experiment; the summary shows it
        run(["litpipe", "report"], repo)
    report = repo / "reports/report.html"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_context(offline=True).new_page()
        problems, requests = [], []
        page.on("console", lambda message: message.type in ("error", "warning") and problems.append(message.text))
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(report.as_uri(), wait_until="load")
        rendered = {case: page.evaluate(check) for case, (_, check) in INJECTED.items()}
        pwned = page.evaluate("window.__pwned ?? null")  # set by the injected script or onerror, had either run
        text = page.evaluate("document.body.innerText")
        browser.close()
    return {
        "source": report.read_text(),
        "text": text,
        "rendered": rendered,
        "pwned": pwned,
        "problems": problems,
        "requests": requests,
        "uri": report.as_uri(),
    }


@pytest.mark.integration
@pytest.mark.parametrize("case", INJECTED)
def test_report_shows_injected_markup_as_literal_text(injected_report, case):
    markup, _ = INJECTED[case]
    assert not injected_report["rendered"][case], f"the {case} {markup!r} was rendered as markup"
    assert markup in injected_report["text"], f"the {case} {markup!r} is not visible as text"


@pytest.mark.integration
@pytest.mark.parametrize("case", INJECTED)
def test_report_source_escapes_injected_markup(injected_report, case):
    markup, _ = INJECTED[case]
    escaped = markup.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert markup.lower() not in injected_report["source"].lower()  # the report may change its case (states)
    assert escaped in injected_report["source"]


@pytest.mark.integration
def test_report_with_injected_markup_runs_nothing_and_fetches_nothing(injected_report):
    assert injected_report["pwned"] is None
    assert injected_report["problems"] == []
    # The page itself and its embedded images, nothing else (an <img src=x> would request file:///.../x).
    assert all(url == injected_report["uri"] or url.startswith("data:") for url in injected_report["requests"]), (
        injected_report["requests"]
    )
    assert TITLE in injected_report["text"]


# --- servers the README starts bind 127.0.0.1 ------------------------------------------------------

SERVERS = ("tensorboard", "optuna-dashboard")


def readme_server_commands() -> list[str]:
    """Every command the README gives for starting a server: a code line or an inline `code` span."""
    text = (ROOT / "README.md").read_text()
    starts = "|".join(re.escape(server) for server in SERVERS)
    lines = re.findall(rf"^\s*((?:{starts}) .*?)\s*$", text, re.MULTILINE)
    spans = re.findall(rf"`((?:{starts}) [^`]*)`", text)
    return list(dict.fromkeys(lines + spans))


def bound_host(argv: list[str]) -> str | None:
    for index, argument in enumerate(argv):
        if argument == "--host" and index + 1 < len(argv):
            return argv[index + 1]
        if argument.startswith("--host="):
            return argument.removeprefix("--host=")
    return None


def test_readme_server_commands_bind_loopback():
    commands = readme_server_commands()
    assert any(command.startswith("tensorboard ") for command in commands), commands
    for command in commands:
        argv = shlex.split(command)
        assert bound_host(argv) == "127.0.0.1", f"README: `{command}` does not bind 127.0.0.1"
        assert "--bind_all" not in argv, command


@pytest.mark.integration
def test_readme_tensorboard_command_listens_on_loopback_only(tmp_path):
    """Started exactly as the README writes it, on a port the OS picks: it listens on 127.0.0.1 alone."""
    executable = require_tool("tensorboard")
    (tmp_path / "tb").mkdir()
    commands = [command for command in readme_server_commands() if command.startswith("tensorboard ")]
    assert commands
    for command in commands:
        argv = [executable, *shlex.split(command)[1:], "--port", "0"]
        server = subprocess.Popen(argv, cwd=tmp_path, env=tool_env(), stderr=subprocess.PIPE, text=True)
        watchdog = threading.Timer(120, server.kill)  # a server that never says where it listens ends the wait
        watchdog.start()
        try:
            # Handshake: tensorboard prints its URL once its socket is bound.
            announced = next((line for line in server.stderr if re.search(r"TensorBoard .* at http://", line)), None)
            assert announced is not None, f"`{command}` exited {server.wait()} without serving"
            listening = [
                connection.laddr
                for connection in psutil.Process(server.pid).net_connections(kind="inet")
                if connection.status == psutil.CONN_LISTEN
            ]
        finally:
            watchdog.cancel()
            server.terminate()
            server.wait(timeout=30)
        assert listening, f"`{command}` listens nowhere ({announced.strip()})"
        assert {address.ip for address in listening} == {"127.0.0.1"}, (command, listening)
        assert f"http://127.0.0.1:{listening[0].port}/" in announced


# --- two `dvc repro` at once -----------------------------------------------------------------------


@pytest.mark.integration
def test_second_dvc_repro_is_refused_while_the_first_holds_the_lock(pipeline, tmp_path):
    repo = copy_workspace(pipeline[0], tmp_path / "repo")
    edit_params(repo, {"report.mistakes_shown": 8})  # analyze and report run again
    first = subprocess.Popen(
        ["dvc", "repro"],
        cwd=repo,
        env=tool_env() | {"PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, stages included
    )
    try:
        # Handshake: dvc announces a stage once it holds the stage's entries in .dvc/tmp/rwlock (it lets go of the
        # repository lock while the command runs).
        output = []
        for line in first.stdout:
            output.append(line)
            if line.startswith("Running stage"):
                break
        assert output and output[-1].startswith("Running stage"), "".join(output)
        # Paused, the first keeps its lock for as long as the second needs to give up, however fast either is.
        os.killpg(first.pid, signal.SIGSTOP)
        try:
            second = run(["dvc", "repro"], repo, check=False, timeout=300)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        output.append(first.communicate(timeout=900)[0])
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert second.returncode != 0, second.stdout
    # DVC releases the repository lock while a stage's command runs and keeps its outputs in the rwlock: the
    # second stops at whichever it meets, and says so.
    assert re.search(r"Unable to acquire lock|is busy, it is being blocked by", second.stderr), second.stderr
    assert "lock" in second.stderr
    assert first.returncode == 0, "".join(output)[-5000:]
    assert "Running stage 'report'" in "".join(output)
    # Nothing corrupted: every output matches dvc.lock, and nothing is left to run.
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo).stdout
    again = run(["dvc", "repro"], repo).stdout
    assert "Running stage" not in again, again
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["analyze"]["params"]["params.yaml"]["report.mistakes_shown"] == 8
    # The analysis the first run wrote is whole: its count of mistakes is the test stage's, from its accuracy.
    tested = json.loads((repo / "results/test/metrics.json").read_text())
    mistakes = json.loads((repo / "results/analysis/summary.json").read_text())["mistakes"]
    assert mistakes == round((1 - tested["accuracy"]) * tested["samples"])
    assert "</html>" in (repo / "reports/report.html").read_text()


# --- a study database that cannot be reached -------------------------------------------------------

PASSWORD = "s3cret-pw"


@pytest.mark.slow
@pytest.mark.parametrize(
    "storage",
    [
        f"postgresql://nobody:{PASSWORD}@127.0.0.1:1/none",  # nothing listens on port 1
        "postgresql://nobody@no-such-host.invalid/none",  # .invalid never resolves (RFC 2606)
        f"mysql://nobody:{PASSWORD}@127.0.0.1/none",  # a dialect whose driver is not installed
    ],
)
def test_unreachable_study_database_stops_search_with_one_line(workspace, storage):
    workspace({"search.storage": storage})
    # An earlier search's results, which a failed one must leave as they are.
    search_dir = Path("results/search")
    search_dir.mkdir(parents=True)
    (search_dir / "trials.csv").write_text("number,value,state\n0,0.25,COMPLETE\n")
    (search_dir / "best.json").write_text('{"params": {"model.kwargs.mlp.width": 64}}')
    (search_dir / "history.png").write_bytes(b"an earlier plot")
    before = {path: path.read_bytes() for path in sorted(search_dir.rglob("*"))}
    result = run(["litpipe", "search"], Path.cwd(), check=False, timeout=300)
    shown = storage.replace(PASSWORD, "***")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1, result.stderr
    assert shown in lines[0] and "cannot be reached" in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert PASSWORD not in result.stderr + result.stdout + Path("logs/search.failed.log").read_text()
    assert {path: path.read_bytes() for path in sorted(search_dir.rglob("*"))} == before
