"""Residual analysis of a regression on the test split, as regression diagnostics read it.

residual = actual - predicted, in the target's units. The figures: residuals against fitted values with a
smoothed trend (a curve or a funnel says the model misses a pattern, or its errors grow with the prediction);
predicted against actual with the identity line; the residuals' histogram and normal Q-Q plot; residuals
against the most important features (permutation importance on the test split); the error by decile of the
target. The largest absolute residuals, with their rows' values, are the regression's mistakes.
"""

import numpy as np
import pandas as pd
import torch
from scipy import stats

from litpipe import paths, plots
from litpipe.analysis.rows import with_values

PERMUTATIONS = 5  # shuffles of each column for its permutation importance
FEATURES_SHOWN = 4  # the most important columns that residuals are plotted against
TREND_SHARE = 0.1  # the smoothed trend: a moving average over this share of the test samples


def residual_table(predicted: np.ndarray, actual: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "index": np.arange(len(actual)),
            "actual": actual,
            "predicted": predicted,
            "residual": actual - predicted,
            "abs_residual": np.abs(actual - predicted),
        }
    )


def permutation_importance(
    predict, x: torch.Tensor, actual: np.ndarray, blocks: dict[str, slice], seed: int = 0
) -> pd.DataFrame:
    """How much the test RMSE grows when one column's values are shuffled across the rows (all its encoded
    columns together, so a category moves as a whole): the mean over PERMUTATIONS shuffles, and their std."""
    generator = torch.Generator().manual_seed(seed)

    def rmse(inputs: torch.Tensor) -> float:
        return float(np.sqrt(np.mean((predict(inputs).numpy() - actual) ** 2)))

    base, rows = rmse(x), []
    for name, block in blocks.items():
        increases = []
        for _ in range(PERMUTATIONS):
            shuffled = x.clone()
            shuffled[:, block] = x[torch.randperm(len(x), generator=generator)][:, block]
            increases.append(rmse(shuffled) - base)
        rows.append({"column": name, "rmse_increase": np.mean(increases), "std": np.std(increases)})
    return pd.DataFrame(rows).sort_values("rmse_increase", ascending=False, ignore_index=True)


def largest_residuals(residuals: pd.DataFrame, values: pd.DataFrame | None, shown: int) -> pd.DataFrame:
    """The `shown` largest absolute residuals, with their rows' values when the data is a table."""
    largest = residuals.nlargest(shown, "abs_residual")
    return largest.reset_index(drop=True) if values is None else with_values(largest, values)


def error_by_decile(residuals: pd.DataFrame) -> pd.DataFrame:
    """MAE and mean residual (the bias) in each tenth of the test samples by actual value."""
    deciles = pd.qcut(residuals["actual"], 10, duplicates="drop")
    table = residuals.groupby(deciles, observed=True).agg(
        mae=("abs_residual", "mean"), bias=("residual", "mean"), count=("residual", "size")
    )
    table.index = [f"{interval.left:.4g}–{interval.right:.4g}" for interval in table.index]
    return table


def plot_residuals_vs_fitted(residuals: pd.DataFrame) -> None:
    ordered = residuals.sort_values("predicted")
    window = max(3, int(TREND_SHARE * len(ordered)))
    trend = ordered["residual"].rolling(window, center=True, min_periods=1).mean()
    fig = plots.figure(6, 4.5)
    ax = fig.add_subplot()
    ax.scatter(ordered["predicted"], ordered["residual"], s=10, alpha=0.6, label="test sample")
    ax.plot(ordered["predicted"], trend, color="tab:red", label=f"moving average of {window}")
    ax.axhline(0, color="grey", linestyle=":")
    ax.set(xlabel="fitted (predicted)", ylabel="residual (actual - predicted)", title="Residuals against fitted values")
    ax.legend(fontsize=8)
    plots.save(fig, paths.REGRESSION_PLOTS["residuals_vs_fitted"])


