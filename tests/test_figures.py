"""The analysis figures and the report's example grid, on colour images with many long word class names:
each image drawn as stored, every title and label inside the saved figure and apart from its neighbours,
class names with mathtext characters written as they are."""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from PIL import Image

from litpipe import paths, plots
from litpipe.data.prepared import Split
from litpipe.stages import analyze

# Long names; names that mathtext would read (an unbalanced "\frac" it cannot even parse); an underscore
# first, which a legend would drop from labels it collects itself; and markup, which a PNG shows as it is.
NAMED = [
    "automobile", "golden_retriever", "a_very_long_class_name_indeed", "WWWWWWWWWWWWWWWWWWWW",
    "price_$5$_and_$10$", "$\\frac$_broken_math", "_background", "<b>bold</b>", "x_1^2", "truck", "ship", "cat",
    "frog_and_toad",
]  # fmt: skip


def class_names(count: int) -> list[str]:
    return (NAMED + [f"extra_class_number_{i}" for i in range(len(NAMED), count)])[:count]


def colour_data(count: int, per_class: int = 4) -> tuple[Split, torch.Tensor]:
    """A colour test split (3 x 16 x 16, full 0..255 range, classes in turn) and random logits for it."""
    generator = torch.Generator().manual_seed(0)
    y = torch.arange(count * per_class) % count
    x = torch.randint(0, 256, (len(y), 3, 16, 16), dtype=torch.uint8, generator=generator)
    return Split(x, y), torch.randn(len(y), count, generator=generator)


def draw_analysis(count: int, saved: dict[str, Figure]) -> tuple[list[str], Split, pd.DataFrame]:
    """The analysis figures of `count` classes, as analyze.run draws them."""
    names = class_names(count)
    test, logits = colour_data(count)
    residuals = analyze.residual_table(logits, test.y)
    confusion = analyze.confusion_table(residuals, count)
    analyze.plot_confusion(confusion, names)
    analyze.plot_per_class(analyze.per_class_table(residuals, confusion, names))
    analyze.plot_mistakes(residuals, test, {"class_names": names, "pixel_max": 255}, shown=16)
    hidden = {"layer1": torch.randn(len(test.y), 8), "layer2": torch.randn(len(test.y), 4)}
    analyze.plot_pca({name: analyze.project(values) for name, values in hidden.items()}, test.y.numpy(), names)
    return names, test, residuals


def tick_labels(axis: Axis) -> list[Text]:
    """The tick labels drawn: the axis keeps more tick objects than it draws, some outside the view."""
    low, high = sorted(axis.get_view_interval())
    locations = axis.get_majorticklocs()
    ticks = axis.get_major_ticks(len(locations))
    return [tick.label1 for tick, at in zip(ticks, locations) if low <= at <= high and tick.label1.get_visible()]


def drawn_texts(fig: Figure) -> list[Text]:
    """Every text drawn in `fig`, with something in it: titles, axis and tick labels, keys, annotations."""
    fig.canvas.draw()
    texts = list(fig.texts)
    for legend in fig.legends:
        texts += [legend.get_title(), *legend.get_texts()]
    for ax in fig.axes:
        texts += [ax.title, *ax.texts]
        if ax.axison:
            texts += [ax.xaxis.label, ax.yaxis.label, *tick_labels(ax.xaxis), *tick_labels(ax.yaxis)]
    return [text for text in texts if text.get_visible() and text.get_text()]


def inches(fig: Figure, text: Text) -> Bbox:
    return text.get_window_extent().transformed(fig.dpi_scale_trans.inverted())


def within(box: Bbox, fig: Figure) -> bool:
    width, height = fig.get_size_inches()
    tolerance = 0.01  # inches: a pixel
    return (
        box.x0 >= -tolerance and box.y0 >= -tolerance and box.x1 <= width + tolerance and box.y1 <= height + tolerance
    )


def assert_nothing_clipped(fig: Figure, path: Path) -> None:
    """The PNG is the whole figure at 100 dpi (plots.save: no tight bounding box, a constrained layout), so
    every text and every other artist must lie within the figure's own size."""
    width, height = fig.get_size_inches()
    with Image.open(path) as png:
        png.verify()
        assert png.format == "PNG"
        assert np.allclose(png.size, (width * 100, height * 100), atol=1)  # Agg rounds the size down
    clipped = [
        (text.get_text(), inches(fig, text).bounds) for text in drawn_texts(fig) if not within(inches(fig, text), fig)
    ]
    assert clipped == [], f"outside the {width:.1f} x {height:.1f} in figure"
    assert within(fig.get_tightbbox(), fig)  # every artist, in inches: what bbox_inches="tight" would keep


def assert_apart(fig: Figure, texts: list[Text]) -> None:
    boxes = [(text.get_text(), inches(fig, text)) for text in texts]
    overlapping = [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]
    assert overlapping == []


def assert_literal(texts: list[Text], expected: list[str]) -> None:
    """Drawn as written: mathtext off, so "$5$" shows its dollars and "x_1" its underscore."""
    assert [text.get_text() for text in texts] == expected
    assert not any(text.get_parse_math() for text in texts)


