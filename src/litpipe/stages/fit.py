"""fit: final training with the best searched params, early stopping and weight averaging, once per seed
of replicates.seeds.

The first seed's run is models/best.ckpt, results/fit and tb/fit; each further seed's is
models/replicates/seed-S.ckpt, results/replicates/seed-S and tb/replicates/seed-S (paths.fit_run).

A run's checkpoint holds the weights with the lowest validation loss; once averaging has started
those are the averaged weights, which are also the ones validated (see training.StochasticWeightAveraging).
Early stopping may only stop training once the average has been validated for a full patience
window, so it can never silently discard the average. Its TensorBoard run is an HPARAMS session
with the same columns as the search trials (its seed among them), plus the test score (accuracy, or RMSE)
of the saved checkpoint.
"""

import logging
import shutil
import warnings
from pathlib import Path

import pandas as pd
from lightning.pytorch.utilities import rank_zero_only

from litpipe import fanout, paths, plots, resources
from litpipe.config import Params
from litpipe.data.prepared import PreparedData, load_meta, load_split
from litpipe.errors import ConfigError, StageError
from litpipe.io import atomic_path, read_json, write_json
from litpipe.models.lit_model import MONITOR, LitModel
from litpipe.observe.monitors import ACTIVATION_COLUMNS
from litpipe.observe.tensorboard import add_figure, add_log_file, describe_run
from litpipe.preemption import Preempted, Preemption, discard, fingerprint, resume_point
from litpipe.training import TrainingRun, build_model, fit_trainer, make_trainer, seed_everything, swa_start_epoch
from litpipe.models.zoo import check_params as check  # cli.py runs it before any work

log = logging.getLogger(__name__)

RUN_PARTS = ("checkpoint", "results", "tensorboard")  # paths.FitRun.outputs, named


def run(params: Params, seed: int | None = None) -> None:
    """The fit of every seed of replicates.seeds: the first seed's in this process, the others' as parts
    beside it (fanout.py: replicates.n_workers fits at once); with `seed`, that seed's fit alone (a cluster job
    of its own). If the first seed's fit fails or is preempted, or a signal comes after it, the others stop
    at an epoch's end, saving what a re-run resumes from."""
    seeds = params.replicates.seeds
    if seed is not None and seed not in seeds:
        raise StageError(f"--seed {seed} is not one of replicates.seeds {seeds}")
    rank_zero = rank_zero_only.rank == 0  # DDP ranks re-run the command: only the first process manages the runs
    if rank_zero and seed in (None, seeds[0]):  # the stage's own run, under either engine
        keep_only_replicates_of(seeds)
    if seed is not None or len(seeds) == 1 or not rank_zero:
        train(params, seeds[0] if seed is None else seed)
        return
    if params.train.num_nodes > 1:  # the other seeds would be processes of this node alone
        raise StageError(
            f"replicates.seeds {seeds} with train.num_nodes {params.train.num_nodes}: fit the seeds as jobs of "
            "their own (snakemake --profile slurm), or one at a time with `litpipe fit --seed S`"
        )
    distributed = params.train.devices * params.train.num_nodes > 1  # a fit takes every device: one at a time
    slots = 1 if distributed else min(params.replicates.n_workers, len(seeds))
    others = [fanout.fit_seed(other, seeds) for other in seeds[1:]]
    log.info("fitting seeds %s: %d at once", seeds, slots)
    with fanout.Launcher(others, slots, hold_first=True) as launcher:
        late_signal = train(params, seeds[0], label=f"seed {seeds[0]}: ", cpus=launcher.first_share)
        launcher.first_done(late_signal)
    if launcher.signal:
        raise StageError(
            f"fit stopped by {launcher.signal}: {'; '.join(launcher.failed)}; run the stage again to resume"
        )
    if launcher.failed:
        raise StageError(f"{'; '.join(launcher.failed)}; the fits that finished are kept, run the stage again")


def train(params: Params, seed: int, label: str = "", cpus: list[int] | None = None) -> str | None:
    """Train with `seed` and the searched params, then write its run (paths.fit_run). Returns the preemption
    signal that came after training, while the results were written (the fit finished them), if one did."""
    run_paths = paths.fit_run(seed, params.replicates.seeds)
    searched = read_json(paths.SEARCH_BEST)["params"]
    try:
        params = params.override({**searched, "seed": seed})
    except ConfigError as error:
        raise StageError(f"{paths.SEARCH_BEST}: {error}; run the search again") from None
    if cpus:
        resources.use_cpus(cpus)
    # Each seed's checkpoint has its own name in models/replicates: the others there are no stale files.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    seed_everything(seed)
    meta, data = load_meta(), PreparedData.from_params(params)
    model = build_model(params, meta)
    identity = fingerprint(params, meta)
    probe = load_split("val").head(params.observe.probe_size).x
    session = fit_trainer(params, probe, run_paths, identity=identity, label=label)
    provenance = describe_run(session.tensorboard, params, model)
    try:
        session.trainer.fit(model, datamodule=data, ckpt_path=resume_point(identity, run_paths), weights_only=True)
    except Preempted as stop:
        again = "run the stage again to resume" if run_paths.resume.exists() else "run the stage again"
        raise StageError(f"fit preempted by {stop}; {again}") from None
    if not session.trainer.is_global_zero:
        return None  # under DDP the first process writes the results
    log.info(
        "%strained %d epochs; testing its checkpoint and writing its results", label, session.trainer.current_epoch
    )
    discard(run_paths)
    return write_results(params, session, data, run_paths, {"searched_params": searched, **provenance}, label)


