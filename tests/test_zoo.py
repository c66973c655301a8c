"""models/zoo.py: every network `model.arch` names, built from `model.kwargs` and refused in one line before any
work when it cannot be; a researcher's own module from the repository root; torchvision's models adapted to
the data."""

import sys
from contextlib import chdir
from pathlib import Path

import pytest
import torch
from torch import nn

from litpipe.config import Params
from litpipe.errors import ConfigError
from litpipe.models import zoo

from .helpers import write_network

MLP_KWARGS = {"width": 16, "depth": 2, "dropout": 0.1}

@pytest.fixture
def repo(tmp_path) -> Path:
    """A repository root with the researcher's package `nets`, as the working directory."""
    write_network(tmp_path)
    path = list(sys.path)
    with chdir(tmp_path):
        yield tmp_path
    # One process, one repository: forget this one's modules, as a fresh litpipe process would not know them.
    sys.path[:] = path
    for name in [name for name in sys.modules if name == "nets" or name.startswith("nets.")]:
        del sys.modules[name]


def refusal(arch: str, kwargs: dict, stem: str = "auto", input_shape=(1, 8, 8), classes: int = 10) -> str:
    with pytest.raises(ConfigError) as error:
        zoo.build(arch, kwargs, stem, input_shape, classes)
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_litpipe_networks_build_as_before():
    torch.manual_seed(0)
    net = zoo.build("mlp", MLP_KWARGS, "auto", (1, 8, 8), 10)
    torch.manual_seed(0)
    from litpipe.models.networks import MLP

    plain = MLP((1, 8, 8), 10, 16, 2, 0.1)  # the positional signature: drawn in the same order
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), plain.state_dict().values(), strict=True))
    assert list(zoo.blocks(net)) == ["hidden1", "hidden2"]


@pytest.mark.parametrize("arch", ["nets.small:SmallResNet", "nets/small.py:SmallResNet"])
def test_a_researchers_network_from_a_module_or_a_file(repo, arch):
    net = zoo.build(arch, {"channels": 8, "blocks": 2}, "auto", (3, 12, 12), 5)
    assert type(net).__name__ == "SmallResNet"
    assert net(torch.zeros(4, 3, 12, 12)).shape == (4, 5)  # input_shape and num_classes reached it
    assert list(zoo.blocks(net)) == ["stem", "stage1", "head"]


def test_a_network_that_takes_neither_shape_nor_class_count_gets_neither(repo):
    net = zoo.build("nets.small:NoShapes", {"features": 64, "outputs": 10}, "auto", (1, 8, 8), 10)
    assert net.linear.in_features == 64


@pytest.mark.parametrize(
    ("arch", "kwargs", "said"),
    [
        ("mlp", {"widht": 16, "depth": 2, "dropout": 0.1}, "model.kwargs.mlp.widht: MLP has no argument 'widht' (did you mean width?)"),
        ("mlp", {"width": 16}, "model.kwargs.mlp: MLP needs depth, dropout (add them under model.kwargs.mlp)"),
        ("mlp", {**MLP_KWARGS, "input_shape": [1, 8, 8]}, "model.kwargs.mlp.input_shape: litpipe passes input_shape itself"),
        ("resnet19", {}, "model.arch: unknown network 'resnet19' (did you mean resnet18?)"),
        ("resnet18", {"widht_per_group": 32}, "model.kwargs.resnet18.widht_per_group: torchvision's resnet18 has no argument"),
        ("nets.missing:Net", {}, "model.arch: cannot import nets.missing: No module named 'nets.missing'"),
        ("nets/missing.py:Net", {}, "model.arch: nets/missing.py: no such file (paths are from the repository root)"),
        ("nets.small:SmallResNett", {"channels": 4}, "model.arch: nets.small has no 'SmallResNett' (did you mean SmallResNet?)"),
        ("nets.small:helper", {}, "model.arch: nets.small:helper is not a torch.nn.Module class (it is function)"),
        ("nets.small:SmallResNet", {}, "model.kwargs.SmallResNet: SmallResNet needs channels"),
        # The constructor's own complaint, with where in the researcher's code it arose.
        ("nets.small:SmallResNet", {"channels": -1}, "model: building nets.small:SmallResNet failed (small.py line"),
    ],
)  # fmt: skip
def test_a_network_that_cannot_be_built_is_one_line(repo, arch, kwargs, said):
    assert said in refusal(arch, kwargs)


def test_a_module_that_does_not_import_names_the_line(repo):
    (repo / "nets/broken.py").write_text("import torch\n\nx = undefined_name\n")
    assert "importing nets.broken failed (broken.py line 3): NameError: name 'undefined_name'" in refusal(
        "nets.broken:Net", {}
    )
    (repo / "nets/syntax.py").write_text("class Net(:\n")
    assert "importing nets/syntax.py failed (syntax.py line 1): SyntaxError" in refusal("nets/syntax.py:Net", {})


def test_a_forward_of_the_wrong_shape_or_that_fails_is_one_line_before_training(repo):
    wrong = refusal("nets.small:NoShapes", {"features": 64, "outputs": 7})
    assert wrong == (
        "model.arch: nets.small:NoShapes's forward returned (2, 7) for a batch of 2 inputs of shape (1, 8, 8); "
        "expected logits of shape (2, 10)"
    )
    fails = refusal("nets.small:NoShapes", {"features": 50, "outputs": 10})
    assert fails.startswith("model.arch: nets.small:NoShapes's forward failed on a probe batch of shape (2, 1, 8, 8): ")