def plot_predicted_vs_actual(residuals: pd.DataFrame, r2: float) -> None:
    fig = plots.figure(5, 5)
    ax = fig.add_subplot()
    ax.scatter(residuals["actual"], residuals["predicted"], s=10, alpha=0.6)
    low = min(residuals["actual"].min(), residuals["predicted"].min())
    high = max(residuals["actual"].max(), residuals["predicted"].max())
    ax.plot([low, high], [low, high], color="grey", linestyle="--", label="predicted = actual")
    ax.set(xlabel="actual", ylabel="predicted", title=f"Predicted against actual (test R² {r2:.3f})")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(fontsize=8)
    plots.save(fig, paths.REGRESSION_PLOTS["predicted_vs_actual"])


def plot_residual_distribution(residuals: pd.DataFrame) -> None:
    fig = plots.figure(10, 4)
    hist_ax, qq_ax = fig.subplots(1, 2)
    hist_ax.hist(residuals["residual"], bins=min(50, max(10, len(residuals) // 10)), color="tab:blue", alpha=0.8)
    hist_ax.axvline(0, color="grey", linestyle=":")
    hist_ax.set(xlabel="residual", ylabel="test samples", title="Residuals")
    (theoretical, ordered), (slope, intercept, _) = stats.probplot(residuals["residual"], dist="norm")
    qq_ax.scatter(theoretical, ordered, s=10, alpha=0.6)
    qq_ax.plot(theoretical, slope * theoretical + intercept, color="tab:red", label="normal")
    qq_ax.set(xlabel="normal quantiles", ylabel="residual quantiles", title="Normal Q-Q plot of the residuals")
    qq_ax.legend(fontsize=8)
    plots.save(fig, paths.REGRESSION_PLOTS["residual_distribution"])


def plot_residuals_vs_features(residuals: pd.DataFrame, values: pd.DataFrame, importance: pd.DataFrame) -> None:
    columns = importance["column"].head(FEATURES_SHOWN).tolist()
    fig = plots.figure(4 * max(1, len(columns)), 3.8)
    for ax, column in zip(np.atleast_1d(fig.subplots(1, max(1, len(columns)))), columns):
        feature = values[column]
        if pd.api.types.is_numeric_dtype(feature):
            ax.scatter(feature, residuals["residual"], s=10, alpha=0.6)
        else:  # a category per box
            groups = residuals["residual"].groupby(feature.fillna("(missing)").astype(str))
            ax.boxplot([group.to_numpy() for _, group in groups])
            ax.set_xticks(range(1, len(groups) + 1), [str(name) for name, _ in groups], parse_math=False)
            ax.tick_params(axis="x", labelrotation=90, labelsize=7)
        ax.axhline(0, color="grey", linestyle=":")
        ax.set_xlabel(column, parse_math=False)  # column names as written: "$" or "_" are not mathtext
        ax.set_ylabel("residual")
    fig.suptitle("Residuals against the most important columns (permutation importance)")
    plots.save(fig, paths.REGRESSION_PLOTS["residuals_vs_features"])


def plot_importance(importance: pd.DataFrame) -> None:
    shown = importance.head(20)
    fig = plots.figure(6, 1.2 + 0.3 * len(shown))
    ax = fig.add_subplot()
    positions = np.arange(len(shown))[::-1]
    ax.barh(positions, shown["rmse_increase"], xerr=shown["std"], color="tab:blue")
    ax.set_yticks(positions, shown["column"], fontsize=8, parse_math=False)
    ax.set(xlabel="test RMSE increase when shuffled", title="Permutation importance (test)")
    plots.save(fig, paths.REGRESSION_PLOTS["importance"])


def plot_error_by_decile(table: pd.DataFrame) -> None:
    fig = plots.figure(max(6, 0.7 * len(table) + 1), 4.5 + plots.text_width(list(table.index), 8))
    ax = fig.add_subplot()
    positions = np.arange(len(table))
    ax.bar(positions - 0.2, table["mae"], width=0.4, label="MAE")
    ax.bar(positions + 0.2, table["bias"], width=0.4, label="mean residual (bias)")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(positions, table.index, rotation=90, fontsize=8)
    ax.set(
        xlabel="actual value (tenths of the test samples)", ylabel="target units", title="Error by decile of the target"
    )
    ax.legend(fontsize=8)
    plots.save(fig, paths.REGRESSION_PLOTS["error_by_decile"])
