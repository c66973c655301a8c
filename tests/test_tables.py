"""Tables in (data.dataset: table, diabetes, wine): columns encoded with the training split's statistics only,
unseen categories and missing values, a file read a chunk at a time to the same bytes, the task a target implies,
and regression's metrics and baselines against scikit-learn."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.dummy import DummyRegressor
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from litpipe import baselines, paths
from litpipe.data import encoding, table
from litpipe.data.prepared import load_meta, load_split
from litpipe.models import tasks

ROWS = 240


def measurements(seed: int = 0, rows: int = ROWS) -> pd.DataFrame:
    """A table litpipe never saw: numbers on different scales, a text category, a numeric code that is a
    category, and a target that depends on all three."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "depth_m": rng.uniform(0, 500, rows),
            "salinity": rng.normal(35, 2, rows),
            "site": rng.choice(["north", "south", "east"], rows),
            "sensor": rng.choice([3, 7], rows),
        }
    )
    effect = frame["site"].map({"north": 4.0, "south": -2.0, "east": 0.5}) + 3.0 * (frame["sensor"] == 7)
    frame["temperature"] = 20 - 0.02 * frame["depth_m"] + 0.5 * frame["salinity"] + effect + rng.normal(0, 1, rows)
    return frame


def prepare(workspace, frame: pd.DataFrame, name: str = "table.csv", **changes):
    """Write `frame` to data/raw/<name> and prepare it with data.dataset: table."""
    from pathlib import Path

    raw = Path("data/raw") / name
    raw.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(raw, index=False) if name.endswith(".parquet") else frame.to_csv(raw, index=False)
    return workspace({"data.dataset": "table", "data.root": str(raw), "data.target": "temperature", **changes})


def test_numbers_are_standardised_with_the_training_rows_and_categories_are_one_hot(workspace):
    prepare(workspace, measurements(), **{"data.categorical": ["sensor"]})
    meta, train, test = load_meta(), load_split("train"), load_split("test")
    assert meta["task"] == "regression" and meta["kind"] == "table"
    assert meta["features"] == [
        "depth_m", "salinity", "site=east", "site=north", "site=south", "site=<other>", "sensor=3", "sensor=7",
        "sensor=<other>",
    ]  # fmt: skip
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.float64 and meta["input_shape"] == [9]
    numbers = train.x[:, :2].double()
    np.testing.assert_allclose(numbers.mean(0), 0, atol=1e-6)  # the training split's own mean and std: exactly
    np.testing.assert_allclose(numbers.std(0), 1, atol=1e-6)
    assert not np.allclose(test.x[:, :2].double().mean(0), 0, atol=1e-6)  # the test split's are not
    onehot = train.x[:, 2:]
    assert set(onehot.unique().tolist()) == {0.0, 1.0} and (onehot.sum(1) == 2).all()
    # The stored rows are the table's: decoded, each test row is the file's row with the same target.
    source = measurements().astype({"sensor": str}).set_index(measurements()["temperature"])
    decoded = encoding.Encoding.from_meta(meta["encoding"]).decode(test.x.numpy())
    rows = source.loc[test.y.numpy()]
    assert (decoded["site"].to_numpy() == rows["site"].to_numpy()).all()
    assert (decoded["sensor"].to_numpy() == rows["sensor"].to_numpy()).all()
    np.testing.assert_allclose(
        decoded[["depth_m", "salinity"]].to_numpy(float), rows[["depth_m", "salinity"]], rtol=1e-5
    )
    assert meta["target"]["mean"] == pytest.approx(float(load_split("train").y.double().mean()), rel=1e-9)


