"""One search trial: train the model with the trial's params, report to Optuna and TensorBoard."""

import logging
from typing import Any

import optuna
from lightning.pytorch.callbacks import Callback, EarlyStopping
from optuna_integration import PyTorchLightningPruningCallback

from litpipe.config import Params
from litpipe.data.prepared import PreparedData, load_meta, load_split
from litpipe.models.classifier import MONITOR
from litpipe.observe import wandb
from litpipe.observe.monitors import monitors
from litpipe.observe.tensorboard import add_params, end_session, open_run, start_session
from litpipe.search import space as search_space
from litpipe.search.study import lr_suggestion, worker_identity
from litpipe.training import History, build_model, make_trainer, seed_everything

log = logging.getLogger(__name__)


def run_name(number: int) -> str:
    return f"search/trial_{number:04d}"


class TrialRunner:
    """Trains one trial after another in this process, sharing the loaded data between them."""

    def __init__(self, params: Params) -> None:
        self.params = params
        self.dimensions = params.search.dimensions()
        self.lr_suggestion = lr_suggestion(params)
        self.meta = load_meta()
        self.data = PreparedData.from_params(params)
        self.probe = load_split("val").head(params.observe.probe_size).x

    def __call__(self, trial: optuna.Trial) -> float:
        """The best validation loss of the trial; raises optuna.TrialPruned when the pruner stops it."""
        chosen = search_space.suggest(trial, self.dimensions, self.lr_suggestion)
        trial.set_user_attr("params", chosen)  # resolved values: the learning rate, not its multiple
        trial.set_user_attr("worker", worker_identity())
        params = self.params.override(chosen)
        run = run_name(trial.number)
        tensorboard, extra = open_run(run), wandb.wandb_loggers(params, run)
        start_session(tensorboard, params, params.search.max_epochs)
        add_params(tensorboard, params)
        seed_everything(params.seed)
        history = History(label=f"trial {trial.number} ")
        callbacks: list[Callback] = [
            history,
            EarlyStopping(MONITOR, patience=params.train.early_stopping_patience),
            *monitors(params, self.probe),
        ]
        if params.search.pruner != "none":
            callbacks.append(PyTorchLightningPruningCallback(trial, monitor=MONITOR))
        trainer = make_trainer(
            params, max_epochs=params.search.max_epochs, callbacks=callbacks, logger=[tensorboard, *extra]
        )
        try:
            trainer.fit(build_model(params, self.meta), datamodule=self.data.rebatched(params))
        finally:
            # Pruned or completed, the session shows what the trial reached.
            if history.rows:
                best = history.best(MONITOR)
                metrics = {"hp/best_val_loss": best[MONITOR], "hp/best_val_acc": best["val/acc"]}
                end_session(tensorboard, metrics, trainer.global_step)
            wandb.finish(extra)
        best = history.best(MONITOR)
        trial.set_user_attr("best_epoch", int(best["epoch"]))
        trial.set_user_attr("val_acc", best["val/acc"])
        log.info(
            "trial %d %s: %s=%.4f val/acc=%.4f", trial.number, _short(chosen), MONITOR, best[MONITOR], best["val/acc"]
        )
        return best[MONITOR]


def _short(values: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()}
