"""analyze: residual analysis of the best model on the test split, and PCA of its blocks' activations (or of
the modules analyze.layers names), convolutional maps pooled per channel.

To classify: confusion, per-class precision and recall, calibration, and the most confident mistakes (images
in a gallery, a table's rows with their values). To regress: the diagnostics of analysis/regression.py."""

import logging

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from litpipe import baselines, paths, plots
from litpipe.analysis import regression
from litpipe.analysis.rows import table_values, with_values
from litpipe.config import Params
from litpipe.data.encoding import Encoding
from litpipe.data.prepared import Split, load_meta, load_split
from litpipe.io import atomic_path, write_json
from litpipe.models import tasks
from litpipe.models.lit_model import LitModel

log = logging.getLogger(__name__)

LABEL_SIZE = 8  # points, of class names on the axes
TITLE_WIDTH = 1.1  # inches, of a title line in the mistakes gallery: an image's width, less a gap
LEGEND_CLASSES = 20  # up to this many classes, the PCA plot names them in a key; beyond, a colour bar
CHUNK = 500  # test samples through the network at a time


def run(params: Params) -> None:
    meta = load_meta()
    model = LitModel.from_checkpoint(paths.BEST_CKPT)
    test = load_split("test")
    # Each convolutional map pooled per channel: PCA of channels, not of every pixel of every channel.
    outputs, activations = model.forward_with_activations(test.x, params.analyze.layers, pooled=True, chunk=CHUNK)
    pca = {name: project(values) for name, values in activations.items()}
    plot_activation_evolution(pd.read_csv(paths.FIT_ACTIVATIONS))
    if tasks.of(meta) is tasks.Regression:
        summary = analyze_regression(model, outputs, test, meta, params)
        plot_pca_by_target(pca, test.y.numpy(), meta["target"]["name"])
    else:
        summary = analyze_classification(outputs, test, meta, params)
        plot_pca(pca, test.y.numpy(), meta["class_names"])
    summary["pca_explained_variance"] = {name: ratio for name, (_, ratio) in pca.items()}
    write_json(paths.ANALYSIS_SUMMARY, summary)


def analyze_regression(model: LitModel, outputs: torch.Tensor, test: Split, meta: dict, params: Params) -> dict:
    predicted, actual = model.task.predict(outputs).numpy().astype(np.float64), test.y.numpy().astype(np.float64)
    residuals = regression.residual_table(predicted, actual)
    write_csv(residuals, paths.ANALYSIS / "predictions.csv")
    values = table_values(meta, test.x)
    scores = baselines.regression_scores(predicted, actual)
    regression.plot_residuals_vs_fitted(residuals)
    regression.plot_predicted_vs_actual(residuals, scores["r2"])
    regression.plot_residual_distribution(residuals)
    deciles = regression.error_by_decile(residuals)
    write_csv(deciles, paths.ANALYSIS / "error_by_decile.csv", index=True)
    regression.plot_error_by_decile(deciles)
    summary = {**scores, "largest_abs_residual": float(residuals["abs_residual"].max())}
    if values is not None:
        blocks = Encoding.from_meta(meta["encoding"]).blocks()
        importance = regression.permutation_importance(
            lambda x: model.predict(x), test.x, actual, blocks, seed=params.seed
        )
        write_csv(importance, paths.IMPORTANCE_TABLE)
        regression.plot_importance(importance)
        regression.plot_residuals_vs_features(residuals, values, importance)
        summary["most_important"] = importance["column"].head(regression.FEATURES_SHOWN).tolist()
    write_csv(regression.largest_residuals(residuals, values, params.report.mistakes_shown), paths.MISTAKES_TABLE)
    log.info(
        "analysis: test RMSE %.4g, largest absolute residual %.4g on %d test samples",
        scores["rmse"],
        summary["largest_abs_residual"],
        len(residuals),
    )
    return summary


