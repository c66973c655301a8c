"""The networks, the LightningModule and the training stages on the digits data (in-process, but for the
reproducibility check, which compares two `litpipe fit` processes)."""

import subprocess

import pytest
import torch
import torch.nn.functional as F

from litpipe import paths
from litpipe.data.prepared import load_split
from litpipe.errors import StageError
from litpipe.io import read_json, write_json
from litpipe.models.lit_model import LitModel
from litpipe.models.networks import CNN, MLP
from litpipe.stages import fit, sanity
from litpipe.training import build_model

from .helpers import FAST, assert_checkpoint_is_averaged, copy_workspace, tool_env


@pytest.mark.parametrize("network", [MLP, CNN])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_networks_map_images_to_class_logits(network, shape):
    net = network(shape, num_classes=10, width=8, depth=3, dropout=0.1)
    assert net(torch.randn(5, *shape)).shape == (5, 10)
    assert list(net.hidden) == [f"{'hidden' if network is MLP else 'conv'}{i}" for i in (1, 2, 3)]


def test_classifier_normalises_raw_uint8_images(digits):
    from litpipe.data.prepared import load_meta

    model = build_model(digits, load_meta()).eval()
    x = load_split("train").x[:4]
    expected = model.net((x.float() - model.mean) / model.std)
    assert torch.allclose(model(x), expected)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_checkpoint_holds_the_weights_whose_validation_loss_fit_reports(digits, arch):
    # Averaging from the second epoch, and early stopping cannot end training before it.
    params = digits.override(
        {"model.arch": arch, f"model.kwargs.{arch}.width": 16, "train.max_epochs": 8, "train.swa_epoch_start": 0.25}
    )
    write_json(paths.SEARCH / "best.json", {"params": {}})
    fit.run(params)
    summary = read_json(paths.FIT / "summary.json")
    model = LitModel.load_from_checkpoint(paths.BEST_CKPT, map_location="cpu").eval()
    val = load_split("val")
    with torch.no_grad():
        loss = F.cross_entropy(model(val.x), val.y).item()
    assert loss == pytest.approx(summary["best_val_loss"], rel=1e-4)
    assert summary["swa_start_epoch"] == 1 and summary["best_epoch"] > 1
    assert summary["checkpoint_is_averaged"]
    # Averaged for real: the weights at the end of each epoch from the start up to the validated one.
    assert assert_checkpoint_is_averaged(paths.BEST_CKPT) == summary["best_epoch"] - summary["swa_start_epoch"] + 1


@pytest.mark.slow
def test_fit_is_reproducible_on_cpu(workspace, tmp_path):
    """Two `litpipe fit` processes, as two runs of the pipeline are: nothing carried over in memory (seeds,
    cached state) can make them agree. They run side by side, each in its own copy of the workspace."""
    # Four epochs still average weights (from the first) and can stop early (from the third).
    fast = {k: v for k, v in FAST.items() if k != "search.space"}
    workspace({**fast, "train.max_epochs": 4, "train.accelerator": "cpu"})
    write_json(paths.SEARCH_BEST, {"params": {}})
    runs = [copy_workspace(tmp_path, tmp_path.parent / f"{tmp_path.name}-run{i}") for i in (1, 2)]
    processes = []
    for run in runs:
        with (run / "fit.out").open("w") as output:  # a file, not a pipe nobody reads while the fit runs
            processes.append(
                subprocess.Popen(["litpipe", "fit"], cwd=run, env=tool_env(), stdout=output, stderr=subprocess.STDOUT)
            )
    for run, process in zip(runs, processes):
        assert process.wait(timeout=600) == 0, (run / "fit.out").read_text()[-3000:]
    for result in (paths.FIT_METRICS, paths.FIT_HISTORY):
        assert (runs[0] / result).read_bytes() == (runs[1] / result).read_bytes(), result


def test_sanity_stops_when_the_model_cannot_overfit(digits):
    hopeless = digits.override({"sanity.overfit_epochs": 2, "sanity.overfit_max_loss": 1e-6})
    with pytest.raises(StageError, match="could not overfit one batch of 64: loss .* after 2 steps"):
        sanity.run(hopeless)
    assert not (paths.SANITY / "summary.json").exists()


def test_sanity_passes_and_records_both_checks(digits):
    sanity.run(digits)
    summary = read_json(paths.SANITY / "summary.json")
    assert summary["overfit"]["passed"] and summary["overfit"]["final_loss"] < digits.sanity.overfit_max_loss
    assert {"train/loss", "val/loss", "test/loss"} <= set(summary["fast_dev_run"])