def test_a_category_the_training_rows_lack_is_other_and_decodes_as_such():
    found = encoding.Scan(rows=4, numeric={"x"}, missing={"x": 0, "colour": 0}, target=pd.Series([1.0] * 4))
    train = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "colour": ["red", "blue", "red", "red"]})
    coder = encoding.Encoding.fit(iter([train]), ["x", "colour"], found, {"colour"}, impute=False)
    encoded = coder.transform(pd.DataFrame({"x": [2.5], "colour": ["green"]}))
    assert coder.names == ["x", "colour=blue", "colour=red", "colour=<other>"]
    np.testing.assert_allclose(encoded, [[0.0, 0, 0, 1]])
    assert coder.decode(encoded).to_dict("records") == [{"x": 2.5, "colour": encoding.OTHER}]


def test_missing_values_are_refused_in_one_line_naming_the_column_and_count(workspace, tmp_path):
    frame = measurements()
    frame.loc[[3, 50, 99], "salinity"] = np.nan
    frame.loc[[7], "site"] = None
    frame.to_csv(tmp_path / "gaps.csv", index=False)
    params = tmp_path / "params.yaml"
    workspace()  # params.yaml and the digits data: what a refused prepare must leave as it was
    before = {path: path.read_bytes() for path in paths.PREPARED.iterdir()}
    text = (
        params.read_text().replace("dataset: digits", "dataset: table").replace("target: null", "target: temperature")
    )
    params.write_text(text.replace("root: data/raw", f"root: {tmp_path / 'gaps.csv'}"))
    result = subprocess.run(
        [sys.executable, "-m", "litpipe.cli", "prepare"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "column 'salinity' has 3 missing values (and 1 more columns); fill them in, or set data.missing: impute "
            "(the training median or most frequent value, plus a column saying where)"
        )
    )
    assert {path: path.read_bytes() for path in paths.PREPARED.iterdir()} == before


def test_imputed_values_are_the_training_median_and_mode_with_an_indicator(workspace):
    frame = measurements()
    frame.loc[frame.index % 10 == 0, "salinity"] = np.nan
    frame.loc[frame.index % 15 == 1, "site"] = None
    prepare(workspace, frame, **{"data.missing": "impute"})
    meta = load_meta()
    columns = {column["name"]: column for column in meta["encoding"]}
    assert meta["features"] == [
        "depth_m", "salinity", "salinity_missing", "site=east", "site=north", "site=south", "site=<other>",
        "site_missing", "sensor",
    ]  # fmt: skip
    train = load_split("train")
    decoded = encoding.Encoding.from_meta(meta["encoding"]).decode(train.x.numpy())
    # The training rows' own median and most frequent site, computed here from the decoded training rows.
    assert columns["salinity"]["fill"] == pytest.approx(np.nanmedian(decoded["salinity"].astype(float)), rel=1e-6)
    assert columns["site"]["fill"] == decoded["site"].dropna().value_counts().sort_index().idxmax()
    salinity_missing = train.x[:, meta["features"].index("salinity_missing")].numpy() == 1
    assert salinity_missing.any() and decoded["salinity"][salinity_missing].isna().all()


def test_a_target_with_missing_values_is_refused_whatever_data_missing_says(workspace):
    from litpipe.errors import StageError

    frame = measurements()
    frame.loc[[5, 6], "temperature"] = np.nan
    with pytest.raises(StageError, match=r"the target 'temperature' is missing in 2 rows; drop those rows"):
        prepare(workspace, frame, **{"data.missing": "impute"})


def test_a_file_read_a_few_rows_at_a_time_prepares_the_same_bytes_csv_or_parquet(workspace, monkeypatch, tmp_path):
    frame = measurements()
    frame.loc[frame.index % 9 == 0, "depth_m"] = np.nan
    prepare(workspace, frame, **{"data.missing": "impute"})
    whole = {name: digest for name, digest in load_meta()["sha256"].items()}
    for name in ("table.csv", "table.parquet"):
        monkeypatch.setattr(table, "CHUNK_ROWS", 17)  # 240 rows: 15 chunks, the last one short
        import shutil

        shutil.rmtree(paths.PREPARED)
        prepare(workspace, frame, name, **{"data.missing": "impute"})
        assert load_meta()["sha256"] == whole, name


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (np.linspace(0, 1, ROWS), "regression"),  # fractions
        (np.arange(ROWS) % 30, "regression"),  # whole numbers of many values: a count
        (np.arange(ROWS) % 4, "classification"),  # whole numbers of few values: classes
        (np.where(np.arange(ROWS) % 2, "yes", "no"), "classification"),
    ],
)
def test_the_task_is_what_the_targets_values_imply(workspace, target, expected):
    frame = measurements().assign(temperature=target)
    prepare(workspace, frame)
    assert load_meta()["task"] == expected