def write_results(
    params: Params, session: TrainingRun, data: PreparedData, run: paths.FitRun, described: dict, label: str
) -> str | None:
    """The run's results: its checkpoint's test score (for HPARAMS; the test stage re-checks it in a fresh
    process), history, activations, curves, metrics and summary; the preemption signal that came meanwhile."""
    trainer, tensorboard, history = session.trainer, session.tensorboard, session.history
    preemption = next(callback for callback in trainer.callbacks if isinstance(callback, Preemption))
    score = session.score
    test_score = test_score_of_checkpoint(params, data, tensorboard, run.checkpoint, preemption, score)

    table = pd.DataFrame(history.rows)
    run.results.mkdir(parents=True, exist_ok=True)
    with atomic_path(run.history) as tmp:
        table.to_csv(tmp, index=False)
    rows = [row for monitor in session.monitors for row in monitor.activation_rows]
    with atomic_path(run.activations) as tmp:
        pd.DataFrame(rows, columns=ACTIVATION_COLUMNS).to_csv(tmp, index=False)
    best, swa_start = history.best(), swa_start_epoch(params)
    figure = plots.training_curves(table, best["epoch"], best[MONITOR], swa_start, score)
    add_figure(tensorboard, "curves", figure, trainer.global_step)
    plots.save(figure, run.curves)

    metrics = {
        "best_epoch": int(best["epoch"]),
        "best_val_loss": best[MONITOR],
        f"best_val_{score}": best[f"val/{score}"],
        "epochs": len(table),
    }
    write_json(run.metrics, metrics)
    write_json(
        run.summary,
        {
            "seed": params.seed,
            **metrics,
            f"test_{score}_in_fit": test_score,
            "params": {"model": params.model.model_dump(), "optim": params.optim.model_dump()},
            "swa_start_epoch": swa_start,
            # The average takes epoch swa_start's weights before that epoch's validation.
            "checkpoint_is_averaged": best["epoch"] >= swa_start,
            "early_stopped": session.early_stopping.stopped_epoch > 0,
            **described,
        },
    )
    log.info(
        "%sbest epoch %d: val/loss %.4f, val/%s %.4f", label, best["epoch"], best[MONITOR], score, best[f"val/{score}"]
    )
    add_log_file(tensorboard, run.log)
    session.end_session(test_score)
    if preemption.signal:
        log.warning("%s%s came after training: the fit finished its results", label, preemption.signal)
    return preemption.signal


def keep_only_replicates_of(seeds: list[int]) -> None:
    """The replicate directories (declared outputs) as this run leaves them: the entries of these seeds only,
    so a seed dropped from replicates.seeds leaves nothing behind, and in each a map of where every seed's run
    is (paths.REPLICATES_INDEX): a reader finds the first seed's outside, and DVC warns of an empty output."""
    runs = {seed: paths.fit_run(seed, seeds) for seed in seeds}
    index = {str(seed): {name: str(path) for name, path in zip(RUN_PARTS, run.outputs)} for seed, run in runs.items()}
    current = {path for run in list(runs.values())[1:] for path in run.outputs}
    for directory in paths.REPLICATE_DIRS:
        directory.mkdir(parents=True, exist_ok=True)
        for entry in directory.iterdir():
            if entry not in current:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        write_json(directory / paths.REPLICATES_INDEX, {"seeds": seeds, "runs": index})


def test_score_of_checkpoint(
    params: Params, data: PreparedData, tensorboard, checkpoint: Path, preemption: Preemption, score: str
) -> float:
    """The checkpoint's test score (accuracy, or RMSE), for the HPARAMS table. The fit's `preemption` keeps the
    signals: Lightning's own SIGTERM handling would stop this test."""
    model = LitModel.from_checkpoint(checkpoint)
    # Checkpointing on: Lightning takes the preemption callback for a checkpoint callback (it writes none here).
    trainer = make_trainer(params, logger=tensorboard, callbacks=[preemption], enable_checkpointing=True)
    (result,) = trainer.test(model, datamodule=data, verbose=False)
    log.info("test %s of the checkpoint: %.4f", plots.SCORES[score][1], result[f"test/{score}"])
    return result[f"test/{score}"]
