"""A fit stopped by SIGUSR1 or SIGTERM saves its training state, and the next run resumes from it."""

import csv
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from litpipe import paths
from litpipe.config import Params
from litpipe.io import write_json
from litpipe.stages import prepare

from .helpers import tool_env


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_preempted_fit_resumes_from_its_checkpoint(tmp_path, monkeypatch, default_params, signum):
    monkeypatch.chdir(tmp_path)
    params = Params.model_validate(default_params).override(
        {"train.max_epochs": 12, "train.early_stopping_patience": 50, "train.swa_epoch_start": 0.25}
    )
    Path("params.yaml").write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))
    prepare.run(params)
    write_json(paths.SEARCH / "best.json", {"params": {}})

    fit = subprocess.Popen(
        ["litpipe", "fit"], env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while "epoch 4/12" not in (Path("logs/fit.log").read_text() if Path("logs/fit.log").exists() else ""):
        assert fit.poll() is None and time.monotonic() < deadline, "fit ended before it could be preempted"
        time.sleep(0.05)
    fit.send_signal(signum)
    _, stderr = fit.communicate(timeout=120)
    assert fit.returncode == 1
    assert f"fit preempted by {signum.name}" in stderr and "run the stage again to resume" in stderr
    assert paths.RESUME_CKPT.exists() and paths.RESUME_BEST_CKPT.exists()

    paths.BEST_CKPT.unlink()  # as Snakemake and DVC delete a failed job's outputs before the re-run
    rerun = subprocess.run(["litpipe", "fit"], env=tool_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming the preempted fit" in rerun.stdout
    epochs = [int(row["epoch"]) for row in csv.DictReader(open(paths.FIT / "history.csv"))]
    assert epochs == list(range(12))  # every epoch once: the history survived in the checkpoint
    activations = {int(row["epoch"]) for row in csv.DictReader(open(paths.FIT / "activations.csv"))}
    assert activations == set(range(12))
    assert paths.BEST_CKPT.exists() and not paths.RESUME_CKPT.exists() and not paths.RESUME_BEST_CKPT.exists()
    summary = json.loads((paths.FIT / "summary.json").read_text())
    assert summary["epochs"] == 12 and summary["checkpoint_is_averaged"]