def test_the_probe_draws_no_random_numbers_and_leaves_batchnorm_as_it_was(repo):
    torch.manual_seed(3)
    net = zoo.build("nets.small:SmallResNet", {"channels": 4}, "auto", (1, 8, 8), 10)
    after = torch.rand(1)
    torch.manual_seed(3)
    zoo.constructor("nets.small:SmallResNet")((1, 8, 8), 10, channels=4)
    assert torch.equal(after, torch.rand(1))  # the same stream as construction alone
    batchnorm = net.stem[1]
    assert net.training and int(batchnorm.num_batches_tracked) == 0
    assert torch.equal(batchnorm.running_mean, torch.zeros(4))


def test_torchvision_models_are_adapted_to_small_images_and_the_data():
    net = zoo.build("resnet18", {}, "auto", (1, 32, 32), 10)
    assert (net.conv1.in_channels, net.conv1.kernel_size, net.conv1.stride) == (1, (3, 3), (1, 1))
    assert isinstance(net.maxpool, nn.Identity) and net.fc.out_features == 10
    assert list(zoo.blocks(net)) == ["layer1", "layer2", "layer3", "layer4"]
    # 64 pixels and more keep torchvision's own stem, with the data's channels.
    large = zoo.build("resnet18", {}, "auto", (2, 64, 64), 3)
    assert (large.conv1.in_channels, large.conv1.kernel_size, large.conv1.stride) == (2, (7, 7), (2, 2))
    assert isinstance(large.maxpool, nn.MaxPool2d)
    forced = zoo.build("resnet18", {}, "small", (3, 64, 64), 3)
    assert forced.conv1.stride == (1, 1)
    kept = zoo.build("resnet18", {}, "standard", (3, 32, 32), 3)
    assert kept.conv1.stride == (2, 2) and isinstance(kept.maxpool, nn.MaxPool2d)
    # Arguments of torchvision's model class reach it.
    zeroed = zoo.build("resnet18", {"zero_init_residual": True}, "auto", (3, 32, 32), 3)
    assert not zeroed.layer1[0].bn2.weight.any() and kept.layer1[0].bn2.weight.all()


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "swin_t"])
def test_other_torchvision_families_build_for_small_images(arch):
    net = zoo.build(arch, {}, "auto", (1, 32, 32), 7)
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1
    if arch == "swin_t":
        assert first.stride == (4, 4)  # a transformer's patches stay patches
    else:
        assert first.stride == (1, 1)
    assert zoo.blocks(net)


def test_every_torchvision_name_is_known():
    import torchvision

    for name in torchvision.models.list_models(torchvision.models):
        zoo.check(name, {})


def test_search_space_may_hold_the_network_and_its_arguments(default_params):
    """Each network's arguments are its own: the cnn's values are checked against the CNN, the mlp's against the
    MLP, and a trial of the cnn gets the cnn's arguments from params.yaml with its searched value."""
    space = {"model.arch": ["mlp", "cnn"], "model.kwargs.mlp.depth": [1, 3], "model.kwargs.cnn.width": [8, 16]}
    params = Params.model_validate({**default_params, "search": {**default_params["search"], "space": space}})
    zoo.check_params(params)
    trial = params.override({"model.arch": "cnn", "model.kwargs.cnn.width": 8})
    assert trial.model.arguments == {**default_params["model"]["kwargs"]["cnn"], "width": 8}
    assert trial.model.kwargs["mlp"] == default_params["model"]["kwargs"]["mlp"]
    misspelt = {**space, "model.kwargs.cnn.widht": [8]}
    params = Params.model_validate({**default_params, "search": {**default_params["search"], "space": misspelt}})
    with pytest.raises(ConfigError, match=r"model.kwargs.cnn.widht: CNN has no argument 'widht' \(did you mean width\?\)"):
        zoo.check_params(params)


def test_a_network_without_arguments_in_params_gets_its_defaults(default_params):
    """`-S model.arch=resnet18` with no model.kwargs.resnet18: torchvision's defaults; the mlp's are not passed."""
    params = Params.model_validate({**default_params, "model": {**default_params["model"], "arch": "resnet18"}})
    assert params.model.arguments == {}
    zoo.check_params(params)
    own = {**default_params["model"], "arch": "nets/small.py:SmallResNet", "kwargs": {"SmallResNet": {"channels": 4}}}
    assert Params.model_validate({**default_params, "model": own}).model.arguments == {"channels": 4}


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        ({"width": 1e3, "depth": 2, "dropout": 0.1}, "model.kwargs.mlp.width: input should be a valid integer (got 1000.0)"),
        ({"width": True, "depth": 2, "dropout": 0.1}, "model.kwargs.mlp.width: input should be a valid integer (got True)"),
        ({"width": 0, "depth": 2, "dropout": 0.1}, "model.kwargs.mlp.width: input should be greater than or equal to 1 (got 0)"),
        ({"width": 8, "depth": 2, "dropout": 1.5}, "model.kwargs.mlp.dropout: input should be less than 1 (got 1.5)"),
    ],
)
def test_arguments_are_checked_against_the_constructors_annotations(kwargs, said):
    with pytest.raises(ConfigError) as error:
        zoo.check("mlp", kwargs)
    assert str(error.value) == said
    with pytest.raises(ConfigError, match="model.kwargs.resnet18.zero_init_residual: input should be a valid boolean"):
        zoo.check("resnet18", {"zero_init_residual": "yes"})


def test_every_value_the_search_may_choose_is_checked(default_params):
    """Not only the first: a value out of range at the far end of a list fails before the search starts."""
    space = {"model.kwargs.mlp.width": [8, 16], "model.kwargs.mlp.dropout": [0.1, 1.5]}
    params = Params.model_validate({**default_params, "search": {**default_params["search"], "space": space}})
    with pytest.raises(ConfigError, match=r"model.kwargs.mlp.dropout: input should be less than 1 \(got 1.5\)"):
        zoo.check_params(params)
