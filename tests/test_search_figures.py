"""The search stage's figures (Optuna's matplotlib plots, saved by outputs.write_plots): for 1 to 6 params
with long dotted names, every text drawn lies inside the saved PNG and no two tick labels of an axis
overlap; with no or a single completed trial, and with the search disabled, each file is still written."""

import itertools
import math
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import optuna
import pytest
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from PIL import Image

from litpipe import paths
from litpipe.search import outputs

# The pipeline's kinds of param, in the order the 1, 3 and 6 param studies take them: the long dotted
# names first, one of them past the 20 characters the parallel coordinates cut labels to.
SPACE = {
    "train.augment_crop": lambda trial, name: trial.suggest_float(name, 0.5, 1.0),
    "optim.lr": lambda trial, name: trial.suggest_float(name, 1e-4, 0.1, log=True),
    "model.a_rather_long_dropout_name": lambda trial, name: trial.suggest_float(name, 0.0, 0.5),
    "model.kwargs.mlp.width": lambda trial, name: trial.suggest_categorical(name, [128, 256, 512]),
    "model.kwargs.mlp.depth": lambda trial, name: trial.suggest_int(name, 1, 3),
    "params_model.kwargs.mlp.dropout": lambda trial, name: trial.suggest_float(name, 0.2, 1.0, log=True),  # minor ticks named
}
FIGURES = {"history", "importances", "parallel_coordinates", "slice"}  # the README's list of the search's plots


@pytest.fixture(autouse=True)
def quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # its matplotlib plots
        yield


def study(params: int, trials: int = 16) -> optuna.Study:
    """A finished in-memory study over the first `params` of SPACE, minimising a made-up loss."""
    names = list(SPACE)[:params]

    def objective(trial: optuna.Trial) -> float:
        values = [float(SPACE[name](trial, name)) for name in names]
        return math.sin(sum(values)) + 2

    search = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=params))
    search.optimize(objective, n_trials=trials)
    return search


def tick_labels(axis: Axis) -> list[Text]:
    """The tick labels drawn, major and minor (a log axis labels some minor ticks): the axis keeps more
    tick objects than it draws, some outside the view."""
    low, high = sorted(axis.get_view_interval())
    labels = []
    for locations, ticks in (
        (axis.get_majorticklocs(), axis.get_major_ticks),
        (axis.get_minorticklocs(), axis.get_minor_ticks),
    ):
        for tick, at in zip(ticks(len(locations)), locations):
            if np.isclose(at, low) or np.isclose(at, high) or low <= at <= high:
                labels += [label for label in (tick.label1, tick.label2) if label.get_visible()]
    return [label for label in labels if label.get_text()]


def visible_axes(fig: Figure) -> list[Axis]:
    """The x and y axes drawn (the parallel coordinates hide their twins' x axes)."""
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    return [axis for ax in axes for axis in (ax.xaxis, ax.yaxis) if axis.get_visible()]


def drawn_texts(fig: Figure) -> list[Text]:
    """Every text drawn in `fig` with something in it: suptitle, titles, axis, tick and colour-bar labels,
    annotations (the importances' values), keys."""
    FigureCanvasAgg(fig).draw()  # plots.save closed it, which leaves a canvas that cannot draw
    texts = list(fig.texts)
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts += [child for child in ax.get_children() if isinstance(child, Text)]  # titles and ax.texts
        if ax.legend_ is not None:
            texts += [ax.legend_.get_title(), *ax.legend_.get_texts()]
    for axis in visible_axes(fig):
        texts += [axis.label, axis.offsetText, *tick_labels(axis)]
    return [text for text in texts if text.get_visible() and text.get_text()]


def extent(text: Text) -> Bbox:
    return text.get_window_extent(text.figure.canvas.get_renderer())


def assert_valid_png(fig: Figure, path: Path) -> None:
    """plots.save writes the whole figure at 100 dpi, no tight bounding box."""
    assert fig.dpi == 100
    with Image.open(path) as png:
        png.verify()
        assert png.format == "PNG"
        assert np.allclose(png.size, fig.get_size_inches() * 100, atol=1)  # Agg rounds the size down


def clipped(fig: Figure) -> list[tuple[str, tuple[int, ...]]]:
    """Each text not wholly inside the figure's own box (what the PNG shows), in pixels."""
    figure = fig.bbox.padded(1)  # a pixel of rounding
    boxes = [(text.get_text(), extent(text)) for text in drawn_texts(fig)]
    return [
        (text, tuple(round(v) for v in box.bounds))
        for text, box in boxes
        if not (figure.contains(*box.p0) and figure.contains(*box.p1))
    ]


