"""Fine-tuning: `model.weights` (a torchvision state dict, a plain one, a litpipe checkpoint) loaded into the
network with what does not fit named in one line each, `train.freeze_epochs` training the head alone, the file
tracked as a dependency of the stages that build the network, and bad files refused in one line."""

import logging
import shutil
from contextlib import chdir

import pytest
import torch
import torchvision
import yaml

from litpipe import paths
from litpipe.config import Params, load_params
from litpipe.errors import ConfigError
from litpipe.io import write_json
from litpipe.models import weights, zoo
from litpipe.models.lit_model import LitModel
from litpipe.models.networks import MLP
from litpipe.stages import fit, sanity

from .helpers import ROOT, copy_repo, run


def test_torchvision_weights_for_other_classes_and_channels_load_all_but_the_head_and_the_first_convolution(
    tmp_path, caplog
):
    """ImageNet's resnet18 layout (3 channels, 1000 classes) into a resnet18 for 1-channel 8 x 8 images of 10
    classes: every tensor loads but the adapted first convolution and the new head, which are named."""
    pretrained = torchvision.models.resnet18(num_classes=1000)
    torch.save(pretrained.state_dict(), tmp_path / "resnet18.pth")
    net = zoo.build("resnet18", {}, "auto", (1, 8, 8), 10)
    with caplog.at_level(logging.INFO, logger="litpipe.models.weights"):
        weights.load_into(net, tmp_path / "resnet18.pth")
    mine, theirs = net.state_dict(), pretrained.state_dict()
    reshaped = {"conv1.weight", "fc.weight", "fc.bias"}
    for key in mine:
        assert torch.equal(mine[key], theirs[key]) == (key not in reshaped), key
    lines = [record.getMessage() for record in caplog.records]
    assert f"model.weights: loaded {len(mine) - 3} of the network's {len(mine)} tensors from" in lines[0]
    assert lines[1] == "model.weights: another shape in the file, so initialised afresh (a new head): " + (
        "conv1.weight, fc.weight, fc.bias"
    )
    assert len(lines) == 2  # nothing missing, nothing unexpected


def test_missing_and_unexpected_keys_are_one_line_each(tmp_path, caplog):
    net = MLP((1, 8, 8), num_classes=10, width=8, depth=1, dropout=0.0)
    state = {key: value.clone() for key, value in net.state_dict().items() if key != "head.bias"}
    state["extra.weight"] = torch.zeros(3)
    torch.save({"state_dict": {f"module.{key}": value for key, value in state.items()}}, tmp_path / "w.pt")
    fresh = MLP((1, 8, 8), num_classes=10, width=8, depth=1, dropout=0.0)
    with caplog.at_level(logging.INFO, logger="litpipe.models.weights"):
        weights.load_into(fresh, tmp_path / "w.pt")
    assert torch.equal(fresh.head.weight, net.head.weight) and not torch.equal(fresh.head.bias, net.head.bias)
    lines = [record.getMessage() for record in caplog.records][1:]
    assert lines == [
        "model.weights: missing from the file, so initialised afresh: head.bias",
        "model.weights: in the file but not in the network, so ignored: extra.weight",
    ]


@pytest.mark.parametrize(
    "contents, message",
    [
        ({"conv.weight": torch.zeros(2)}, "none of the 1 tensors of {file} fit MLP (its first keys: conv.weight;"),
        ([1, 2, 3], "{file} holds no state dict (found list)"),
        ("garbage", "{file} is not a file of weights (torch.load cannot read it)"),
        (torch.nn.Linear(2, 2), "{file} refused: it holds objects that would run code when loaded"),
    ],
    ids=["nothing-fits", "a-list", "not-torch", "a-pickled-module"],
)
def test_a_file_that_gives_the_network_nothing_is_one_line(tmp_path, contents, message):
    file = tmp_path / "bad.pt"
    if contents == "garbage":
        file.write_bytes(b"not a torch file")
    else:
        torch.save(contents, file)
    with pytest.raises(ConfigError) as error:
        weights.load_into(MLP((1, 8, 8), num_classes=10, width=8, depth=1, dropout=0.0), file)
    assert str(error.value).startswith("model.weights: " + message.format(file=file))
    assert "\n" not in str(error.value)


