"""sanity: prove the model can learn, and see where the time goes, before spending compute on it.

1. Overfit one fixed training batch: the loss on it must fall below sanity.overfit_max_loss,
   otherwise the pipeline stops here with a clear message.
2. fast_dev_run: one batch through the train, validation and test loops.
3. PyTorchProfiler over sanity.profile_batches training and validation batches (of one optimizer
   step each), with a schedule that fits that shortened epoch and an explicit output directory: an
   op table and traces.
"""

import logging
import re
import shutil

import pandas as pd
import torch
from lightning.pytorch.profilers import PyTorchProfiler
from torch.profiler import ProfilerActivity

from litpipe import paths, plots
from litpipe.config import Params
from litpipe.data.prepared import Batches, PreparedData, load_meta, load_split
from litpipe.errors import StageError
from litpipe.io import atomic_path, write_json
from litpipe.models import tasks
from litpipe.observe.tensorboard import add_code, add_figure, open_run
from litpipe.training import History, build_model, make_trainer, seed_everything
from litpipe.models.zoo import check_params as check  # cli.py runs it before any work

log = logging.getLogger(__name__)


def run(params: Params) -> None:
    meta = load_meta()
    tensorboard = open_run("sanity")
    history = overfit_one_batch(params, meta, tensorboard)
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
    operations = profile(params, meta)
    log.info("profiler, top operations over %d batches:\n%s", params.sanity.profile_batches, operations)

    with atomic_path(paths.SANITY / "overfit.csv") as tmp:
        history.to_csv(tmp, index=False)
    figure = overfit_figure(history, params.sanity.overfit_max_loss, tasks.of(meta).score)
    add_figure(tensorboard, "sanity/overfit", figure)
    plots.save(figure, paths.OVERFIT_PLOT)
    summary = {
        "overfit": {
            "batch_size": params.train.batch_size,
            "steps": len(history),
            "final_loss": final_loss,
            "max_loss": params.sanity.overfit_max_loss,
            "passed": True,
        },
        "fast_dev_run": dev_run,
        "profile": {"batches": params.sanity.profile_batches, "directory": str(paths.PROFILE_DIR)},
    }
    add_code(tensorboard, "sanity/summary", pd.json_normalize(summary).T.to_string(header=False))
    add_code(tensorboard, "profile/top_operations", operations)
    write_json(paths.SANITY_SUMMARY, summary)


def overfit_one_batch(params: Params, meta: dict, tensorboard) -> pd.DataFrame:
    """Train on one fixed batch; validate on that same batch in eval mode (no dropout)."""
    seed_everything(params.seed)
    batch = Batches(load_split("train").head(params.train.batch_size), params.train.batch_size, shuffle=False)
    model = build_model(params, meta, augment=False)  # a batch that changes every step cannot be memorised
    history = History(label="overfit ")
    trainer = make_trainer(params, max_epochs=params.sanity.overfit_epochs, callbacks=[history], logger=tensorboard)
    trainer.fit(model, train_dataloaders=batch, val_dataloaders=batch)
    return pd.DataFrame(history.rows)


def fast_dev_run(params: Params, meta: dict) -> dict[str, float]:
    seed_everything(params.seed)
    model = build_model(params, meta)
    data = PreparedData.from_params(params)
    trainer = make_trainer(params, fast_dev_run=True)
    trainer.fit(model, datamodule=data)
    fitted = {k: float(v) for k, v in trainer.callback_metrics.items()}
    (tested,) = trainer.test(model, datamodule=data, verbose=False)
    return {**fitted, **tested}


def profile(params: Params, meta: dict) -> str:
    """Profile a shortened epoch; returns the op table. Writes fit-profile.txt and one trace per loop."""
    batches = params.sanity.profile_batches
    shutil.rmtree(paths.PROFILE_DIR, ignore_errors=True)
    seed_everything(params.seed)
    profiler = PyTorchProfiler(
        dirpath=paths.PROFILE_DIR,
        filename="profile",
        # Lightning's default schedule needs 5 steps and is silently replaced below that; this one
        # warms up on the first batch and records the rest, so any profile_batches >= 2 fits.
        schedule=torch.profiler.schedule(wait=0, warmup=1, active=batches - 1, repeat=1),
        row_limit=20,
        sort_by_key="cpu_time_total",
        acc_events=True,  # the op table covers every recorded cycle, training and validation
        activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else []),
    )
    trainer = make_trainer(
        params, max_epochs=1, limit_train_batches=batches, limit_val_batches=batches, profiler=profiler
    )
    # One optimizer step per batch: the profile shows a step's operations, and a small split still has
    # profile_batches training batches (the schedule exports no training trace for fewer).
    one_step = PreparedData.from_params(params, steps_per_call=1)
    trainer.fit(build_model(params, meta), datamodule=one_step)
    # torch names traces <worker>.<milliseconds>.pt.trace.json; keep the loop, drop the timestamp.
    for trace in paths.PROFILE_DIR.glob("*.pt.trace.json"):
        loop = re.search(r"(\w+_step)\.\d+\.pt\.trace\.json$", trace.name)
        if loop:
            trace.rename(paths.PROFILE_DIR / f"{loop.group(1)}.pt.trace.json")
    return paths.PROFILE_TABLE.read_text()


def overfit_figure(history: pd.DataFrame, max_loss: float, score: str = "acc"):
    fig = plots.figure()
    ax = fig.add_subplot()
    ax.semilogy(history["epoch"] + 1, history["val/loss"], label="loss on the batch (eval mode)")
    ax.axhline(max_loss, color="tab:red", linestyle="--", label=f"required: < {max_loss}")
    ax.set(xlabel="step", ylabel=plots.SCORES[score][2], title="Overfitting one batch")  # the task's loss
    ax.legend()
    return fig
