"""DDP is one params change away: a 2-process fit on CPU, each process on its own half of the data."""

import json
import math
import subprocess
from contextlib import chdir
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from litpipe import paths
from litpipe.config import Params
from litpipe.data.prepared import Batches, Split
from litpipe.io import write_json
from litpipe.stages import prepare

from .helpers import tool_env


def test_ddp_shards_are_disjoint_equal_and_cover_the_data():
    split = Split(torch.zeros(10, 1, 1, 1, dtype=torch.uint8), torch.arange(10))
    shards = [torch.cat([y for _, y in Batches(split, 2, shuffle=True, seed=1, rank=r, world=3)]) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]  # equal steps on every rank; 10 % 3 left out
    assert len(set(torch.cat(shards).tolist())) == 9


DDP = {"train.accelerator": "cpu", "train.devices": 2, "train.strategy": "ddp", "train.max_epochs": 3}
DATA_PATHS = {
    "resident": {"train.data_path": "resident"},
    "loader": {"train.data_path": "loader", "train.loader_workers": 1},
}


@pytest.fixture(scope="module")
def ddp_fits(tmp_path_factory, default_params) -> dict[str, Path]:
    """A 2-process DDP fit on CPU on each data path, each in a directory of its own."""
    fits = {}
    for name, changes in DATA_PATHS.items():
        workspace = tmp_path_factory.mktemp(f"ddp-{name}")
        params = Params.model_validate(default_params).override({**DDP, **changes})
        with chdir(workspace):
            Path("params.yaml").write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))
            prepare.run(params)
            write_json(paths.SEARCH / "best.json", {"params": {}})
        result = subprocess.run(
            ["litpipe", "fit"], cwd=workspace, env=tool_env(), capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "MEMBER: 1/2" in result.stdout and "MEMBER: 2/2" in result.stdout
        fits[name] = workspace
    return fits


@pytest.mark.slow
@pytest.mark.parametrize("data_path", list(DATA_PATHS))
def test_two_process_ddp_fit_on_cpu(ddp_fits, data_path):
    workspace = ddp_fits[data_path]
    checkpoint = torch.load(workspace / paths.BEST_CKPT, map_location="cpu", weights_only=True)
    train_size = json.loads((workspace / paths.META).read_text())["sizes"]["train"]
    batch_size = yaml.safe_load((workspace / "params.yaml").read_text())["train"]["batch_size"]
    steps_per_epoch = math.ceil((train_size // 2) / batch_size)  # half the data per process, once
    assert checkpoint["global_step"] == (checkpoint["epoch"] + 1) * steps_per_epoch
    summary = json.loads((workspace / paths.FIT / "summary.json").read_text())
    assert summary["epochs"] == 3 and 0.5 < summary["test_acc_in_fit"] <= 1
    assert "test accuracy of the checkpoint" in (workspace / "logs/fit.log").read_text()
    assert (workspace / "logs/fit.rank1.log").exists()  # the second process logs on its own


@pytest.mark.slow
def test_ddp_trains_and_validates_alike_on_both_data_paths(ddp_fits):
    """The loader path's DataLoader is not sharded a second time by Lightning's distributed sampler (each rank
    trained on a quarter of the data and validated on half the validation split): the two paths give one history."""
    histories = {name: pd.read_csv(workspace / paths.FIT_HISTORY) for name, workspace in ddp_fits.items()}
    pd.testing.assert_frame_equal(histories["resident"], histories["loader"], rtol=1e-5)
