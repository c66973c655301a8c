"""test: a fresh process loads each seed's checkpoint and evaluates the test split.

results/test/metrics.json holds the test numbers of models/best.ckpt (the first seed's model, the one analyze and
the report dissect): accuracy and loss to classify; RMSE, MAE (in the target's units), R² and loss to regress.
Beside each, the test split's own 95% interval (`<metric>_split_ci95_low`/`_high`, sampling.py: the error of
measuring on a finite split). Then the number of seeds, with several seeds the mean, standard deviation and 95%
confidence interval of each metric over them (and under `notes` the metrics whose seeds agree exactly: their
spread is below what the test split resolves, not a certainty), and the baselines' numbers on the same test split
(baselines.py: trivial; on tables, linear too); results/test/seeds.csv has one row per seed.
"""

import logging

import pandas as pd
import torch

from litpipe import baselines, paths
from litpipe.config import Params
from litpipe.data.prepared import PreparedData, Split, load_meta, load_split
from litpipe.errors import StageError
from litpipe.io import atomic_path, write_json
from litpipe.models import tasks
from litpipe.models.lit_model import LitModel
from litpipe.sampling import intervals
from litpipe.spread import STATISTICS, spread
from litpipe.training import make_trainer, seed_everything

log = logging.getLogger(__name__)

CHUNK = 4096  # test samples through the network at a time


def run(params: Params) -> None:
    seeds = params.replicates.seeds
    checkpoints = {seed: paths.fit_run(seed, seeds).checkpoint for seed in seeds}
    missing = [f"{path} (seed {seed})" for seed, path in checkpoints.items() if not path.exists()]
    if missing:
        raise StageError(
            f"no checkpoint {', '.join(missing)}: the fit has not run with replicates.seeds {seeds}; "
            "run `dvc repro fit` (or `litpipe fit`) first"
        )
    seed_everything(params.seed)
    meta = load_meta()
    task = tasks.of(meta)
    trainer, data, test = make_trainer(params), PreparedData.from_params(params), load_split("test")
    rows, split = [], {}
    for seed, checkpoint in checkpoints.items():
        model = LitModel.from_checkpoint(checkpoint)
        (result,) = trainer.test(model, datamodule=data, verbose=False)
        rows.append({"seed": seed, **scores(model, result, test)})
        log.info("seed %d (%s): %s", seed, checkpoint, described(rows[-1], task))
        if not split:  # the first seed's model is the one metrics.json reports
            outputs = torch.cat([model.outputs(part) for part in test.x.split(CHUNK)])
            split = intervals(model.task, outputs, test.y)
    table = pd.DataFrame(rows)
    with atomic_path(paths.TEST_SEEDS) as tmp:
        table.to_csv(tmp, index=False)

    names, headline, samples = task.reported, task.headline, meta["sizes"]["test"]
    metrics = {name: rows[0][name] for name in names} | {"samples": samples, "seeds": len(rows)}
    for name, (low, high) in split.items():
        metrics |= {f"{name}_split_ci95_low": low, f"{name}_split_ci95_high": high}
    notes = {}
    for name in names:
        values = table[name].tolist()
        for statistic, value in (spread(values) or {}).items():
            metrics[f"{name}_{statistic}"] = value
        if len(values) > 1 and len(set(values)) == 1:
            notes[name] = seeds_agree(name, len(values), split[name], samples)
            log.info("%s", notes[name])
    if notes:
        metrics["notes"] = notes
    metrics["baselines"] = baselines_of(meta, test)
    write_json(paths.TEST_METRICS, metrics)
    log.info("test: %s on %d samples", described(metrics, task), samples)
    log.info(
        "the test split's own 95%% intervals: %s",
        ", ".join(f"{name} [{low:.4f}, {high:.4f}]" for name, (low, high) in split.items()),
    )
    for name, numbers in metrics["baselines"].items():
        log.info("the network %s", baselines.margin(metrics[headline], numbers[headline], name, task.higher_is_better))
    if len(rows) > 1 and headline not in notes:
        log.info(
            "over %d seeds: %s %.4f ± %.4f (std), 95%% CI [%.4f, %.4f]",
            len(rows),
            headline,
            *(metrics[f"{headline}_{statistic}"] for statistic in STATISTICS),
        )


def scores(model: LitModel, result: dict[str, float], test: Split) -> dict[str, float]:
    """The model's test numbers: the loss and accuracy its test loop summed; to regress, RMSE, MAE and R² of its
    predictions, through torchmetrics (baselines.regression_scores), and its loss."""
    if model.task.name == tasks.CLASSIFICATION:
        return {"accuracy": result["test/acc"], "loss": result["test/loss"]}
    predicted = torch.cat([model.predict(part) for part in test.x.split(CHUNK)])
    return {**baselines.regression_scores(predicted, test.y), "loss": result["test/loss"]}


def baselines_of(meta: dict, test: Split) -> dict[str, dict[str, float]]:
    """The trivial baseline; on a table, the linear one too (fitted on the same encoded training rows)."""
    classes = meta.get("num_classes") if tasks.of(meta) is tasks.Classification else None
    train = load_split("train") if meta.get("kind") == "table" or classes is None else None
    if classes is None:
        found = {"trivial": baselines.trivial_regression(train.y.numpy(), test.y.numpy())}
    else:
        found = {"trivial": baselines.trivial(meta["class_counts"]["train"], test.y.numpy())}
    if meta.get("kind") == "table":
        found["linear"] = baselines.linear(train.x.numpy(), train.y.numpy(), test.x.numpy(), test.y.numpy(), classes)
    return found


def described(numbers: dict[str, float], task: type[tasks.Task]) -> str:
    return ", ".join(f"{name} {numbers[name]:.4f}" for name in task.reported)


def seeds_agree(name: str, seeds: int, interval: tuple[float, float], samples: int) -> str:
    """What seeds that agree exactly mean: not a certain number, a spread the test split cannot resolve."""
    resolution = f" (one sample is {1 / samples:.4f} of it)" if name == "accuracy" else ""
    return (
        f"the {seeds} seeds agree exactly on {name}: the spread over seeds is below the test split's "
        f"resolution{resolution}; the split's own 95% interval is [{interval[0]:.4f}, {interval[1]:.4f}]"
    )