def test_show_image_draws_one_channel_in_grey_on_the_data_scale():
    pixels = torch.randint(0, 17, (1, 8, 6), dtype=torch.uint8)  # the digits' 0..16
    ax = Figure().add_subplot()
    plots.show_image(ax, pixels, pixel_max=16)
    drawn = ax.images[0]
    assert drawn.get_array().shape == (8, 6)
    np.testing.assert_array_equal(drawn.get_array(), pixels[0].numpy())
    assert drawn.get_cmap().name == "gray_r" and (drawn.norm.vmin, drawn.norm.vmax) == (0, 16)


def test_show_image_draws_three_channels_as_rgb():
    pixels = torch.randint(0, 256, (3, 8, 6), dtype=torch.uint8)
    ax = Figure().add_subplot()
    plots.show_image(ax, pixels, pixel_max=255)
    drawn = ax.images[0].get_array()
    assert drawn.shape == (8, 6, 3)  # height x width x channel: RGB, not a colour-mapped channel
    np.testing.assert_allclose(drawn, pixels.permute(1, 2, 0).numpy() / 255)
    assert drawn.min() >= 0 and drawn.max() <= 1


def test_show_image_refuses_other_channel_counts():
    with pytest.raises(ValueError, match="C = 1 or 3"):
        plots.show_image(Figure().add_subplot(), np.zeros((2, 4, 4), np.uint8), 255)


def test_shorten_cuts_what_is_too_wide_to_the_width():
    assert plots.shorten("cat", 1.0, 7) == "cat"
    for name in ("a_very_long_class_name_indeed", "WWWWWWWWWWWWWWWWWWWW"):
        short = plots.shorten(name, 1.0, 7)
        assert short.endswith("\N{HORIZONTAL ELLIPSIS}") and name.startswith(short[:-1])
        assert 0.9 < plots.text_width([short], 7) <= 1.0  # as much of the name as fits


@pytest.mark.parametrize("count", [13, 34])
def test_analysis_figures_are_valid_images_with_nothing_clipped(saved, count):
    draw_analysis(count, saved)
    assert set(saved) == {"confusion", "per_class", "mistakes", "activations_pca"}
    for name, fig in saved.items():
        assert_nothing_clipped(fig, Path("results/analysis") / f"{name}.png")


@pytest.mark.parametrize("count", [13, 34])
def test_the_confusion_matrix_names_every_class_literally_and_legibly(saved, count):
    names, _, _ = draw_analysis(count, saved)
    ax = saved["confusion"].axes[0]
    for labels in (tick_labels(ax.xaxis), tick_labels(ax.yaxis)):
        assert_literal(labels, names)
        assert_apart(saved["confusion"], labels)


@pytest.mark.parametrize("count", [13, 34])
def test_the_per_class_bars_name_every_class_once_literally_and_legibly(saved, count):
    names, _, _ = draw_analysis(count, saved)
    metrics_ax, loss_ax = saved["per_class"].axes
    assert tick_labels(metrics_ax.xaxis) == []  # the panels share the class axis, named below both
    assert_literal(tick_labels(loss_ax.xaxis), names)
    assert_apart(saved["per_class"], tick_labels(loss_ax.xaxis))


def test_the_mistakes_show_the_colour_images_under_short_separate_titles(saved):
    names, test, residuals = draw_analysis(13, saved)
    fig = saved["mistakes"]
    shown = [ax for ax in fig.axes if ax.images]
    mistakes = residuals[~residuals["correct"]].nlargest(16, "confidence")
    assert len(shown) == len(mistakes) == 16
    titles = [ax.title for ax in shown]
    assert_apart(fig, titles)
    assert not any(title.get_parse_math() for title in titles)
    for ax, title, (_, mistake) in zip(shown, titles, mistakes.iterrows()):
        actual, predicted, confidence = title.get_text().split("\n")
        assert names[mistake["actual"]].startswith(actual.removesuffix("\N{HORIZONTAL ELLIPSIS}"))
        assert f"-> {names[mistake['predicted']]}".startswith(predicted.removesuffix("\N{HORIZONTAL ELLIPSIS}"))
        assert confidence == f"{mistake['confidence']:.2f}"
        pixels = ax.images[0].get_array()
        assert pixels.shape == (16, 16, 3)  # the sample, in its colours
        np.testing.assert_allclose(pixels, test.x[int(mistake["index"])].permute(1, 2, 0).numpy() / 255)


def test_the_pca_key_names_a_few_classes_in_distinct_colours(saved):
    names, test, _ = draw_analysis(13, saved)
    fig = saved["activations_pca"]
    assert len(fig.legends) == 1 and len(fig.axes) == 2  # a key, no colour bar
    assert_literal(fig.legends[0].get_texts(), names)
    for ax in fig.axes:
        colours = ax.collections[0].get_facecolors()
        per_class = [np.unique(colours[test.y.numpy() == label], axis=0) for label in range(len(names))]
        assert all(len(colour) == 1 for colour in per_class)  # one colour per class ...
        assert len(np.unique(np.concatenate(per_class), axis=0)) == len(names)  # ... and no two alike


