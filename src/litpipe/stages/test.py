"""test: a fresh process loads each seed's checkpoint and evaluates the test split.

results/test/metrics.json holds the accuracy and loss of models/best.ckpt (the first seed's model, the one
analyze and the report dissect), the number of seeds, with several seeds the mean, standard deviation
and 95% confidence interval of each metric over them, and the trivial baseline's numbers on the same test
split (baselines.py); results/test/seeds.csv has one row per seed.
"""

import logging

import pandas as pd

from litpipe import baselines, paths
from litpipe.config import Params
from litpipe.data.prepared import PreparedData, load_meta, load_split
from litpipe.errors import StageError
from litpipe.io import atomic_path, write_json
from litpipe.models.classifier import Classifier
from litpipe.spread import STATISTICS, spread
from litpipe.training import make_trainer, seed_everything

log = logging.getLogger(__name__)

METRICS = {"accuracy": "test/acc", "loss": "test/loss"}


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
    trainer, data = make_trainer(params), PreparedData.from_params(params)
    rows = []
    for seed, checkpoint in checkpoints.items():
        (result,) = trainer.test(Classifier.from_checkpoint(checkpoint), datamodule=data, verbose=False)
        rows.append({"seed": seed, **{name: result[key] for name, key in METRICS.items()}})
        log.info("seed %d (%s): accuracy %.4f, loss %.4f", seed, checkpoint, rows[-1]["accuracy"], rows[-1]["loss"])
    table = pd.DataFrame(rows)
    with atomic_path(paths.TEST_SEEDS) as tmp:
        table.to_csv(tmp, index=False)

    first, meta = rows[0], load_meta()
    metrics = {"accuracy": first["accuracy"], "loss": first["loss"], "samples": meta["sizes"]["test"]}
    metrics["seeds"] = len(rows)
    for name in METRICS:
        for statistic, value in (spread(table[name].tolist()) or {}).items():
            metrics[f"{name}_{statistic}"] = value
    metrics["baselines"] = {"trivial": baselines.trivial(meta["class_counts"]["train"], load_split("test").y.numpy())}
    write_json(paths.TEST_METRICS, metrics)
    log.info("test: accuracy %.4f, loss %.4f on %d samples", metrics["accuracy"], metrics["loss"], metrics["samples"])
    log.info("the network %s", baselines.margin(metrics["accuracy"], metrics["baselines"]["trivial"]["accuracy"]))
    if len(rows) > 1:
        log.info(
            "over %d seeds: accuracy %.4f ± %.4f (std), 95%% CI [%.4f, %.4f]",
            len(rows),
            *(metrics[f"accuracy_{statistic}"] for statistic in STATISTICS),
        )