def test_regression_of_a_text_target_is_one_line(workspace):
    from litpipe.errors import StageError

    frame = measurements().assign(temperature=np.where(np.arange(ROWS) % 2, "warm", "cold"))
    with pytest.raises(
        StageError, match=r"data.task regression needs a numeric target, and 'temperature' holds 'cold'"
    ):
        prepare(workspace, frame, **{"data.task": "regression"})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"data.target": "temperatur"}, r"data.target: .* has no column 'temperatur' \(did you mean 'temperature'\?\)"),
        (
            {"data.features": ["depth_m", "depht"]},
            r"data.features: .* has no column 'depht' \(did you mean 'depth_m'\?\)",
        ),
    ],
)
def test_a_column_the_table_lacks_is_named_with_its_nearest(workspace, changes, message):
    from litpipe.errors import StageError

    with pytest.raises(StageError, match=message):
        prepare(workspace, measurements(), **changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"data.target": "label"}, "data.target is for tables (data.dataset table, diabetes or wine), not digits"),
        ({"data.dataset": "wine", "data.categorical": ["x"], "data.features": ["y"]}, "'x' is not among the features"),
        ({"data.dataset": "wine", "data.target": "y", "data.features": ["y"]}, "a column cannot predict itself"),
    ],
)
def test_table_keys_are_checked_before_any_work(default_params, changes, message):
    from litpipe.config import Params
    from litpipe.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Params.model_validate(default_params).override(changes)


def test_the_embedded_tables_prepare_as_their_tasks(workspace, tmp_path, monkeypatch):
    from sklearn.datasets import load_wine

    workspace({"data.dataset": "wine"})
    meta = load_meta()
    assert meta["task"] == "classification" and meta["class_names"] == list(load_wine().target_names)
    assert sum(meta["sizes"].values()) == 178 and meta["input_shape"] == [13]
    (tmp_path / "d").mkdir()
    monkeypatch.chdir(tmp_path / "d")
    workspace({"data.dataset": "diabetes"})
    meta = load_meta()
    assert meta["task"] == "regression" and sum(meta["sizes"].values()) == 442 and meta["target"]["name"] == "target"


@pytest.mark.parametrize("huber", [False, True])
def test_regression_epoch_metrics_summed_piece_by_piece_are_scikit_learns(huber):
    rng = np.random.default_rng(1)
    actual = rng.normal(300, 40, 250).astype(np.float32)
    predicted = (actual + rng.normal(5, 30, 250)).astype(np.float32)
    task = tasks.Regression(mean=290.0, std=45.0, huber=huber)
    out = torch.from_numpy((predicted - 290.0) / 45.0)[:, None]
    y = torch.from_numpy(actual)
    sums = sum(task.sums(o, t, task.loss(o, t)) for o, t in zip(out.split(64), y.split(64)))
    means = {name: float(value) for name, value in task.means(sums, len(y)).items()}
    assert means["rmse"] == pytest.approx(mean_squared_error(actual, predicted) ** 0.5, rel=1e-4)
    assert means["mae"] == pytest.approx(mean_absolute_error(actual, predicted), rel=1e-4)
    assert means["r2"] == pytest.approx(r2_score(actual, predicted), rel=1e-4)
    np.testing.assert_allclose(task.predict(out).numpy(), predicted, rtol=1e-5)


