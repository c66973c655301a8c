"""One search trial: train the model with the trial's params, report to Optuna, TensorBoard and DVCLive."""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from lightning.pytorch.callbacks import Callback
from optuna_integration import PyTorchLightningPruningCallback

from litpipe import paths, training
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
        pruning = [PyTorchLightningPruningCallback(trial, monitor=MONITOR)] if params.search.pruner != "none" else []
        run, live = run_name(trial.number), paths.trial_live(trial.number)
        best, score = self.train(params, run, live, pruning, label=f"trial {trial.number} ")
        trial.set_user_attr("best_epoch", int(best["epoch"]))
        trial.set_user_attr(f"val_{score}", best[f"val/{score}"])  # trials.csv's user_attrs_val_acc (or _rmse)
        log.info(
            "trial %d %s: %s=%.4f val/%s=%.4f",
            trial.number,
            _short(chosen),
            MONITOR,
            best[MONITOR],
            score,
            best[f"val/{score}"],
        )
        return best[MONITOR]

    def train(
        self, params: Params, run: str, live: Path, callbacks: Sequence[Callback] = (), label: str = ""
    ) -> tuple[dict[str, float], str]:
        """Train as a trial does (search.max_epochs, early stopping; TensorBoard run tb/<run>, an HPARAMS session,
        and DVCLive's curves in `live`): the best epoch's row of the history, and the score's name (acc, rmse)."""
        seed_everything(params.seed)
        session = training.assemble(params, run, live, self.probe, params.search.max_epochs, callbacks, label=label)
        add_params(session.tensorboard, params)
        try:
            session.trainer.fit(build_model(params, self.meta), datamodule=self.data.rebatched(params))
        finally:
            best = session.end_session()
        return best, session.score


def _short(values: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()}
