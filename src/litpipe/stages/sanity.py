"""sanity: prove the model can learn before spending compute on it.

1. Overfit one fixed training batch: the loss on it must fall below sanity.overfit_max_loss,
   otherwise the pipeline stops here with a clear message.
2. fast_dev_run: one batch through the train, validation and test loops.
"""

import logging

import pandas as pd

from litpipe import paths, plots
from litpipe.config import Params
from litpipe.data.prepared import Batches, PreparedData, load_meta, load_split
from litpipe.errors import StageError
from litpipe.io import atomic_path, write_json
from litpipe.models.classifier import Classifier
from litpipe.training import History, make_trainer, seed_everything

log = logging.getLogger(__name__)


def run(params: Params) -> None:
    meta = load_meta()
    history = overfit_one_batch(params, meta)
    final_loss = history["val/loss"].iloc[-1]
    if final_loss > params.sanity.overfit_max_loss:
        raise StageError(
            f"the model could not overfit one batch of {params.train.batch_size}: loss {final_loss:.4f} after "
            f"{params.sanity.overfit_epochs} steps, above sanity.overfit_max_loss={params.sanity.overfit_max_loss}; "
            "check optim.lr, the model size and the labels"
        )
    log.info("overfit one batch: loss %.4f after %d steps", final_loss, len(history))
    dev_run = fast_dev_run(params, meta)
    log.info("fast_dev_run through train/val/test: ok")

    with atomic_path(paths.SANITY / "overfit.csv") as tmp:
        history.to_csv(tmp, index=False)
    plot_overfit(history, params.sanity.overfit_max_loss)
    write_json(
        paths.SANITY / "summary.json",
        {
            "overfit": {
                "batch_size": params.train.batch_size,
                "steps": len(history),
                "final_loss": final_loss,
                "max_loss": params.sanity.overfit_max_loss,
                "passed": True,
            },
            "fast_dev_run": dev_run,
        },
    )


def overfit_one_batch(params: Params, meta: dict) -> pd.DataFrame:
    """Train on one fixed batch; validate on that same batch in eval mode (no dropout)."""
    seed_everything(params.seed)
    batch = Batches(load_split("train").head(params.train.batch_size), params.train.batch_size, shuffle=False)
    model = Classifier.from_params(params, meta)
    history = History()
    trainer = make_trainer(params, max_epochs=params.sanity.overfit_epochs, callbacks=[history])
    trainer.fit(model, train_dataloaders=batch, val_dataloaders=batch)
    return pd.DataFrame(history.rows)


def fast_dev_run(params: Params, meta: dict) -> dict[str, float]:
    seed_everything(params.seed)
    model = Classifier.from_params(params, meta)
    data = PreparedData(params.train.batch_size, params.seed)
    trainer = make_trainer(params, fast_dev_run=True)
    trainer.fit(model, datamodule=data)
    fitted = {k: float(v) for k, v in trainer.callback_metrics.items()}
    (tested,) = trainer.test(model, datamodule=data, verbose=False)
    return {**fitted, **tested}


def plot_overfit(history: pd.DataFrame, max_loss: float) -> None:
    fig = plots.figure()
    ax = fig.add_subplot()
    ax.semilogy(history["epoch"] + 1, history["val/loss"], label="loss on the batch (eval mode)")
    ax.axhline(max_loss, color="tab:red", linestyle="--", label=f"required: < {max_loss}")
    ax.set(xlabel="step", ylabel="cross-entropy", title="Overfitting one batch")
    ax.legend()
    plots.save(fig, paths.SANITY / "overfit.png")