def test_regression_scores_and_the_trivial_baseline_are_scikit_learns():
    rng = np.random.default_rng(2)
    train, actual = rng.gamma(2, 50, 300), rng.gamma(2, 50, 90)
    predicted = actual + rng.normal(0, 20, 90)
    assert baselines.regression_scores(predicted, actual) == pytest.approx(
        {
            "rmse": mean_squared_error(actual, predicted) ** 0.5,
            "mae": mean_absolute_error(actual, predicted),
            "r2": r2_score(actual, predicted),
        },
        rel=1e-12,
    )
    dummy = DummyRegressor().fit(np.zeros((300, 1)), train).predict(np.zeros((90, 1)))
    trivial = baselines.trivial_regression(train, actual)
    assert trivial["rmse"] == pytest.approx(mean_squared_error(actual, dummy) ** 0.5, rel=1e-12)
    assert trivial["r2"] == pytest.approx(r2_score(actual, dummy), rel=1e-12) and trivial["r2"] <= 0


def test_the_linear_baseline_finds_a_linear_target_and_beats_the_trivial_one():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 5))
    y = x @ np.array([3.0, -2.0, 0.0, 1.0, 0.5]) + rng.normal(0, 0.1, 400)
    linear = baselines.linear(x[:300], y[:300], x[300:], y[300:], None)
    assert linear["r2"] > 0.99 > baselines.trivial_regression(y[:300], y[300:])["r2"]
    classes = np.digitize(x[:, 0] + x[:, 1], [-1.0, 1.0])  # three bands between parallel lines
    found = baselines.linear(x[:300], classes[:300], x[300:], classes[300:], 3)
    assert found["accuracy"] > 0.9 and found["loss"] < 0.5
    assert json.dumps(found)  # plain numbers, for metrics.json


def fitted(workspace, frame: pd.DataFrame, **changes):
    """`frame` prepared as a table and a model fitted on it for a few epochs."""
    from litpipe.io import write_json
    from litpipe.stages import fit

    params = prepare(workspace, frame, **changes)
    write_json(paths.SEARCH_BEST, {"params": {}})
    fit.run(params.override({"train.max_epochs": 3, "observe.activations": False}))


def predict(*args: str) -> subprocess.CompletedProcess:
    from .helpers import tool_env

    return subprocess.run(
        ["litpipe", "predict", *args], env=tool_env(), capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
@pytest.mark.parametrize("target", ["temperature", "site"])
def test_predict_writes_each_rows_prediction_beside_it_as_the_model_gives_it(workspace, tmp_path, target):
    """New rows as a CSV (another column order, an extra column, categories as text): the predictions are the
    model's on the same rows of the prepared test split; to classify, with each class's probability."""
    from litpipe.models.lit_model import LitModel

    frame = measurements()
    fitted(
        workspace,
        frame.rename(columns={target: "temperature", "temperature": target}) if target != "temperature" else frame,
    )
    meta, test = load_meta(), load_split("test")
    rows = encoding.Encoding.from_meta(meta["encoding"]).decode(test.x.numpy())
    rows = rows[rows.columns[::-1]].assign(note="kept as it is")
    rows.to_csv(tmp_path / "new.csv", index=False)
    result = predict(str(tmp_path / "new.csv"), "--out", "out/predicted.csv")
    assert result.returncode == 0, result.stderr
    written = pd.read_csv("out/predicted.csv")
    assert (
        list(written.columns[: len(rows.columns)]) == list(rows.columns) and (written["note"] == "kept as it is").all()
    )
    expected = LitModel.from_checkpoint(paths.BEST_CKPT).predict(test.x).numpy()
    if meta["task"] == "regression":
        np.testing.assert_allclose(written["predicted"], expected, rtol=1e-4, atol=1e-4)
    else:
        names = meta["class_names"]
        assert written["predicted"].tolist() == [names[k] for k in expected.argmax(1)]
        np.testing.assert_allclose(written[[f"probability_{name}" for name in names]], expected, atol=1e-5)
        np.testing.assert_allclose(written["probability"], expected.max(1), atol=1e-5)


@pytest.mark.slow
def test_predict_names_the_row_it_cannot_use_or_skips_it(workspace, tmp_path):
    fitted(workspace, measurements())
    new = measurements(seed=5, rows=6).drop(columns="temperature")
    new["salinity"] = new["salinity"].astype(object)
    new.loc[2, "salinity"] = "salty"
    new.to_csv(tmp_path / "new.csv", index=False)
    result = predict(str(tmp_path / "new.csv"), "--out", "out.csv")
    assert result.returncode == 1 and not (tmp_path / "out.csv").exists()
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(
            f"{tmp_path / 'new.csv'}: row 3: column 'salinity' is not a number; correct it, or pass --skip-bad to leave "
            "such rows out"
        )
    )
    assert predict(str(tmp_path / "new.csv"), "--out", "out.csv", "--skip-bad").returncode == 0
    assert len(pd.read_csv("out.csv")) == 5
    new.assign(predicted=1.0).to_csv(tmp_path / "again.csv", index=False)  # a predictions file fed back in
    result = predict(str(tmp_path / "again.csv"), "--out", "out.csv", "--skip-bad")
    assert result.returncode == 1 and "its column 'predicted' would be overwritten by the predictions" in result.stderr
    new.drop(columns="site").to_csv(tmp_path / "fewer.csv", index=False)
    result = predict(str(tmp_path / "fewer.csv"), "--out", "out.csv")
    assert (
        result.returncode == 1 and "no column 'site'; the model reads depth_m, salinity, site, sensor" in result.stderr
    )


