"""lr_find: Lightning's learning-rate range test on the configured model."""

import logging

from lightning.pytorch.tuner import Tuner

from litpipe import paths, plots
from litpipe.config import Params
from litpipe.data.prepared import PreparedData, load_meta
from litpipe.errors import StageError
from litpipe.io import write_json
from litpipe.observe.tensorboard import add_figure, add_text, open_run
from litpipe.training import build_model, make_trainer, seed_everything
from litpipe.models.zoo import check_params as check  # cli.py runs it before any work

log = logging.getLogger(__name__)


def run(params: Params) -> None:
    seed_everything(params.seed)
    model = build_model(params, load_meta(), augment=False)  # the loss curve of the model and optimiser alone
    # One optimizer step per batch: the finder raises the learning rate and records the loss per batch.
    data = PreparedData.from_params(params, steps_per_call=1)
    trainer = make_trainer(params)
    finder = Tuner(trainer).lr_find(
        model,
        datamodule=data,
        min_lr=params.lr_find.min_lr,
        max_lr=params.lr_find.max_lr,
        num_training=params.lr_find.num_training,
        update_attr=False,
    )
    suggestion = finder.suggestion() if finder else None
    if suggestion is None:
        raise StageError("the LR finder could not suggest a learning rate (the loss never fell); widen lr_find.*")
    log.info("suggested learning rate %.3g (optim.lr is %.3g)", suggestion, params.optim.lr)

    fig = finder.plot(suggest=True)
    fig.axes[0].set_title(f"LR finder: suggestion {suggestion:.3g}")
    tensorboard = open_run("lr_find")
    add_text(
        tensorboard, "lr_find", f"Suggested learning rate **{suggestion:.3g}** (optim.lr is {params.optim.lr:.3g})."
    )
    add_figure(tensorboard, "lr_find/curve", fig)
    plots.save(fig, paths.LR_FIND_PLOT)
    write_json(
        paths.LR_FIND_RESULT,
        {
            "suggestion": suggestion,
            "configured_lr": params.optim.lr,
            "lr": [float(v) for v in finder.results["lr"]],
            "loss": [float(v) for v in finder.results["loss"]],
        },
    )