def net_tensors(checkpoint) -> dict[str, torch.Tensor]:
    return {key: value for key, value in LitModel.from_checkpoint(checkpoint).net.state_dict().items()}


def test_a_fit_starts_from_a_litpipe_checkpoint_and_freezing_trains_only_the_head(digits):
    """A first fit's checkpoint as the weights of two more: three epochs all frozen keep every hidden layer
    exactly as loaded and train the head; one frozen epoch of three trains the hidden layers too."""
    write_json(paths.SEARCH_BEST, {"params": {}})
    base = {"model.kwargs.mlp.width": 16, "train.max_epochs": 3, "train.early_stopping_patience": 50}
    fit.run(digits.override(base))
    shutil.copy(paths.BEST_CKPT, "start.ckpt")  # in the workspace: model.weights is relative to it
    start = net_tensors("start.ckpt")

    fit.run(digits.override({**base, "model.weights": "start.ckpt", "train.freeze_epochs": 3}))
    frozen = net_tensors(paths.BEST_CKPT)
    for key, value in frozen.items():
        assert torch.equal(value, start[key]) == (not key.startswith("head.")), key

    fit.run(digits.override({**base, "model.weights": "start.ckpt", "train.freeze_epochs": 1}))
    thawed = net_tensors(paths.BEST_CKPT)
    assert all(not torch.equal(value, start[key]) for key, value in thawed.items()), "a layer never trained"


def test_params_refuse_freezing_without_weights_and_files_that_are_not_weights(default_params):
    params = Params.model_validate(default_params)
    with pytest.raises(ConfigError, match=r"train.freeze_epochs trains the head on model.weights, and model.weights"):
        params.override({"train.freeze_epochs": 2})
    with pytest.raises(ConfigError, match=r"model.weights: .*a .pt, .pth, .ckpt, .bin file.*got 'weights.txt'"):
        params.override({"model.weights": "weights.txt"})
    with pytest.raises(ConfigError, match=r"model.weights: weights/none.pth not found"):
        zoo.check_params(params.override({"model.weights": "weights/none.pth"}))


def weights_deps(repo) -> dict[str, set[str]]:
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    return {name: {dep for dep in spec.get("deps", []) if dep.startswith("weights/")} for name, spec in stages.items()}


def test_the_weights_file_is_a_dependency_of_the_stages_that_build_the_network(tmp_path):
    """Like a network's own file: `litpipe dag --write` writes it, `--check` misses it, a stage refuses to start
    without it (exit 2, one line), and switching files replaces it; models/best.ckpt, made by the fit, stays."""
    repo = copy_repo(tmp_path)
    (repo / "weights").mkdir()
    for name in ("a.pth", "b.pth"):
        net = MLP((1, 8, 8), num_classes=10, width=256, depth=2, dropout=0.1)
        torch.save(net.state_dict(), repo / "weights" / name)
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text.replace("  weights: null", "  weights: weights/a.pth", 1))
    checked = run(["litpipe", "dag", "--check"], repo, check=False)
    assert checked.returncode == 1 and "dvc.yaml: stage fit: missing weights/a.pth" in checked.stderr
    with chdir(repo), pytest.raises(ConfigError) as refused:  # what cli.py runs before any work: exit 2
        sanity.check(load_params())
    assert str(refused.value) == (
        "model.weights: dvc.yaml does not list weights/a.pth among the deps of the stages that build the network, "
        "so editing it would re-run nothing; run `litpipe dag --write`"
    )
    run(["litpipe", "dag", "--write"], repo)
    with chdir(repo):
        sanity.check(load_params())
    builders = {"sanity", "lr_find", "search", "fit", "test", "analyze"}
    assert weights_deps(repo) == {name: {"weights/a.pth"} if name in builders else set() for name in weights_deps(ROOT)}
    (repo / "params.yaml").write_text(text.replace("  weights: null", "  weights: weights/b.pth", 1))
    run(["litpipe", "dag", "--write"], repo)
    assert weights_deps(repo)["fit"] == {"weights/b.pth"}
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert "models/best.ckpt" in stages["test"]["deps"] and "models/best.ckpt" in stages["analyze"]["deps"]
    (repo / "params.yaml").write_text(text)
    run(["litpipe", "dag", "--write"], repo)
    assert (repo / "dvc.yaml").read_text() == (ROOT / "dvc.yaml").read_text()
