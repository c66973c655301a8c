"""One search trial: train the model with the trial's params, report to Optuna and TensorBoard."""

import logging
from typing import Any

import optuna
from optuna_integration import PyTorchLightningPruningCallback

from litpipe import training
from litpipe.config import Params
from litpipe.data.prepared import PreparedData, load_meta, load_split
from litpipe.models.lit_model import MONITOR
from litpipe.observe.tensorboard import add_params
from litpipe.search import space as search_space
from litpipe.search.study import lr_suggestion, worker_identity
from litpipe.training import build_model, seed_everything

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
        chosen = search_space.suggest(trial, self.dimensions, self.lr_suggestion, self.params.model.arch)
        trial.set_user_attr("params", chosen)  # resolved values: the learning rate, not its multiple
        trial.set_user_attr("worker", worker_identity())
        params = self.params.override(chosen)
        seed_everything(params.seed)
        pruning = [PyTorchLightningPruningCallback(trial, monitor=MONITOR)] if params.search.pruner != "none" else []
        run = training.assemble(
            params,
            run_name(trial.number),
            self.probe,
            params.search.max_epochs,
            pruning,
            label=f"trial {trial.number} ",
        )
        add_params(run.tensorboard, params)
        try:
            run.trainer.fit(build_model(params, self.meta), datamodule=self.data.rebatched(params))
        finally:
            best = run.end_session()
        trial.set_user_attr("best_epoch", int(best["epoch"]))
        score = f"val/{run.score}"
        trial.set_user_attr(f"val_{run.score}", best[score])  # trials.csv's user_attrs_val_acc (or _rmse)
        log.info(
            "trial %d %s: %s=%.4f %s=%.4f", trial.number, _short(chosen), MONITOR, best[MONITOR], score, best[score]
        )
        return best[MONITOR]


def _short(values: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()}