@pytest.mark.slow
def test_a_table_of_classes_is_tested_against_both_baselines_and_its_mistakes_are_rows(workspace):
    from litpipe.io import write_json
    from litpipe.stages import analyze, fit, test

    params = workspace({"data.dataset": "wine"})
    write_json(paths.SEARCH_BEST, {"params": {}})
    fit.run(params.override({"train.max_epochs": 4}))
    test.run(params)
    analyze.run(params)
    metrics = json.loads(paths.TEST_METRICS.read_text())
    assert set(metrics["baselines"]) == {"trivial", "linear"}
    counts = load_meta()["class_counts"]["train"]
    test_y = load_split("test").y.numpy()
    assert metrics["baselines"]["trivial"]["accuracy"] == pytest.approx(np.mean(test_y == np.argmax(counts)))
    assert metrics["baselines"]["linear"]["accuracy"] > 0.9  # wine's cultivars are nearly linearly separable
    mistakes = pd.read_csv(paths.MISTAKES_TABLE)
    assert list(mistakes.columns[:5]) == ["index", "actual", "predicted", "confidence", "loss"]
    assert {"alcohol", "proline"} <= set(mistakes.columns)
    assert not paths.ANALYSIS_PLOTS["mistakes"].exists()  # rows, not an image gallery
    summary = json.loads(paths.ANALYSIS_SUMMARY.read_text())
    assert len(mistakes) == min(summary["mistakes"], 16)  # every mistake, up to report.mistakes_shown


