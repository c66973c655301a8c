"""The networks, the LightningModule and the training stages, in-process on the digits data."""

import pytest
import torch
import torch.nn.functional as F

from litpipe import paths
from litpipe.data.prepared import load_split
from litpipe.errors import StageError
from litpipe.io import read_json, write_json
from litpipe.models.classifier import Classifier
from litpipe.models.networks import CNN, MLP
from litpipe.stages import fit, sanity
from litpipe.training import build_model


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
        {"model.arch": arch, "model.width": 16, "train.max_epochs": 8, "train.swa_epoch_start": 0.25}
    )
    write_json(paths.SEARCH / "best.json", {"params": {}})
    fit.run(params)
    summary = read_json(paths.FIT / "summary.json")
    model = Classifier.load_from_checkpoint(paths.BEST_CKPT, map_location="cpu").eval()
    val = load_split("val")
    with torch.no_grad():
        loss = F.cross_entropy(model(val.x), val.y).item()
    assert loss == pytest.approx(summary["best_val_loss"], rel=1e-4)
    assert summary["swa_start_epoch"] == 1 and summary["best_epoch"] > 1
    assert summary["checkpoint_is_averaged"]


def test_fit_is_reproducible_on_cpu(digits):
    write_json(paths.SEARCH / "best.json", {"params": {}})
    fit.run(digits)
    first = read_json(paths.FIT / "metrics.json")
    fit.run(digits)
    assert read_json(paths.FIT / "metrics.json") == first


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