def analyze_classification(logits: torch.Tensor, test: Split, meta: dict, params: Params) -> dict:
    residuals = residual_table(logits, test.y)
    write_csv(residuals, paths.ANALYSIS / "predictions.csv")
    confusion = confusion_table(residuals, meta["num_classes"])
    write_csv(confusion, paths.ANALYSIS / "confusion.csv", index=True)
    per_class = per_class_table(residuals, confusion, meta["class_names"])
    write_csv(per_class, paths.PER_CLASS_TABLE)
    plot_confusion(confusion, meta["class_names"])
    values = table_values(meta, test.x)
    if values is None:
        plot_mistakes(residuals, test, meta, params.report.mistakes_shown)
    else:  # a table's mistakes are rows: their values, in a table
        write_csv(
            mistakes_table(residuals, values, meta["class_names"], params.report.mistakes_shown), paths.MISTAKES_TABLE
        )
    plot_per_class(per_class)
    calibration = reliability(residuals)
    plot_reliability(calibration)
    log.info("analysis: %d mistakes on %d test samples", (~residuals["correct"]).sum(), len(residuals))
    return {
        "accuracy": float(residuals["correct"].mean()),
        "mistakes": int((~residuals["correct"]).sum()),
        "mean_confidence_correct": float(residuals.loc[residuals["correct"], "confidence"].mean()),
        "mean_confidence_wrong": float(residuals.loc[~residuals["correct"], "confidence"].mean()),
        "expected_calibration_error": expected_calibration_error(calibration, len(residuals)),
    }


def mistakes_table(residuals: pd.DataFrame, values: pd.DataFrame, class_names: list[str], shown: int) -> pd.DataFrame:
    """The most confident mistakes on a table's rows: actual and predicted class, confidence, the row's values."""
    mistakes = residuals[~residuals["correct"]].nlargest(shown, "confidence")
    named = mistakes.assign(
        actual=[class_names[k] for k in mistakes["actual"]], predicted=[class_names[k] for k in mistakes["predicted"]]
    )[["index", "actual", "predicted", "confidence", "loss"]]
    return with_values(named, values)


def residual_table(logits: torch.Tensor, labels: torch.Tensor) -> pd.DataFrame:
    probs = logits.softmax(dim=1)
    confidence, predicted = probs.max(dim=1)
    return pd.DataFrame(
        {
            "index": np.arange(len(labels)),
            "actual": labels.numpy(),
            "predicted": predicted.numpy(),
            "confidence": confidence.numpy(),
            "prob_actual": probs[torch.arange(len(labels)), labels].numpy(),
            "loss": F.cross_entropy(logits, labels, reduction="none").numpy(),
            "correct": (predicted == labels).numpy(),
        }
    )


def confusion_table(residuals: pd.DataFrame, num_classes: int) -> pd.DataFrame:
    """Counts of (actual, predicted) pairs, every class on both axes even when never seen or predicted."""
    return pd.crosstab(residuals["actual"], residuals["predicted"]).reindex(
        index=range(num_classes), columns=range(num_classes), fill_value=0
    )


