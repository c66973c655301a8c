"""fit: final training with the best searched params, early stopping and weight averaging.

models/best.ckpt holds the weights with the lowest validation loss; once averaging has started
those are the averaged weights, which are also the ones validated (see training.StochasticWeightAveraging).
Early stopping may only stop training once the average has been validated for a full patience
window, so it can never silently discard the average. The run is tb/fit: an HPARAMS session
with the same columns as the search trials, plus the test accuracy of the saved checkpoint.
"""

import logging
from collections.abc import Sequence

import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from litpipe import paths, plots, training
from litpipe.config import Params
from litpipe.data.prepared import PreparedData, load_meta, load_split
from litpipe.errors import ConfigError, StageError
from litpipe.io import atomic_path, read_json, write_json
from litpipe.models.classifier import MONITOR, Classifier
from litpipe.observe.monitors import ACTIVATION_COLUMNS
from litpipe.observe.tensorboard import add_figure, add_log_file, describe_run
from litpipe.preemption import Preempted, Preemption, discard, fingerprint, resume_point
from litpipe.training import (
    StochasticWeightAveraging,
    TrainingRun,
    build_model,
    make_trainer,
    seed_everything,
)

log = logging.getLogger(__name__)


def assemble(
    params: Params, probe: torch.Tensor, callbacks: Sequence[Callback] = (), identity: str = ""
) -> TrainingRun:
    """The fit's Trainer: the shared training run plus weight averaging, the best checkpoint and
    preemption, whose resume checkpoint carries `identity` (`litpipe bench` times exactly this)."""
    checkpoint = ModelCheckpoint(
        dirpath=paths.BEST_CKPT.parent,
        filename=paths.BEST_CKPT.stem,
        monitor=MONITOR,
        mode="min",
        save_top_k=1,
        enable_version_counter=False,
        # Save right after validation: at train-epoch end the average has already absorbed this
        # epoch's weights and would no longer be the weights that were validated.
        save_on_train_epoch_end=False,
    )
    swa_start = swa_start_epoch(params)
    return training.assemble(
        params,
        "fit",
        probe,
        params.train.max_epochs,
        # Preemption last: its checkpoint must come after every other callback's epoch-end work.
        callbacks=[StochasticWeightAveraging(swa_start), checkpoint, *callbacks, Preemption(identity)],
        distributed=True,
        enable_checkpointing=True,
        min_epochs=min(params.train.max_epochs, swa_start + 1 + params.train.early_stopping_patience),
    )


def run(params: Params) -> None:
    searched = read_json(paths.SEARCH_BEST)["params"]
    try:
        params = params.override(searched)
    except ConfigError as error:
        raise StageError(f"{paths.SEARCH_BEST}: {error}; run the search again") from None
    seed_everything(params.seed)
    meta, data = load_meta(), PreparedData.from_params(params)
    model = build_model(params, meta)
    identity = fingerprint(params, meta)
    fit = assemble(params, load_split("val").head(params.observe.probe_size).x, identity=identity)
    trainer, tensorboard, history, swa_start = fit.trainer, fit.tensorboard, fit.history, swa_start_epoch(params)
    provenance = describe_run(tensorboard, params, model)
    try:
        trainer.fit(model, datamodule=data, ckpt_path=resume_point(identity), weights_only=True)
    except Preempted as stop:
        again = "run the stage again to resume" if paths.RESUME_CKPT.exists() else "run the stage again"
        raise StageError(f"fit preempted by {stop}; {again}") from None
    if not trainer.is_global_zero:
        return  # under DDP the first process writes the results
    discard()
    test_acc = test_accuracy_of_checkpoint(params, data, tensorboard)

    table = pd.DataFrame(history.rows)
    with atomic_path(paths.FIT_HISTORY) as tmp:
        table.to_csv(tmp, index=False)
    rows = [row for monitor in fit.monitors for row in monitor.activation_rows]
    with atomic_path(paths.FIT_ACTIVATIONS) as tmp:
        pd.DataFrame(rows, columns=ACTIVATION_COLUMNS).to_csv(tmp, index=False)
    best = history.best()
    figure = curves_figure(table, best, swa_start)
    add_figure(tensorboard, "curves", figure, trainer.global_step)
    plots.save(figure, paths.FIT_CURVES)

    metrics = {
        "best_epoch": int(best["epoch"]),
        "best_val_loss": best[MONITOR],
        "best_val_acc": best["val/acc"],
        "epochs": len(table),
    }
    write_json(paths.FIT_METRICS, metrics)
    write_json(
        paths.FIT_SUMMARY,
        {
            **metrics,
            "test_acc_in_fit": test_acc,
            "searched_params": searched,
            "params": {"model": params.model.model_dump(), "optim": params.optim.model_dump()},
            "swa_start_epoch": swa_start,
            # The average is first updated at the end of epoch swa_start and validated from the next epoch.
            "checkpoint_is_averaged": best["epoch"] > swa_start,
            "early_stopped": fit.early_stopping.stopped_epoch > 0,
            **provenance,
        },
    )
    log.info("best epoch %d: val/loss %.4f, val/acc %.4f", best["epoch"], best[MONITOR], best["val/acc"])
    add_log_file(tensorboard, paths.log_file("fit"))
    fit.end_session(test_acc)


def swa_start_epoch(params: Params) -> int:
    return max(0, round(params.train.swa_epoch_start * params.train.max_epochs) - 1)


def test_accuracy_of_checkpoint(params: Params, data: PreparedData, tensorboard) -> float:
    """Test accuracy of models/best.ckpt, for the HPARAMS table; the test stage re-checks it in a fresh process."""
    model = Classifier.from_checkpoint(paths.BEST_CKPT)
    (result,) = make_trainer(params, logger=tensorboard).test(model, datamodule=data, verbose=False)
    log.info("test accuracy of the checkpoint: %.4f", result["test/acc"])
    return result["test/acc"]


def curves_figure(table: pd.DataFrame, best: dict[str, float], swa_start: int):
    fig = plots.figure(10, 4)
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = table["epoch"] + 1  # counted from 1, as the logs count them
    for split in ("train", "val"):
        loss_ax.plot(epochs, table[f"{split}/loss"], label=split)
        acc_ax.plot(epochs, table[f"{split}/acc"], label=split)
    loss_ax.scatter([best["epoch"] + 1], [best[MONITOR]], color="tab:red", zorder=3, label="lowest val/loss")
    for ax in (loss_ax, acc_ax):
        # The average is first updated after epoch swa_start + 1 and validated from the next one.
        ax.axvline(swa_start + 1.5, color="grey", linestyle=":", label="averaging starts")
        ax.set_xlabel("epoch")
        ax.legend()
    loss_ax.set(ylabel="cross-entropy", title="Loss", yscale="log")
    acc_ax.set(ylabel="accuracy", title="Accuracy")
    return fig
