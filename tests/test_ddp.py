"""DDP is one params change away: a 2-process fit on CPU, each process on its own half of the data."""

import json
import math
import subprocess
from pathlib import Path

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


@pytest.mark.slow
def test_two_process_ddp_fit_on_cpu(tmp_path, monkeypatch, default_params):
    monkeypatch.chdir(tmp_path)
    changes = {"train.accelerator": "cpu", "train.devices": 2, "train.strategy": "ddp", "train.max_epochs": 3}
    params = Params.model_validate(default_params).override(changes)
    Path("params.yaml").write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))
    prepare.run(params)
    write_json(paths.SEARCH / "best.json", {"params": {}})

    result = subprocess.run(["litpipe", "fit"], env=tool_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 1/2" in result.stdout and "MEMBER: 2/2" in result.stdout
    checkpoint = torch.load(paths.BEST_CKPT, map_location="cpu", weights_only=True)
    train_size = json.loads(paths.META.read_text())["sizes"]["train"]
    steps_per_epoch = math.ceil((train_size // 2) / params.train.batch_size)  # half the data per process
    assert checkpoint["global_step"] == (checkpoint["epoch"] + 1) * steps_per_epoch
    summary = json.loads((paths.FIT / "summary.json").read_text())
    assert summary["epochs"] == 3 and 0.5 < summary["test_acc_in_fit"] <= 1
    assert "test accuracy of the checkpoint" in Path("logs/fit.log").read_text()
    assert Path("logs/fit.rank1.log").exists()  # the second process logs on its own
