"""search: Optuna over search.space; each trial trains the model for search.max_epochs.

The grid is enqueued once as waiting trials, so every point runs exactly once, and a study
stored in the journal file resumes where it stopped. Each trial is a TensorBoard run,
tb/search/trial_NNNN, and a session in the HPARAMS tab.
"""

import logging
from typing import Any

import optuna
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from litpipe import paths
from litpipe.config import Params
from litpipe.data.prepared import PreparedData, load_meta, load_split
from litpipe.io import atomic_path, write_json
from litpipe.models.classifier import Classifier
from litpipe.observe import wandb
from litpipe.observe.monitors import monitors
from litpipe.observe.tensorboard import add_code, add_params, end_session, open_run, start_session
from litpipe.training import History, make_trainer, seed_everything

log = logging.getLogger(__name__)

STUDY_NAME = "litpipe"
JOURNAL = paths.SEARCH / "study.journal"
MONITOR = "val/loss"


def run(params: Params) -> None:
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    if not params.search.enabled:
        log.info("search.enabled is false: fit will use the values in params.yaml")
        write_outputs(None)
        return
    study = open_study()
    enqueue_grid(study, params.search.grid())
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    log.info("search: %d grid points, %d to run", len(params.search.grid()), waiting)
    study.optimize(Objective(params), n_trials=waiting)
    log.info("best trial %d: %s=%.4f with %s", study.best_trial.number, MONITOR, study.best_value, study.best_params)
    write_outputs(study)


def open_study() -> optuna.Study:
    JOURNAL.parent.mkdir(parents=True, exist_ok=True)
    backend = JournalFileBackend(str(JOURNAL), lock_obj=JournalFileOpenLock(str(JOURNAL)))
    return optuna.create_study(
        study_name=STUDY_NAME, storage=JournalStorage(backend), direction="minimize", load_if_exists=True
    )


def enqueue_grid(study: optuna.Study, grid: list[dict[str, Any]]) -> None:
    """Add each grid point the study has not seen yet as a waiting trial."""
    seen = [trial.params or trial.system_attrs.get("fixed_params", {}) for trial in study.get_trials(deepcopy=False)]
    for point in grid:
        if point not in seen:
            study.enqueue_trial(point)


class Objective:
    def __init__(self, params: Params) -> None:
        self.params = params
        self.meta = load_meta()
        self.data = PreparedData(params.train.batch_size, params.seed)  # loaded once, shared by trials
        self.probe = load_split("val").head(params.observe.probe_size).x

    def __call__(self, trial: optuna.Trial) -> float:
        space = self.params.search.space
        chosen = {key: trial.suggest_categorical(key, values) for key, values in space.items()}
        params = self.params.override(chosen)
        run = f"search/trial_{trial.number:04d}"
        tensorboard, extra = open_run(run), wandb.wandb_loggers(params, run)
        start_session(tensorboard, params, params.search.max_epochs)
        add_params(tensorboard, params)
        seed_everything(params.seed)
        history = History(label=f"trial {trial.number} ")
        callbacks = [
            history,
            EarlyStopping(MONITOR, patience=params.train.early_stopping_patience),
            LearningRateMonitor("epoch"),
            *monitors(params, self.probe),
        ]
        trainer = make_trainer(
            params, max_epochs=params.search.max_epochs, callbacks=callbacks, logger=[tensorboard, *extra]
        )
        trainer.fit(Classifier.from_params(params, self.meta), datamodule=self.data)
        best = history.best(MONITOR)
        end_session(
            tensorboard, {"hp/best_val_loss": best[MONITOR], "hp/best_val_acc": best["val/acc"]}, trainer.global_step
        )
        wandb.finish(extra)
        trial.set_user_attr("best_epoch", int(best["epoch"]))
        trial.set_user_attr("val_acc", best["val/acc"])
        log.info("trial %d %s: %s=%.4f val/acc=%.4f", trial.number, chosen, MONITOR, best[MONITOR], best["val/acc"])
        return best[MONITOR]


def write_outputs(study: optuna.Study | None) -> None:
    if study is None:
        best: dict[str, Any] = {"enabled": False, "params": {}}
        trials = "number,value,state\n"
    else:
        trial = study.best_trial
        best = {
            "enabled": True,
            "params": trial.params,
            "trial": trial.number,
            "monitor": MONITOR,
            "value": trial.value,
            "val_acc": trial.user_attrs["val_acc"],
            "best_epoch": trial.user_attrs["best_epoch"],
        }
        table = study.trials_dataframe()
        trials = table.to_csv(index=False)
        summary = table.drop(columns=[c for c in table.columns if c.startswith(("datetime", "system_attrs"))])
        add_code(open_run("search/summary"), "search/summary", f"best: {best}\n\n{summary.to_string(index=False)}")
    with atomic_path(paths.SEARCH / "trials.csv") as tmp:
        tmp.write_text(trials)
    write_json(paths.SEARCH / "best.json", best)
