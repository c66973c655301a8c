"""A fit stopped by SIGUSR1 or SIGTERM, at any point, and run again, ends with exactly the numbers of a
fit that was never stopped: the same test metrics, byte for byte."""

import csv
import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from litpipe import paths
from litpipe.config import Params
from litpipe.io import write_json
from litpipe.stages import prepare

from .helpers import assert_checkpoint_is_averaged, tool_env, wait_until

EPOCHS = 8
CHANGES = {
    "train.max_epochs": EPOCHS,
    "train.early_stopping_patience": 50,
    "train.swa_epoch_start": 0.25,  # averaging from the end of epoch 2 on
    "train.accelerator": "cpu",
}
COMPARED = [paths.TEST_METRICS, paths.FIT_HISTORY, paths.FIT_ACTIVATIONS, paths.FIT_METRICS]


def litpipe(stage: str, workspace: Path, log: str) -> subprocess.Popen:
    # Output to files: a pipe nobody reads fills up and blocks the child.
    with open(workspace / log, "w") as out:
        return subprocess.Popen(["litpipe", stage], cwd=workspace, env=tool_env(), stdout=out, stderr=subprocess.STDOUT)


def finish(stage: str, workspace: Path) -> str:
    process = litpipe(stage, workspace, f"{stage}.out")
    assert process.wait(timeout=300) == 0, (workspace / f"{stage}.out").read_text()[-3000:]
    return (workspace / f"{stage}.out").read_text()


def fit_log(workspace: Path) -> str:
    log = workspace / "logs/fit.log"
    return log.read_text() if log.exists() else ""


@pytest.fixture(scope="module")
def ready(tmp_path_factory, default_params) -> Path:
    """Prepared data and an (empty) search result: what the fit needs."""
    workspace = tmp_path_factory.mktemp("prepared")
    params = Params.model_validate(default_params).override(CHANGES)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workspace)
        prepare.run(params)
        write_json(paths.SEARCH_BEST, {"params": {}})
    return workspace


@pytest.fixture(scope="module")
def uninterrupted(ready, tmp_path_factory) -> dict[Path, bytes]:
    workspace = tmp_path_factory.mktemp("uninterrupted")
    shutil.copytree(ready, workspace, dirs_exist_ok=True)
    finish("fit", workspace)
    finish("test", workspace)
    return {path: (workspace / path).read_bytes() for path in COMPARED}


@pytest.mark.parametrize(
    "interruptions",
    [
        [(signal.SIGUSR1, "epoch 1/")],  # before the average holds anything
        [(signal.SIGTERM, "epoch 5/")],  # with weights averaged
        [(signal.SIGTERM, "epoch 2/"), (signal.SIGUSR1, "epoch 6/")],  # twice, each resumed
        [(signal.SIGTERM, "data: resident")],  # before training starts: nothing saved, started over
    ],
    ids=["usr1-early", "term-averaged", "twice", "term-at-setup"],
)
def test_an_interrupted_fit_ends_with_the_uninterrupted_numbers(ready, uninterrupted, tmp_path, interruptions):
    shutil.copytree(ready, tmp_path, dirs_exist_ok=True)
    for signum, progress in interruptions:
        fit = litpipe("fit", tmp_path, "interrupted.out")
        wait_until(lambda: progress in fit_log(tmp_path) or fit.poll() is not None, 120, f"'{progress}' in the log")
        assert fit.poll() is None, "the fit ended before it could be interrupted"
        fit.send_signal(signum)
        assert fit.wait(timeout=120) != 0
        output = (tmp_path / "interrupted.out").read_text()
        if progress.startswith("epoch"):
            assert f"fit preempted by {signum.name}" in output and "run the stage again to resume" in output
            assert paths.RESUME_CKPT.name in output and (tmp_path / paths.RESUME_CKPT).exists()
            assert (tmp_path / paths.RESUME_BEST_CKPT).exists()
        (tmp_path / paths.BEST_CKPT).unlink(missing_ok=True)  # as DVC and Snakemake delete a failed job's outputs

    rerun = finish("fit", tmp_path)
    assert ("resuming the preempted fit" in rerun) == progress.startswith("epoch")
    finish("test", tmp_path)
    for path, expected in uninterrupted.items():
        assert (tmp_path / path).read_bytes() == expected, f"{path} differs from the uninterrupted run's"
    epochs = [int(row["epoch"]) for row in csv.DictReader(open(tmp_path / paths.FIT_HISTORY))]
    assert epochs == list(range(EPOCHS))
    assert not (tmp_path / paths.RESUME_CKPT).exists() and not (tmp_path / paths.RESUME_BEST_CKPT).exists()
    assert_checkpoint_is_averaged(tmp_path / paths.BEST_CKPT)
    assert json.loads((tmp_path / paths.FIT_SUMMARY).read_text())["epochs"] == EPOCHS