def test_the_pca_of_many_classes_has_a_colour_bar_and_no_repeated_colour(saved):
    names, test, _ = draw_analysis(34, saved)
    fig = saved["activations_pca"]
    assert fig.legends == [] and len(fig.axes) == 3  # the two projections and a colour bar
    colours = fig.axes[0].collections[0].get_facecolors()
    assert len(np.unique(colours, axis=0)) == len(names)


def test_the_class_colours_fit_the_class_count():
    for count in (3, 10, 20, 34):
        colours = plots.class_colors(count)
        assert colours.shape == (count, 4) and len(np.unique(colours, axis=0)) == count


def test_the_reports_examples_per_class_show_colour_images_beside_each_literal_name(tmp_path):
    names = class_names(13)
    split, _ = colour_data(13, per_class=7)
    keep = split.y != 2  # a class with no training example: its row stays blank
    keep[torch.nonzero(split.y == 5)[:3]] = False  # and one with fewer than a row of them
    x, y = split.x[keep].numpy(), split.y[keep].numpy()
    fig = plots.examples_per_class(x, y, names, pixel_max=255)
    plots.save(fig, tmp_path / "examples.png")
    assert_nothing_clipped(fig, tmp_path / "examples.png")
    rows = np.array(fig.axes).reshape(len(names), 6)
    assert_literal([row[0].yaxis.label for row in rows], names)
    assert_apart(fig, [row[0].yaxis.label for row in rows])
    assert [sum(bool(ax.images) for ax in row) for row in rows] == [min(6, int((y == c).sum())) for c in range(13)]
    first = rows[0][0].images[0].get_array()
    np.testing.assert_allclose(first, np.moveaxis(x[np.flatnonzero(y == 0)[0]], 0, -1) / 255)


@pytest.mark.parametrize("backend", ["", "module://matplotlib_inline.backend_inline"])
def test_importing_plots_keeps_a_notebooks_inline_backend_and_is_headless_elsewhere(backend):
    """The report notebook imports litpipe.plots after pyplot: switching its kernel to Agg would drop
    every figure it shows."""
    code = "import matplotlib.pyplot, litpipe.plots, matplotlib; print(matplotlib.get_backend())"
    env = {name: value for name, value in os.environ.items() if name != "MPLBACKEND"} | (
        {"MPLBACKEND": backend} if backend else {}
    )
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert shown.stdout.strip().lower() == (backend or "agg")


def test_the_regression_figures_name_columns_literally_with_nothing_clipped(saved):
    """Regression's diagnostics on a table whose column names mathtext would read and whose categories are long:
    every figure inside its own size, the names as written."""
    from litpipe.analysis import regression

    rng = np.random.default_rng(0)
    rows = 120
    values = pd.DataFrame(
        {
            "price_$5$_and_$10$": rng.normal(50, 10, rows),
            "a_very_long_column_name_of_a_measurement": rng.uniform(0, 1, rows),
            "district": rng.choice(["WWWWWWWWWWWWWWWWWWWW", "x_1^2", "$\\frac$_broken_math"], rows),
        }
    )
    actual = rng.normal(1000, 300, rows)
    residuals = regression.residual_table(actual + rng.normal(0, 100, rows), actual)
    importance = pd.DataFrame(
        {"column": list(values.columns), "rmse_increase": [3.0, 2.0, 1.0], "std": [0.5, 0.4, 0.3]}
    )
    regression.plot_residuals_vs_fitted(residuals)
    regression.plot_predicted_vs_actual(residuals, 0.5)
    regression.plot_residual_distribution(residuals)
    regression.plot_residuals_vs_features(residuals, values, importance)
    regression.plot_importance(importance)
    regression.plot_error_by_decile(regression.error_by_decile(residuals))
    hidden = {"hidden1": torch.randn(rows, 8), "hidden2": torch.randn(rows, 4)}
    analyze.plot_pca_by_target({k: analyze.project(v) for k, v in hidden.items()}, actual, "price_$5$")
    assert set(saved) == {*paths.REGRESSION_PLOTS, "activations_pca"}
    for name, fig in saved.items():
        assert_nothing_clipped(fig, Path("results/analysis") / f"{name}.png")
    texts = [text.get_text() for fig in saved.values() for text in drawn_texts(fig) if not text.get_parse_math()]
    assert {"price_$5$_and_$10$", "$\\frac$_broken_math", "price_$5$ (actual)"} <= set(texts)


def test_the_activation_evolution_of_one_layer_has_room_for_its_title(saved):
    rows = [
        {"epoch": e, "layer": "hidden1", "mean": 0.1, "std": 0.2, "dead_fraction": 0.0, "q05": 0, "q25": 0.05,
         "q50": 0.1, "q75": 0.2, "q95": 0.5, "max": 1.0}
        for e in range(5)
    ]  # fmt: skip
    analyze.plot_activation_evolution(pd.DataFrame(rows))
    assert_nothing_clipped(saved["activations_evolution"], Path("results/analysis/activations_evolution.png"))