@pytest.mark.slow
def test_the_sanity_threshold_is_a_share_of_the_targets_variance_whatever_its_units(workspace, tmp_path, monkeypatch):
    """The same rows with the target in other units (x 1000, shifted): the overfit check sees the same loss."""
    from litpipe.stages import sanity

    losses = []
    for scale, shift in ((1.0, 0.0), (1000.0, -250.0)):
        (tmp_path / str(scale)).mkdir()
        monkeypatch.chdir(tmp_path / str(scale))
        frame = measurements()
        frame["temperature"] = frame["temperature"] * scale + shift
        sanity.run(prepare(workspace, frame, **{"sanity.overfit_epochs": 40}))
        losses.append(json.loads(paths.SANITY_SUMMARY.read_text())["overfit"]["final_loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)


@pytest.mark.slow
def test_replicates_give_the_spread_of_every_regression_metric(workspace):
    from litpipe.io import write_json
    from litpipe.stages import fit, test

    from .helpers import expected_spread

    params = workspace({"data.dataset": "diabetes", "replicates.seeds": [0, 1], "train.max_epochs": 3})
    write_json(paths.SEARCH_BEST, {"params": {}})
    fit.run(params)
    test.run(params)
    metrics, seeds = json.loads(paths.TEST_METRICS.read_text()), pd.read_csv(paths.TEST_SEEDS)
    assert list(seeds.columns) == ["seed", "rmse", "mae", "r2", "loss"]
    for name in ("rmse", "mae", "r2", "loss"):
        over_seeds = [key for key in metrics if key.startswith(f"{name}_") and not key.startswith(f"{name}_split_")]
        spread = {key.removeprefix(f"{name}_"): metrics[key] for key in over_seeds}
        assert spread == pytest.approx(expected_spread(seeds[name].tolist()))
        # The test split's own interval (a bootstrap over its rows), around the first seed's number.
        assert metrics[f"{name}_split_ci95_low"] < metrics[name] < metrics[f"{name}_split_ci95_high"]


def test_an_identifier_column_is_not_one_hot_encoded(workspace):
    from litpipe.errors import StageError

    frame = measurements().assign(station=[f"station-{i:04d}" for i in range(ROWS)])
    with pytest.raises(
        StageError, match=r"column 'station' has 1\d\d different values in 1\d\d training rows: an identifier"
    ):
        prepare(workspace, frame)
    prepare(workspace, frame, **{"data.features": ["depth_m", "salinity", "site", "sensor"]})  # left out: prepares
    assert load_meta()["columns"] == ["depth_m", "salinity", "site", "sensor"]


@pytest.mark.parametrize("arch", ["cnn", "resnet18"])
def test_a_network_for_images_on_a_table_is_one_line(workspace, arch):
    from litpipe.errors import ConfigError
    from litpipe.training import build_model

    params = prepare(workspace, measurements(), **{"model.arch": arch})
    with pytest.raises(
        ConfigError, match=rf"model.arch: {arch} takes images .* rows of 7 features; use mlp or your own"
    ):
        build_model(params, load_meta())


@pytest.mark.slow
def test_a_table_streamed_from_disk_trains_as_one_on_the_device(workspace, tmp_path, monkeypatch):
    """train.data_path loader reads the float32 rows from the split files: the same numbers as resident."""
    from litpipe.io import write_json
    from litpipe.stages import fit

    histories = []
    for path in ("resident", "loader"):
        (tmp_path / path).mkdir()
        monkeypatch.chdir(tmp_path / path)
        params = prepare(workspace, measurements(), **{"train.data_path": path, "train.max_epochs": 3})
        write_json(paths.SEARCH_BEST, {"params": {}})
        fit.run(params.override({"train.loader_workers": 1, "observe.activations": False}))
        histories.append(pd.read_csv(paths.FIT_HISTORY).drop(columns="lr"))
    pd.testing.assert_frame_equal(histories[0], histories[1], rtol=1e-5)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("semicolons.csv", {"sep": ";", "decimal": ","}),  # a spreadsheet's CSV where the comma is the decimal mark
        ("tabs.tsv", {"sep": "\t"}),
        ("pipes.txt", {"sep": "|"}),
        ("packed.csv.gz", {"compression": "gzip"}),
    ],
)
def test_csv_dialects_prepare_the_same_bytes(workspace, tmp_path, name, options):
    frame = measurements()
    prepare(workspace, frame)
    expected = load_meta()["sha256"]
    raw = tmp_path / name
    frame.to_csv(raw, index=False, **options)
    (tmp_path / "other").mkdir()
    import os

    os.chdir(tmp_path / "other")
    workspace({"data.dataset": "table", "data.root": str(raw), "data.target": "temperature"})
    assert load_meta()["sha256"] == expected


