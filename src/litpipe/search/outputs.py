"""What the search leaves for fit and the report: trials.csv, best.json, Optuna's plots."""

import itertools
import logging
import shutil
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import optuna
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.text import Text
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
# Inches. The smallest slice subplot and parallel-coordinates column (a param's ticks need room too), the
# space beside a name, a colour bar with its labels, and an importance bar.
SLICE_WIDTH = 2.4
COLUMN_WIDTH = 1.2
GAP = 0.3
COLORBAR = 1.2
BAR_HEIGHT = 0.4


def whole_numbers_kept(study: optuna.Study, table: pd.DataFrame) -> pd.DataFrame:
    """An integer param that some trials lack (a network's argument, in the trials of other networks) is a
    column with gaps, which pandas makes float: 8 would read 8.0. Its integers are kept."""
    for name in {name for trial in study.trials for name in trial.params}:
        values = [trial.params[name] for trial in study.trials if name in trial.params]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            table[f"params_{name}"] = table[f"params_{name}"].astype("Int64")
    return table


def write_disabled(journal: Path, reason: str) -> None:
    """Every declared output exists, saying that no search ran and why (fit then uses params.yaml as it is)."""
    message = f"{reason}: no search was run; fit used the values in params.yaml"
    with atomic_path(paths.SEARCH_TRIALS) as tmp:
        tmp.write_text("number,value,state\n")
    write_json(paths.SEARCH_BEST, {"enabled": False, "reason": reason, "params": {}})
    for name in PLOTS:
        write_placeholder(name, message)
    journal.touch()  # an empty journal is an empty study; an earlier one is kept for when search returns
    shutil.rmtree(paths.tb_dir("search"), ignore_errors=True)  # TensorBoard shows this run: no trials
    add_text(open_run("search/summary"), "search/summary", message)
    shutil.rmtree(paths.SEARCH_LIVE, ignore_errors=True)  # nor DVC: an empty directory, the declared output
    paths.SEARCH_LIVE.mkdir(parents=True)


def write(study: optuna.Study, reevaluated: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """trials.csv, best.json and the plots. best.json's params are the best trial's, or with `reevaluated`
    (reevaluate.ranked: the best configurations over seeds, the best mean first) the best mean's."""
    keep_only_live_curves_of(study, reevaluated)
    table = whole_numbers_kept(study, study.trials_dataframe())
    with atomic_path(paths.SEARCH_TRIALS) as tmp:
        table.to_csv(tmp, index=False)
    trial = study.best_trial
    if reevaluated:
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == reevaluated[0]["trial"])
    best = {
        "enabled": True,
        "study": study.study_name,
        "params": trial.user_attrs["params"],
        "optuna_params": trial.params,
        "trial": trial.number,
        "monitor": "val/loss",
        "value": trial.value,
        **{key: value for key, value in trial.user_attrs.items() if key.startswith("val_")},
        "best_epoch": trial.user_attrs["best_epoch"],
        "states": {state.name: len(study.get_trials(deepcopy=False, states=(state,))) for state in TrialState},
        # What picked it: the one trial's validation loss, or the mean over seeds of the best few (and which
        # trial one seed alone put first).
        "chosen_by": "mean over seeds" if reevaluated else "best trial",
        "best_trial": study.best_trial.number,
        "reevaluated": list(reevaluated),
    }
    write_json(paths.SEARCH_BEST, best)
    write_plots(study)
    summary = table.drop(columns=[c for c in table.columns if c.startswith(("datetime", "system_attrs"))])
    add_code(open_run("search/summary"), "search/summary", f"best: {best}\n\n{summary.to_string(index=False)}")
    return best


def keep_only_live_curves_of(study: optuna.Study, reevaluated: list[dict[str, Any]] = ()) -> None:
    """The DVCLive curves (paths.SEARCH_LIVE, kept between runs) of this study's trials and re-evaluations only: a
    new study numbers its trials from 0 again, and an earlier study's later trials would stay."""
    kept = {paths.trial_live(trial.number) for trial in study.get_trials(deepcopy=False)}
    kept |= {paths.reevaluation_live(r["candidate"], seed) for r in reevaluated for seed in r["seeds"]}
    paths.SEARCH_LIVE.mkdir(parents=True, exist_ok=True)
    for entry in paths.SEARCH_LIVE.iterdir():
        if entry not in kept:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def write_plots(study: optuna.Study) -> None:
    # Optuna's figures are made under a constrained layout, which fits every label inside them at save time.
    # It must be on before Optuna adds its colour bars: made without a layout, one is a gridspec cell that a
    # constrained layout set later fails on, and the slice's shared one is placed by hand, so a tight layout
    # draws the subplots over it. Optuna also switches pyplot to its ggplot style: the context keeps that to
    # these plots and their saving.
    with matplotlib.rc_context({"figure.constrained_layout.use": True}):
        for name, draw in PLOTS.items():
            try:
                axes = draw(study)
            except (ValueError, RuntimeError) as error:
                # Importances need two completed trials and a varied param; say so rather than fail.
                log.info("search plot %s not drawn: %s", name, error)
                write_placeholder(name, f"not enough trials for this plot: {error}")
                continue
            plots.save(fit(name, axes), paths.SEARCH_PLOTS[name])


def fit(name: str, axes: Axes | np.ndarray) -> Figure:
    """The figure of Optuna's `axes`, sized to its params and their names (Optuna keeps its default size):
    long names ran off its edges, and the slice's subplots, one per param, narrowed as params were added."""
    subplots = list(axes.flat) if isinstance(axes, np.ndarray) else [axes]
    figure = subplots[0].get_figure()
    if name == "slice":  # a row of subplots, each as wide as its param's name below it
        column = max(SLICE_WIDTH, widest([ax.xaxis.label for ax in subplots]) + GAP)
        figure.set_size_inches(max(len(subplots) * column + COLORBAR, 6), 4.5)
    elif name == "parallel_coordinates":  # a column per param, its name below (Optuna cuts it to 20 characters)
        names = axes.get_xticklabels()
        axes.tick_params(axis="x", labelrotation=0)  # level: Optuna's slant hung the first name off the left
        column = max(COLUMN_WIDTH, widest(names) + GAP)
        figure.set_size_inches(max(len(names) * column + COLORBAR, 6), 5)
    elif name == "importances":  # a bar per param, its name on the left
        figure.set_size_inches(8, max(1.5 + BAR_HEIGHT * len(axes.get_yticklabels()), 3))
    else:
        figure.set_size_inches(8, 5)
    upright_crowded_ticks(figure)
    return figure


def widest(labels: list[Text]) -> float:
    """Inches: the widest of `labels`, at its own font size."""
    return max((plots.text_width([label.get_text()], label.get_fontsize()) for label in labels), default=0.0)


def upright_crowded_ticks(figure: Figure) -> None:
    """Turn upright the x tick labels of each axes where they overlap at the figure's size: a log axis over
    less than a decade names minor ticks too, and a categorical param may have many values."""
    figure.draw_without_rendering()  # runs the layout and places the ticks
    renderer = figure.canvas.get_renderer()
    for ax in figure.axes:
        labels = [label for label in ax.xaxis.get_ticklabels(which="both") if label.get_visible() and label.get_text()]
        boxes = [label.get_window_extent(renderer) for label in labels]
        if any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2)):
            ax.tick_params(axis="x", which="both", labelrotation=90)


def write_placeholder(name: str, message: str) -> None:
    figure = plots.figure(6, 1)
    figure.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    plots.save(figure, paths.SEARCH_PLOTS[name])