def per_class_table(residuals: pd.DataFrame, confusion: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    hits = np.diag(confusion.to_numpy())
    predicted = confusion.sum(axis=0).to_numpy()
    actual = confusion.sum(axis=1).to_numpy()
    return pd.DataFrame(
        {
            "class": class_names,
            "precision": np.divide(hits, predicted, out=np.zeros(len(hits)), where=predicted > 0),
            "recall": np.divide(hits, actual, out=np.zeros(len(hits)), where=actual > 0),
            "support": actual,
            "mean_loss": residuals.groupby("actual")["loss"].mean().reindex(range(len(class_names))).to_numpy(),
        }
    )


def reliability(residuals: pd.DataFrame, bins: int = 10) -> pd.DataFrame:
    """Accuracy against confidence in equal-width confidence bins (the data of a reliability diagram)."""
    edges = np.linspace(0, 1, bins + 1)
    binned = residuals.assign(bin=pd.cut(residuals["confidence"], edges, include_lowest=True, labels=False))
    table = binned.groupby("bin").agg(
        confidence=("confidence", "mean"), accuracy=("correct", "mean"), count=("correct", "size")
    )
    with atomic_path(paths.ANALYSIS / "reliability.csv") as tmp:
        table.to_csv(tmp)
    return table


def expected_calibration_error(table: pd.DataFrame, total: int) -> float:
    return float((table["count"] / total * (table["accuracy"] - table["confidence"]).abs()).sum())


def plot_reliability(table: pd.DataFrame) -> None:
    fig = plots.figure(5, 4.5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    ax.plot(table["confidence"], table["accuracy"], marker="o", label="model")
    for _, row in table.iterrows():
        ax.annotate(
            str(int(row["count"])),
            (row["confidence"], row["accuracy"]),
            fontsize=7,
            xytext=(3, -9),
            textcoords="offset points",
        )
    ax.set(
        xlabel="confidence (mean in bin)",
        ylabel="accuracy in bin",
        title="Reliability diagram (test)",
        xlim=(0, 1.02),
        ylim=(0, 1.02),
    )
    ax.legend(loc="lower right")
    plots.save(fig, paths.ANALYSIS_PLOTS["reliability"])


def plot_per_class(per_class: pd.DataFrame) -> None:
    # One above the other, sharing the class axis: the class names are written once, below both.
    names = per_class["class"].tolist()
    fig = plots.figure(max(6.0, 0.25 * len(names) + 1.5), 5.5 + plots.text_width(names, LABEL_SIZE))
    metrics_ax, loss_ax = fig.subplots(2, 1, sharex=True)
    positions = np.arange(len(per_class))
    metrics_ax.bar(positions - 0.2, per_class["precision"], width=0.4, label="precision")
    metrics_ax.bar(positions + 0.2, per_class["recall"], width=0.4, label="recall")
    metrics_ax.set(
        ylim=(max(0.0, per_class[["precision", "recall"]].min().min() - 0.1), 1.0),
        title="Per-class precision and recall (test)",
    )
    metrics_ax.legend(loc="lower left", fontsize=7)
    loss_ax.bar(positions, per_class["mean_loss"], color="tab:red")
    loss_ax.set(xticks=positions, xlim=(-0.6, len(names) - 0.4), title="Per-class mean residual (cross-entropy)")
    loss_ax.set_xticklabels(names, rotation=90, fontsize=LABEL_SIZE, parse_math=False)
    plots.save(fig, paths.ANALYSIS_PLOTS["per_class"])


def project(values: torch.Tensor) -> tuple[np.ndarray, list[float]]:
    """First two principal components and their explained-variance ratios."""
    centered = values - values.mean(dim=0)
    _, singular, vectors = torch.linalg.svd(centered, full_matrices=False)
    variance = singular**2
    ratio = (variance[:2] / variance.sum().clamp_min(1e-12)).tolist()
    return (centered @ vectors[:2].T).numpy(), ratio


def write_csv(table: pd.DataFrame, path, index: bool = False) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=index)


def plot_confusion(confusion: pd.DataFrame, class_names: list[str]) -> None:
    counts = confusion.to_numpy()
    side = max(4.0, 0.3 * len(class_names))  # the matrix: a cell holds a three-digit count
    margin = plots.text_width(class_names, LABEL_SIZE) + 0.6  # the tick labels and the axis label
    fig = plots.figure(side + margin + 1.0, side + margin + 0.4)  # and the colour bar; and the title
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues")
    for (row, col), count in np.ndenumerate(counts):
        if count:  # light on the dark cells, which are the large counts
            color = "white" if count > counts.max() / 2 else "black"
            ax.text(col, row, str(count), ha="center", va="center", fontsize=LABEL_SIZE - 1, color=color)
    ticks = range(len(class_names))
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="actual", title="Confusion matrix (test)")
    ax.set_xticklabels(class_names, rotation=90, fontsize=LABEL_SIZE, parse_math=False)
    ax.set_yticklabels(class_names, fontsize=LABEL_SIZE, parse_math=False)
    fig.colorbar(image, ax=ax, shrink=0.8)
    plots.save(fig, paths.ANALYSIS_PLOTS["confusion"])