def overlapping(texts: list[Text]) -> list[tuple[str, str]]:
    boxes = [(text.get_text(), extent(text)) for text in texts]
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]


def crowded(fig: Figure) -> list[tuple[str, str]]:
    """Tick labels of one axis on each other, and axis labels on each other (the slice's param names)."""
    pairs = [pair for axis in visible_axes(fig) for pair in overlapping(tick_labels(axis))]
    axis_labels = [axis.label for axis in visible_axes(fig) if axis.label.get_text()]
    return pairs + overlapping(axis_labels)


def assert_written(saved: dict[str, Figure]) -> None:
    assert set(saved) == FIGURES
    for name, fig in saved.items():
        assert_valid_png(fig, Path(f"results/search/{name}.png"))
    assert {name: clipped(fig) for name, fig in saved.items()} == {name: [] for name in saved}


def plotted(fig: Figure) -> list:
    """The axes of a figure but its colour bars: a placeholder (outputs.write_placeholder) is a note, none."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def assert_drawn(saved: dict[str, Figure], params: int, trials: int) -> None:
    """Each figure is Optuna's plot of the study, not a placeholder note: the trials' values over time, a bar
    per param, a line per trial across an axis per param and the objective's, a panel per param with a dot
    per trial."""
    history, importances = plotted(saved["history"]), plotted(saved["importances"])
    assert len(history) == 1 and len(history[0].collections[0].get_offsets()) == trials
    assert len(importances) == 1 and len(importances[0].patches) == params
    coordinates = plotted(saved["parallel_coordinates"])
    assert len(coordinates) == params + 1 and len(coordinates[0].collections[0].get_segments()) == trials
    panels = plotted(saved["slice"])
    assert len(panels) == params and all(len(ax.collections[0].get_offsets()) == trials for ax in panels)


@pytest.mark.parametrize("params", [1, 3, 6])
def test_every_search_figure_keeps_its_texts_inside_and_apart(saved, params):
    outputs.write_plots(study(params))
    assert_written(saved)
    assert_drawn(saved, params, trials=16)
    assert {name: crowded(fig) for name, fig in saved.items()} == {name: [] for name in saved}


@pytest.mark.parametrize("params", [1, 3, 6])
def test_the_figures_name_every_param(saved, params):
    outputs.write_plots(study(params))
    assert_drawn(saved, params, trials=16)
    names = set(list(SPACE)[:params])
    texts = {name: {text.get_text() for text in drawn_texts(fig)} for name, fig in saved.items()}
    assert names <= texts["slice"]  # one subplot per param, its name below
    assert names <= texts["importances"]
    shown = {name if len(name) < 20 else f"{name[:17]}..." for name in names}  # Optuna cuts long ones
    assert shown <= texts["parallel_coordinates"]


@pytest.mark.filterwarnings("ignore::UserWarning")  # Optuna's and matplotlib's: nothing to key, one value
@pytest.mark.parametrize("trials", [0, 1])
def test_too_few_trials_still_write_every_figure(saved, trials):
    outputs.write_plots(study(3, trials))
    assert_written(saved)


def test_a_disabled_search_writes_every_figure_as_a_note(saved):
    outputs.write_disabled(paths.STUDY_JOURNAL.resolve(), "search.enabled is false")
    assert_written(saved)
    for fig in saved.values():
        assert plotted(fig) == [] and [text.get_text() for text in fig.texts] == [
            "search.enabled is false: no search was run; fit used the values in params.yaml"
        ]


def test_a_plot_optuna_cannot_draw_is_a_note_saying_why_and_the_others_are_drawn(saved, monkeypatch):
    def cannot(study: optuna.Study):
        raise RuntimeError("no two completed trials")

    monkeypatch.setitem(outputs.PLOTS, "importances", cannot)
    outputs.write_plots(study(3))
    assert_written(saved)
    assert plotted(saved["importances"]) == []
    assert [text.get_text() for text in saved["importances"].texts] == [
        "not enough trials for this plot: no two completed trials"
    ]
    assert all(plotted(saved[name]) for name in FIGURES - {"importances"})


def test_drawing_leaves_the_global_style_alone(saved):
    with matplotlib.rc_context():  # a known style, whatever an earlier test left
        matplotlib.style.use("default")
        before = matplotlib.rcParams.copy()
        outputs.write_plots(study(3))
        assert matplotlib.rcParams == before  # Optuna switches pyplot to ggplot
