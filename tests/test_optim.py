"""Optimisers, learning-rate schedules and weight averaging: the rate at every step of each schedule against its
formula, each optimiser through the fit, the LR finder and a search, and the averaged weights (BatchNorm's
statistics included) that the fit validates, checkpoints and tests."""

import csv
import math

import pytest
import torch
import torch.nn.functional as F

from litpipe import paths
from litpipe.config import load_params
from litpipe.data.prepared import load_split
from litpipe.errors import ConfigError
from litpipe.io import read_json, write_json
from litpipe.models import optim
from litpipe.models.lit_model import LitModel
from litpipe.stages import fit, lr_find

from .helpers import assert_checkpoint_is_averaged, write_network

LR, STEPS, EPOCHS = 0.1, 5, 4  # a run of 4 epochs of 5 steps


def rates(scheduler: str, warmup_epochs: int = 0, name: str = "adam", losses: list[float] = ()) -> list[float]:
    """The learning rate each optimizer step of the run takes, the schedule stepped as the model steps it;
    `losses`: the validation loss of each epoch, for the plateau schedule."""
    weight = torch.nn.Parameter(torch.zeros(2))
    chosen = optim.optimizer(name, [weight], LR, 0.0, 0.9, False, {})
    schedule = optim.schedule(chosen, scheduler, warmup_epochs, STEPS, EPOCHS, 0.5, 0)
    taken = []
    for epoch in range(EPOCHS):
        for _ in range(STEPS):
            taken.append(chosen.param_groups[0]["lr"])
            weight.grad = torch.ones(2)
            chosen.step()
            for config in schedule:
                if config["interval"] == "step":
                    config["scheduler"].step()
        for config in schedule:
            if config["interval"] == "epoch":
                config["scheduler"].step(losses[epoch])
    return taken


def test_cosine_falls_from_the_rate_to_zero_on_a_half_cosine():
    total = STEPS * EPOCHS
    expected = [LR * (1 + math.cos(math.pi * step / (total - 1))) / 2 for step in range(total)]
    assert rates("cosine") == pytest.approx(expected)
    assert rates("cosine")[-1] == pytest.approx(0.0)


def test_warmup_rises_linearly_then_the_schedule_takes_over():
    warm = STEPS  # one epoch
    rising = [LR * (step + 1) / warm for step in range(warm)]
    assert rates("none", warmup_epochs=1) == pytest.approx(rising + [LR] * (STEPS * EPOCHS - warm))
    falling = [LR * (1 + math.cos(math.pi * step / (STEPS * EPOCHS - 1 - warm))) / 2 for step in range(15)]
    assert rates("cosine", warmup_epochs=1) == pytest.approx(rising + falling)


def test_the_plateau_schedule_halves_the_rate_after_an_epoch_without_improvement_warmup_or_not():
    losses = [1.0, 0.5, 0.7, 0.4]  # epoch 2 does not improve: patience 0 halves the rate for epoch 3
    plain = rates("plateau", losses=losses)
    assert plain == [LR] * 15 + [LR / 2] * 5
    warmed = rates("plateau", warmup_epochs=1, losses=losses)
    assert warmed == pytest.approx([LR * (step + 1) / STEPS for step in range(STEPS)] + [LR] * 10 + [LR / 2] * 5)


def test_onecycle_rises_over_the_warmup_to_the_rate_then_falls_far_below_it():
    for warmup_epochs, peak_step in ((0, round(0.3 * STEPS * EPOCHS) - 1), (2, 2 * STEPS - 1)):
        taken = rates("onecycle", warmup_epochs)
        # torch's OneCycleLR: from rate / 25 up to the rate, then down to rate / 25 / 10^4.
        assert taken[0] == pytest.approx(LR / 25)
        assert max(taken) == pytest.approx(LR) and taken.index(max(taken)) == peak_step
        assert taken == sorted(taken[: peak_step + 1]) + sorted(taken[peak_step + 1 :], reverse=True)
        assert taken[-1] < LR / 1000


def test_constant_rate_without_a_schedule():
    assert rates("none") == [LR] * (STEPS * EPOCHS)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_each_optimiser_is_torchs_with_the_configured_settings(name):
    weight = torch.nn.Parameter(torch.zeros(2))
    chosen = optim.optimizer(name, [weight], 0.01, 0.001, 0.8, name == "sgd", {})
    assert type(chosen).__name__ == {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}[name]
    assert chosen.defaults["lr"] == 0.01 and chosen.defaults["weight_decay"] == 0.001
    if name == "sgd":
        assert chosen.defaults["momentum"] == 0.8 and chosen.defaults["nesterov"]