def plot_mistakes(residuals: pd.DataFrame, test: Split, meta: dict, shown: int) -> None:
    mistakes = residuals[~residuals["correct"]].nlargest(shown, "confidence")
    columns = 8
    rows = max(1, -(-len(mistakes) // columns))
    fig = plots.figure(columns * 1.3, rows * 1.8 + 0.4)
    fig.suptitle("Most confident mistakes (actual -> predicted, confidence)")
    axes = fig.subplots(rows, columns, squeeze=False).flat
    # A line per name, cut to the image's width: the constrained layout makes no room for a title wider
    # than its axes, so neighbours would overlap, and long class names are the rule in some datasets.
    names = meta["class_names"]
    for ax, (_, row) in zip(axes, mistakes.iterrows()):
        plots.show_image(ax, test.x[int(row["index"])], meta["pixel_max"])
        actual = plots.shorten(names[row["actual"]], TITLE_WIDTH, 7)
        predicted = plots.shorten(f"-> {names[row['predicted']]}", TITLE_WIDTH, 7)
        ax.set_title(f"{actual}\n{predicted}\n{row['confidence']:.2f}", fontsize=7, parse_math=False)
    for ax in fig.axes:
        ax.axis("off")
    plots.save(fig, paths.ANALYSIS_PLOTS["mistakes"])


def plot_pca(pca: dict[str, tuple[np.ndarray, list[float]]], labels: np.ndarray, class_names: list[str]) -> None:
    colors = plots.class_colors(len(class_names))
    named = len(class_names) <= LEGEND_CLASSES
    key_width = plots.text_width(class_names, 7) + 0.7 if named else 1.2
    fig = plots.figure(4.5 * len(pca) + key_width, max(4.0, 0.17 * len(class_names) + 1.0) if named else 4.0)
    for ax, (name, (points, ratio)) in zip(np.atleast_1d(fig.subplots(1, len(pca))), pca.items()):
        ax.scatter(points[:, 0], points[:, 1], c=colors[labels], s=6)
        ax.set(title=f"{name}: PCA ({sum(ratio):.0%} of variance)", xlabel="PC1", ylabel="PC2")
    if named:
        markers = [Line2D([], [], linestyle="", marker="o", markersize=4, color=color) for color in colors]
        legend = fig.legend(markers, class_names, loc="outside right upper", fontsize=7, title="class")
        for text in legend.get_texts():
            text.set_parse_math(False)
    else:  # too many names for a key: a colour bar of class indices, the rows of the per-class table
        bands = ScalarMappable(Normalize(-0.5, len(class_names) - 0.5), ListedColormap(colors))
        fig.colorbar(bands, ax=fig.axes, label="class (index)", ticks=MaxNLocator(integer=True))
    plots.save(fig, paths.ANALYSIS_PLOTS["activations_pca"])


def plot_pca_by_target(pca: dict[str, tuple[np.ndarray, list[float]]], target: np.ndarray, name: str) -> None:
    fig = plots.figure(4.5 * len(pca) + 1.2, 4.0)
    for ax, (layer, (points, ratio)) in zip(np.atleast_1d(fig.subplots(1, len(pca))), pca.items()):
        dots = ax.scatter(points[:, 0], points[:, 1], c=target, cmap="viridis", s=8)
        ax.set(title=f"{layer}: PCA ({sum(ratio):.0%} of variance)", xlabel="PC1", ylabel="PC2")
    fig.colorbar(dots, ax=fig.axes).set_label(f"{name} (actual)", parse_math=False)
    plots.save(fig, paths.ANALYSIS_PLOTS["activations_pca"])


def plot_activation_evolution(table: pd.DataFrame) -> None:
    """How each hidden layer's activations on the probe batch changed over the fit's epochs."""
    layers = list(dict.fromkeys(table["layer"]))
    if not layers:
        fig = plots.figure(6, 1)
        fig.text(0.5, 0.5, "Activations were not tracked (observe.activations: false)", ha="center", va="center")
        plots.save(fig, paths.ANALYSIS_PLOTS["activations_evolution"])
        return
    fig = plots.figure(max(6.5, 4.5 * len(layers)), 4)  # one layer: room for the title above it
    for ax, layer in zip(np.atleast_1d(fig.subplots(1, len(layers))), layers):
        rows = table[table["layer"] == layer]
        epoch = rows["epoch"] + 1
        ax.fill_between(epoch, rows["q05"], rows["q95"], alpha=0.2, color="tab:blue", label="5-95%")
        ax.fill_between(epoch, rows["q25"], rows["q75"], alpha=0.4, color="tab:blue", label="25-75%")
        ax.plot(epoch, rows["q50"], color="tab:blue", label="median")
        ax.plot(epoch, rows["mean"], color="black", linestyle="--", label="mean")
        ax.set(title=layer, xlabel="epoch", ylabel="activation")
        dead = ax.twinx()
        dead.plot(epoch, rows["dead_fraction"], color="tab:red", label="dead units")
        dead.set_ylim(0, 1)
        dead.set_ylabel("fraction of dead units", color="tab:red")
        ax.legend(loc="upper left", fontsize=7)
    fig.suptitle("Hidden activations on a fixed validation probe, per epoch")
    plots.save(fig, paths.ANALYSIS_PLOTS["activations_evolution"])
