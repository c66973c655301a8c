"""What the search leaves for fit and the report: trials.csv, best.json, Optuna's plots."""

import logging
import shutil
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from optuna.visualization import matplotlib as optuna_plots

from litpipe import paths, plots
from litpipe.io import atomic_path, write_json
from litpipe.observe.tensorboard import add_code, add_text, open_run

log = logging.getLogger(__name__)

PLOTS = {
    "history": optuna_plots.plot_optimization_history,
    "importances": optuna_plots.plot_param_importances,
    "parallel_coordinates": optuna_plots.plot_parallel_coordinate,
    "slice": optuna_plots.plot_slice,
}


def write_disabled(journal: Path) -> None:
    """Every declared output exists, saying that no search ran (fit then uses params.yaml as it is)."""
    message = "search.enabled is false: no search was run; fit used the values in params.yaml"
    with atomic_path(paths.SEARCH_TRIALS) as tmp:
        tmp.write_text("number,value,state\n")
    write_json(paths.SEARCH_BEST, {"enabled": False, "params": {}})
    for name in PLOTS:
        write_placeholder(name, message)
    journal.touch()  # an empty journal is an empty study; an earlier one is kept for when search returns
    shutil.rmtree(paths.tb_dir("search"), ignore_errors=True)  # TensorBoard shows this run: no trials
    add_text(open_run("search/summary"), "search/summary", message)


def write(study: optuna.Study) -> dict[str, Any]:
    table = study.trials_dataframe()
    with atomic_path(paths.SEARCH_TRIALS) as tmp:
        table.to_csv(tmp, index=False)
    trial = study.best_trial
    best = {
        "enabled": True,
        "study": study.study_name,
        "params": trial.user_attrs["params"],
        "optuna_params": trial.params,
        "trial": trial.number,
        "monitor": "val/loss",
        "value": trial.value,
        "val_acc": trial.user_attrs["val_acc"],
        "best_epoch": trial.user_attrs["best_epoch"],
        "states": {state.name: len(study.get_trials(deepcopy=False, states=(state,))) for state in TrialState},
    }
    write_json(paths.SEARCH_BEST, best)
    write_plots(study)
    summary = table.drop(columns=[c for c in table.columns if c.startswith(("datetime", "system_attrs"))])
    add_code(open_run("search/summary"), "search/summary", f"best: {best}\n\n{summary.to_string(index=False)}")
    return best


def write_plots(study: optuna.Study) -> None:
    for name, draw in PLOTS.items():
        try:
            axes = draw(study)
        except (ValueError, RuntimeError) as error:
            # Importances need two completed trials and a varied param; say so rather than fail.
            log.info("search plot %s not drawn: %s", name, error)
            write_placeholder(name, f"not enough trials for this plot: {error}")
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
        figure.set_size_inches(8, 5)
        plots.save(figure, paths.SEARCH_PLOTS[name])


def write_placeholder(name: str, message: str) -> None:
    figure = plots.figure(6, 1)
    figure.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    plots.save(figure, paths.SEARCH_PLOTS[name])
