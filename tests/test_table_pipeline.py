"""A table litpipe never saw, with a numeric target, a text category and missing values, through the whole
pipeline by `dvc repro` after editing only data.* in params.yaml; and the README's `dvc exp run -S
data.dataset=diabetes`, whose RMSE, MAE and R² `dvc exp show` lists."""

import io
import json

import numpy as np
import pandas as pd
import pytest

from .helpers import chromium, copy_repo, copy_workspace, edit_params, require_tool, run

pytestmark = pytest.mark.integration

ROWS = 1200


def houses(seed: int = 0) -> pd.DataFrame:
    """House prices: area and age on their own scales, a district whose effect is not linear in anything, a
    condition score, a fifth of the ages unknown; the price depends on them with an interaction and a curve."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "area_m2": rng.uniform(30, 250, ROWS),
            "age_years": rng.uniform(0, 80, ROWS),
            "district": rng.choice(["old town", "harbour", "hills", "suburbs"], ROWS),
            "condition": rng.integers(1, 6, ROWS),
        }
    )
    premium = frame["district"].map({"old town": 1.6, "harbour": 1.3, "hills": 1.1, "suburbs": 0.9})
    frame["price_keur"] = (
        premium * frame["area_m2"] * (4.0 - 0.02 * frame["age_years"]) + 15 * frame["condition"] ** 1.5
    ) * rng.lognormal(0, 0.08, ROWS)
    frame.loc[rng.random(ROWS) < 0.2, "age_years"] = np.nan
    return frame


@pytest.fixture(scope="module")
def table_pipeline(tmp_path_factory):
    require_tool("dvc")
    repo = copy_repo(tmp_path_factory.mktemp("table"))
    houses().to_csv(repo / "data/raw/houses.csv", index=False)
    edit_params(
        repo,
        {
            "data.dataset": "table",
            "data.root": "data/raw/houses.csv",
            "data.target": "price_keur",
            "data.missing": "impute",
        },
    )
    run(["dvc", "repro"], repo)
    return repo


def test_the_network_beats_the_mean_and_every_number_is_in_the_targets_units(table_pipeline):
    metrics = json.loads((table_pipeline / "results/test/metrics.json").read_text())
    meta = json.loads((table_pipeline / "data/prepared/meta.json").read_text())
    test = pd.read_csv(table_pipeline / "results/analysis/predictions.csv")
    assert (
        meta["task"] == "regression"
        and "age_years_missing" in meta["features"]
        and "district=harbour" in meta["features"]
    )
    assert metrics["r2"] > 0.8 > metrics["baselines"]["trivial"]["r2"]
    assert metrics["rmse"] < metrics["baselines"]["trivial"]["rmse"]
    # The analysis's predictions are the test stage's numbers, in the price's own units.
    errors = test["actual"] - test["predicted"]
    assert metrics["rmse"] == pytest.approx(float(np.sqrt(np.mean(errors**2))), rel=1e-4)
    assert metrics["mae"] == pytest.approx(float(np.mean(np.abs(errors))), rel=1e-4)
    assert test["actual"].mean() == pytest.approx(houses()["price_keur"].mean(), rel=0.2)
    largest = pd.read_csv(table_pipeline / "results/analysis/mistakes.csv")
    assert {"area_m2", "age_years", "district", "condition"} <= set(largest.columns)
    assert largest["abs_residual"].is_monotonic_decreasing and largest["abs_residual"].iloc[0] == errors.abs().max()
    importance = pd.read_csv(table_pipeline / "results/analysis/importance.csv")
    assert importance["column"].iloc[0] == "area_m2"  # the price is mostly area


def test_hparams_sessions_show_the_regressions_rmse(table_pipeline):
    """The fit's and each trial's HPARAMS session declare val/rmse and test/rmse columns, and the fit's test RMSE is
    the test stage's (its own test loop against torchmetrics on the predictions)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    metrics = json.loads((table_pipeline / "results/test/metrics.json").read_text())
    runs = [table_pipeline / "tb/fit", *sorted((table_pipeline / "tb/search").glob("trial_*"))]
    assert len(runs) > 1
    for run_dir in runs:
        events = EventAccumulator(str(run_dir)).Reload()
        content = events.PluginTagToContent("hparams")["_hparams_/experiment"]
        declared = [
            info.name.tag for info in plugin_data_pb2.HParamsPluginData.FromString(content).experiment.metric_infos
        ]
        assert declared == ["hp/best_val_loss", "hp/best_val_rmse", "hp/test_rmse"], run_dir
        assert "hp/best_val_rmse" in events.Tags()["scalars"]
    fit = EventAccumulator(str(table_pipeline / "tb/fit")).Reload()
    assert fit.Scalars("hp/test_rmse")[-1].value == pytest.approx(metrics["rmse"], rel=1e-4)


def test_the_report_shows_the_residual_figures_in_chromium_with_nothing_clipped(table_pipeline, tmp_path):
    from playwright.sync_api import sync_playwright

    report = table_pipeline / "reports/report.html"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_context(offline=True, viewport={"width": 1200, "height": 900}).new_page()
        problems = []
        page.on("console", lambda message: message.type in ("error", "warning") and problems.append(message.text))
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(report.as_uri(), wait_until="load")
        images = page.evaluate(
            "Array.from(document.images).map(i => { const r = i.getBoundingClientRect();"
            " return [i.complete, i.naturalWidth, r.left, r.right, r.width / i.naturalWidth]; })"
        )
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        text = page.evaluate("document.body.innerText")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert problems == [] and overflow <= 0
    assert all(complete and width > 0 and left >= 0 and right <= 1200 for complete, width, left, right, _ in images)
    assert len(images) >= 16  # the regression figures among them
    metrics = json.loads((table_pipeline / "results/test/metrics.json").read_text())
    for shown in (f"RMSE {metrics['rmse']:.4f}", f"R² {metrics['r2']:.4f}", "linear baseline", "trivial baseline"):
        assert shown in text
    assert "The largest absolute residuals, with their rows' values" in text and "old town" in text


def test_dvc_exp_run_on_the_embedded_diabetes_table_shows_rmse_mae_and_r2(pipeline, tmp_path):
    """The README's command, in a copy of the default pipeline's workspace."""
    repo = copy_workspace(pipeline[0], tmp_path / "repo")
    run(["dvc", "exp", "run", "-S", "data.dataset=diabetes", "--name", "diabetes"], repo)
    # "!" where a commit has no metrics file (the copy's own commit has none).
    shown = pd.read_csv(io.StringIO(run(["dvc", "exp", "show", "--csv", "--no-pager"], repo).stdout), na_values=["!"])
    row = shown[shown["Experiment"] == "diabetes"].iloc[0]
    assert 0 < row["r2"] < 1 and row["rmse"] > row["mae"] > 0
    assert row["r2"] > row["baselines.trivial.r2"] and pd.isna(row.get("accuracy"))
    readable = run(["litpipe", "experiments", "--csv"], repo).stdout.splitlines()[0].split(",")
    assert {"rmse", "mae", "r2"} <= set(readable) and not any(c.startswith("baselines.") for c in readable)