def test_params_refuse_settings_that_cannot_take_effect(default_params, tmp_path):
    import yaml

    def refused(changes: dict) -> str:
        tree = yaml.safe_load(yaml.safe_dump(default_params))
        for dotted, value in changes.items():
            section, key = dotted.split(".", 1)
            tree[section][key] = value
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
        with pytest.raises(ConfigError) as error:
            load_params(tmp_path / "params.yaml")
        return str(error.value)

    assert "nesterov needs name: sgd" in refused({"optim.nesterov": True})
    assert "nesterov needs name: sgd and a momentum above 0" in refused(
        {"optim.name": "sgd", "optim.momentum": 0.0, "optim.nesterov": True}
    )
    assert "optim.name: input should be 'adam', 'adamw' or 'sgd'" in refused({"optim.name": "rmsprop"}).lower()
    message = refused({"search.space": {"optim.momentum": [0.5, 0.9]}})
    assert "optim.momentum takes effect with optim.name: sgd only (optim.name is adam)" in message
    message = refused({"optim.scheduler": "cosine", "search.space": {"optim.plateau_patience": [1, 5]}})
    assert "optim.plateau_patience takes effect with optim.scheduler: plateau only" in message
    # Searched together with the setting it needs, it is allowed.
    tree = yaml.safe_load(yaml.safe_dump(default_params))
    tree["search"]["space"] = {
        "optim.name": ["adam", "sgd"],
        "optim.momentum": [0.5, 0.9],
        "optim.scheduler": ["cosine", "onecycle"],
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    assert load_params(tmp_path / "params.yaml").search.space["optim.name"] == ["adam", "sgd"]


def history(path=paths.FIT / "history.csv") -> list[dict[str, float]]:
    return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(open(path))]


@pytest.mark.parametrize(
    "changes",
    [
        {
            "optim.name": "sgd",
            "optim.lr": 0.05,
            "optim.nesterov": True,
            "optim.scheduler": "cosine",
            "optim.warmup_epochs": 1,
        },
        {"optim.name": "adamw", "optim.scheduler": "onecycle", "train.steps_per_call": 3},
    ],
    ids=["sgd-nesterov-cosine-warmup", "adamw-onecycle"],
)
def test_the_fit_trains_to_the_end_of_each_schedule(digits, changes):
    # No early stop, so the schedule runs to its last step: a step count off by one would overrun onecycle.
    params = digits.override({**changes, "train.early_stopping_patience": 50, "train.max_epochs": 5})
    write_json(paths.SEARCH / "best.json", {"params": {}})
    fit.run(params)
    rows = history()
    assert [row["epoch"] for row in rows] == [0, 1, 2, 3, 4]
    assert rows[-1]["val/acc"] > 0.8
    lrs = [row["lr"] for row in rows]  # the rate after each epoch's last step
    if changes["optim.scheduler"] == "cosine":
        assert lrs[0] == pytest.approx(params.optim.lr)  # the warmup (one epoch) has just ended
        assert lrs == sorted(lrs, reverse=True) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    else:
        assert max(lrs) <= params.optim.lr and lrs[-1] < params.optim.lr / 1000


def test_the_lr_finder_suggests_a_rate_for_sgd_with_onecycle(digits):
    params = digits.override({"optim.name": "sgd", "optim.scheduler": "onecycle"})
    lr_find.run(params)
    suggestion = read_json(paths.LR_FIND_RESULT)["suggestion"]
    assert params.lr_find.min_lr < suggestion < params.lr_find.max_lr


def fresh_batch_norm_statistics(model: LitModel, batch_size: int) -> dict[str, torch.Tensor]:
    """torch's own update_bn over the training split in order, in pieces of `batch_size`: the reference."""
    train = load_split("train")
    pieces = list(zip(train.x.split(batch_size), train.y.split(batch_size)))
    torch.optim.swa_utils.update_bn(pieces, model)
    model.eval()
    return {name: value.clone() for name, value in model.state_dict().items() if "running_" in name}


def test_averaged_weights_are_validated_with_their_own_batch_norm_statistics(digits):
    """A network with BatchNorm, averaged from the second epoch: the average validated at epoch e includes
    epoch e, and the checkpoint's running statistics are those of a fresh pass with the averaged weights, whose
    validation loss is the one the fit records."""
    write_network(paths.PARAMS.parent.absolute())
    params = digits.override(
        {
            "model.arch": "nets/small.py:SmallResNet",
            "model.kwargs.SmallResNet": {"channels": 8, "blocks": 1},
            "train.max_epochs": 5,
            "train.swa_epoch_start": 0.4,  # epoch 1 (from 0)
            "train.early_stopping_patience": 50,
        }
    )
    write_json(paths.SEARCH / "best.json", {"params": {}})
    fit.run(params)
    summary = read_json(paths.FIT / "summary.json")
    assert summary["swa_start_epoch"] == 1
    # Every epoch validated other weights: the first average (epoch 1 alone) is not epoch 0's weights again.
    losses = [row["val/loss"] for row in history()]
    assert len(set(losses)) == len(losses) == 5
    # The checkpoint holds the average of the weights of epochs 1 .. best, the best epoch's own included.
    assert assert_checkpoint_is_averaged(paths.BEST_CKPT) == summary["best_epoch"]

    model = LitModel.from_checkpoint(paths.BEST_CKPT)
    stored = {name: value.clone() for name, value in model.state_dict().items() if "running_" in name}
    assert stored, "no BatchNorm statistics in the checkpoint"
    fresh = fresh_batch_norm_statistics(model, params.train.batch_size)
    for name, value in stored.items():
        torch.testing.assert_close(value, fresh[name], rtol=1e-4, atol=1e-5, msg=name)
    val = load_split("val")
    with torch.no_grad():
        loss = F.cross_entropy(model(val.x), val.y).item()
    assert loss == pytest.approx(summary["best_val_loss"], rel=1e-4)