def test_a_column_empty_in_every_training_row_is_refused_even_when_imputing(workspace):
    from litpipe.errors import StageError

    frame = measurements().assign(notes=np.nan)
    with pytest.raises(StageError, match=r"column 'notes' has no value in the training rows; leave it out"):
        prepare(workspace, frame, **{"data.missing": "impute"})


def test_a_category_is_named_the_same_whatever_type_a_chunk_reads_it_as(workspace, monkeypatch):
    """Parquet keeps a whole-number code as int64 in a chunk without gaps and float64 in one with a gap: both are
    the category "3"; and a float code reads as a CSV's "3" does (what `litpipe predict` gets)."""
    frame = measurements()
    frame["sensor"] = frame["sensor"].astype(float)
    frame.loc[5, "sensor"] = np.nan
    monkeypatch.setattr(table, "CHUNK_ROWS", 20)
    prepare(workspace, frame, "codes.parquet", **{"data.categorical": ["sensor"], "data.missing": "impute"})
    sensor = next(column for column in load_meta()["encoding"] if column["name"] == "sensor")
    assert sensor["categories"] == ["3", "7"]
    coder = encoding.Encoding.from_meta(load_meta()["encoding"])
    row = measurements().head(1).astype({"sensor": str})
    assert coder.transform(row)[0, coder.names.index(f"sensor={row['sensor'].iloc[0]}")] == 1


def test_a_typo_in_a_numeric_target_is_named_not_taken_for_classes(workspace):
    from litpipe.errors import StageError

    frame = measurements()
    frame["temperature"] = frame["temperature"].astype(object)
    frame.loc[17, "temperature"] = "n.a."
    with pytest.raises(StageError, match=r"column 'temperature' holds numbers, except 1 values that are not"):
        prepare(workspace, frame)


def test_a_split_of_fewer_than_two_rows_is_refused(workspace):
    from litpipe.errors import StageError

    with pytest.raises(
        StageError, match=r"the test split would hold 1 of the table's 12 rows; a split needs at least 2"
    ):
        prepare(workspace, measurements(rows=12), **{"data.test_fraction": 0.05})


def test_a_tab_file_with_commas_in_its_text_keeps_decimal_points(workspace, tmp_path):
    frame = measurements().assign(note=["3,5 mm"] * ROWS)
    prepare(workspace, frame, **{"data.features": ["depth_m", "salinity", "site", "sensor"]})
    expected = load_meta()["sha256"]
    frame.to_csv(tmp_path / "notes.tsv", sep="\t", index=False)
    (tmp_path / "other").mkdir()
    import os

    os.chdir(tmp_path / "other")
    workspace(
        {
            "data.dataset": "table",
            "data.root": str(tmp_path / "notes.tsv"),
            "data.target": "temperature",
            "data.features": ["depth_m", "salinity", "site", "sensor"],
        }
    )
    assert load_meta()["sha256"] == expected


def test_exact_decimals_of_a_parquet_file_are_numbers(workspace, tmp_path):
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = measurements()
    prepare(workspace, frame)
    money = pa.array([decimal.Decimal(f"{v:.2f}") for v in frame["salinity"]], type=pa.decimal128(10, 2))
    arrow = pa.Table.from_pandas(frame, preserve_index=False).set_column(1, "salinity", money)
    pq.write_table(arrow, tmp_path / "money.parquet")
    (tmp_path / "other").mkdir()
    import os

    os.chdir(tmp_path / "other")
    workspace({"data.dataset": "table", "data.root": str(tmp_path / "money.parquet"), "data.target": "temperature"})
    assert "salinity" in load_meta()["features"]  # a number column, standardised


def test_a_target_keeps_every_digit_of_its_file(workspace):
    """Seconds since 1970 (about 1.7e9): float32 would round them to 128 s; the prepared target is the file's."""
    frame = measurements().assign(temperature=1.7e9 + np.arange(ROWS) * 1.5)
    prepare(workspace, frame)
    stored = np.concatenate([load_split(name).y.numpy() for name in paths.SPLITS])
    assert sorted(stored) == sorted(frame["temperature"])
