"""params.yaml validation: typos, wrong types and out-of-range values stop a command before any work."""

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from litpipe.config import Params, load_params
from litpipe.errors import ConfigError
from litpipe.search import space as search_space

from .helpers import ROOT, copy_workspace, tool_env


def write(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def modified(params: dict, section: str, key: str, value: object) -> dict:
    changed = copy.deepcopy(params)
    changed[section][key] = value
    return changed


def test_repository_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.data.dataset == "digits"
    assert len(search_space.grid(params.search.dimensions(), params.model.arch)) >= 2


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("optim", "lr", -0.1, "optim.lr: input should be greater than 0 (got -0.1)"),
        ("optim", "lr", "fast", "optim.lr: input should be a valid number"),
        ("train", "batch_size", 0, "train.batch_size: input should be greater than or equal to 1"),
        ("train", "batch_size", 3.5, "train.batch_size: input should be a valid integer"),
        ("model", "arch", "", "model.arch: a network's name, or package.module:Class or path/to/file.py:Class"),
        ("model", "arch", "nets.py:", "model.arch: a network's name, or package.module:Class"),
        ("model", "arch", 7, "model.arch: input should be a valid string (got 7)"),
        ("model", "kwargs", [256, 2], "model.kwargs: input should be a valid dictionary"),
        # One network's arguments written straight under model.kwargs, as before they were per network.
        ("model", "kwargs", {"width": 256}, "model.kwargs: width: 256 is not a mapping; each network's arguments go under its name, e.g. model.kwargs.mlp.width"),
        ("model", "kwargs", {"mlp": {"hidden-units": 8}}, "model.kwargs: mlp.'hidden-units' is not an argument name"),
        ("model", "stem", "tiny", "model.stem: input should be 'auto', 'small' or 'standard'"),
        (
            "data",
            "dataset",
            "cifar",
            "data.dataset: unknown dataset 'cifar'; allowed: digits, folder, mnist, fashion_mnist, kmnist, cifar10, "
            "synthetic_mnist",
        ),
        ("data", "image_size", 0, "data.image_size: input should be greater than or equal to 1"),
        ("data", "image_size", "28", "data.image_size: input should be a valid integer"),
        ("train", "resident_max_mb", -1, "train.resident_max_mb: input should be greater than or equal to 0"),
        ("train", "augment_flip", "yes", "train.augment_flip: input should be a valid boolean"),
        ("train", "augment_crop", -2, "train.augment_crop: input should be greater than or equal to 0"),
        ("data", "test_fraction", 1.5, "data.test_fraction: input should be less than 1"),
        ("train", "precision", "fp16", "train.precision: input should be '32-true', 'bf16-mixed' or '16-mixed'"),
        ("train", "precision", 32, "train.precision: input should be '32-true', 'bf16-mixed' or '16-mixed' (got 32)"),
        ("train", "compile", "yes please", "train.compile: input should be a valid boolean"),
        ("train", "data_path", "disk", "train.data_path: input should be 'auto', 'resident' or 'loader'"),
        ("train", "loader_workers", -1, "train.loader_workers: input should be greater than or equal to 0"),
        ("search", "cuda_mps", "on", "search.cuda_mps: input should be 'auto' or 'off'"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(tmp_path, default_params, section, key, value, expected):
    with pytest.raises(ConfigError) as error:
        load_params(write(tmp_path, modified(default_params, section, key, value)))
    message = str(error.value)
    assert "\n" not in message
    assert expected in message


def test_half_precision_on_the_cpu_is_refused_before_any_work(tmp_path, default_params):
    params = modified(default_params, "train", "precision", "16-mixed")
    params["train"]["accelerator"] = "cpu"
    with pytest.raises(
        ConfigError, match="train: precision 16-mixed needs a GPU; on the CPU use 32-true or bf16-mixed"
    ):
        load_params(write(tmp_path, params))


def test_unknown_key_lists_the_allowed_keys(tmp_path, default_params):
    allowed = "name, lr, weight_decay, momentum, nesterov, scheduler, warmup_epochs, plateau_factor, plateau_patience, loss"
    with pytest.raises(ConfigError, match=rf"optim\.lrate: unknown key; allowed: {allowed}$"):
        load_params(write(tmp_path, modified(default_params, "optim", "lrate", 0.01)))


def test_unknown_section_and_missing_key(tmp_path, default_params):
    params = copy.deepcopy(default_params)
    params["optimiser"] = {}
    with pytest.raises(
        ConfigError, match="optimiser: unknown key \\(did you mean optim\\?\\); allowed: seed, data, model"
    ):
        load_params(write(tmp_path, params))
    params = copy.deepcopy(default_params)
    del params["train"]["max_epochs"]
    with pytest.raises(ConfigError, match="train.max_epochs: missing"):
        load_params(write(tmp_path, params))


def test_search_space_keys_and_values_are_validated(tmp_path, default_params):
    params = copy.deepcopy(default_params)
    params["search"]["space"] = {"model.widht": [1, 2]}
    with pytest.raises(ConfigError, match="search.space: unknown key 'model.widht'"):
        load_params(write(tmp_path, params))
    params["search"]["space"] = {"optim.lr": [0.01, -1]}
    with pytest.raises(ConfigError, match=r"search.space.optim.lr: value -1: Input should be greater than 0"):
        load_params(write(tmp_path, params))


def test_lr_finder_range_must_be_ordered(tmp_path, default_params):
    with pytest.raises(ConfigError, match="lr_find: min_lr .* must be below max_lr"):
        load_params(write(tmp_path, modified(default_params, "lr_find", "min_lr", 10.0)))


def test_yaml_errors_and_missing_file_are_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "absent.yaml")


def test_override_validates_like_the_file(default_params):
    params = Params.model_validate(default_params)
    assert params.override({"optim.lr": 0.5}).optim.lr == 0.5
    assert params.optim.lr == default_params["optim"]["lr"]  # the original is untouched
    with pytest.raises(ConfigError, match=r"optim.lr: input should be greater than 0 \(got -1\)"):
        params.override({"optim.lr": -1})


def test_grid_is_every_combination_once():
    grid = search_space.grid(search_space.parse({"model.kwargs.mlp.width": [8, 16, 32], "model.kwargs.mlp.dropout": [0.0, 0.5]}), "mlp")
    assert len(grid) == 6
    assert len({tuple(sorted(point.items())) for point in grid}) == 6


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A workspace where `litpipe prepare` finished: the splits, meta.json, its log and its timing."""
    workspace = tmp_path_factory.mktemp("prepared")
    shutil.copy(ROOT / "params.yaml", workspace / "params.yaml")
    subprocess.run(["litpipe", "prepare"], cwd=workspace, env=tool_env(), capture_output=True, check=True)
    return workspace


def snapshot(workspace: Path) -> dict[str, bytes | None]:
    """Every file's bytes, and every directory (None), under the workspace."""
    return {
        str(path.relative_to(workspace)): None if path.is_dir() else path.read_bytes()
        for path in sorted(workspace.rglob("*"))
    }


@pytest.mark.parametrize("stage", ["prepare", "fit", "report"])
@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [("lr", -0.1, "optim.lr: input should be greater than 0"), ("lrate", 0.01, "optim.lrate: unknown key")],
)
def test_cli_exits_2_with_one_line_before_touching_outputs(
    prepared, tmp_path, default_params, stage, key, value, expected
):
    workspace = copy_workspace(prepared, tmp_path / "workspace")
    write(workspace, modified(default_params, "optim", key, value))
    before = snapshot(workspace)
    assert {"data/prepared/meta.json", "data/prepared/train-x.npy", "logs/prepare.log"} <= set(before)
    result = subprocess.run(["litpipe", stage], cwd=workspace, env=tool_env(), capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("litpipe: params.yaml: ") and expected in result.stderr
    after = snapshot(workspace)
    assert after.keys() == before.keys()  # no file or directory created or removed
    assert [name for name in before if after[name] != before[name]] == []  # and none rewritten or appended to


@pytest.mark.parametrize(
    "key, values, reason",
    [
        ("train.max_epochs", [10, 20], "a trial trains search.max_epochs epochs"),
        ("train.swa_epoch_start", [0.5, 0.8], "a trial does not average weights (the fit does)"),
        ("train.devices", [1, 2], "a trial trains on one device"),
        ("train.strategy", ["auto", "ddp"], "a trial trains on one device"),
        ("train.data_path", ["resident", "loader"], "a search worker loads the data once, for all its trials"),
    ],
)
def test_a_search_key_that_trials_ignore_is_refused_in_one_line(tmp_path, default_params, key, values, reason):
    """A trial trains search.max_epochs epochs, on one device, without weight averaging, on the data its worker
    loaded once: searching a key it ignores would run identical trials. Refused before any work, exit 2."""
    params = copy.deepcopy(default_params)
    params["search"]["space"] = {"model.kwargs.mlp.width": [16, 32], key: values}
    write(tmp_path, params)
    result = subprocess.run(["litpipe", "search"], cwd=tmp_path, env=tool_env(), capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"search.space: {key} cannot be searched: {reason}" in result.stderr
    assert not (tmp_path / "logs").exists() and not (tmp_path / "results").exists()


def test_train_keys_that_trials_use_can_be_searched(default_params):
    params = copy.deepcopy(default_params)
    params["search"]["space"] = {
        "train.batch_size": [32, 64],
        "train.early_stopping_patience": [2, 4],
        "train.gradient_clip_val": [0.5, 1.0],
        "train.augment_flip": [False, True],
    }
    assert len(search_space.grid(Params.model_validate(params).search.dimensions(), "mlp")) == 16
