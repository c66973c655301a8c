"""fit: final training with the best searched params, early stopping and weight averaging, once per seed
of replicates.seeds.

The first seed's run is models/best.ckpt, results/fit and tb/fit; each further seed's is
models/replicates/seed-S.ckpt, results/replicates/seed-S and tb/replicates/seed-S (paths.fit_run).

A run's checkpoint holds the weights with the lowest validation loss; once averaging has started
those are the averaged weights, which are also the ones validated (see training.StochasticWeightAveraging).
Early stopping may only stop training once the average has been validated for a full patience
window, so it can never silently discard the average. Its TensorBoard run is an HPARAMS session
with the same columns as the search trials (its seed among them), plus the test accuracy of the
saved checkpoint.
"""

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import warnings
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from litpipe import paths, plots, resources, training
from litpipe.config import Params
from litpipe.data.prepared import PreparedData, load_meta, load_split
from litpipe.errors import ConfigError, StageError
from litpipe.io import atomic_path, read_json, write_json
from litpipe.models.classifier import MONITOR, Classifier
from litpipe.observe.monitors import ACTIVATION_COLUMNS
from litpipe.observe.tensorboard import add_figure, add_log_file, describe_run
from litpipe.preemption import Preempted, Preemption, discard, fingerprint, resume_point
from litpipe.training import (
    StochasticWeightAveraging,
    TrainingRun,
    build_model,
    make_trainer,
    seed_everything,
)

log = logging.getLogger(__name__)

RUN_PARTS = ("checkpoint", "results", "tensorboard")  # paths.FitRun.outputs, named


def run(params: Params, seed: int | None = None) -> None:
    """The fit of every seed of replicates.seeds: the first seed's in this process, the others' as `litpipe
    fit --seed S` processes beside it (replicates.n_workers fits at once); with `seed`, that seed's fit alone
    (a cluster job of its own)."""
    seeds = params.replicates.seeds
    if seed is not None and seed not in seeds:
        raise StageError(f"--seed {seed} is not one of replicates.seeds {seeds}")
    rank_zero = rank_zero_only.rank == 0  # DDP ranks re-run the command: only the first process manages the runs
    if rank_zero and seed in (None, seeds[0]):  # the stage's own run, under either engine
        keep_only_replicates_of(seeds)
    if seed is not None or len(seeds) == 1 or not rank_zero:
        fit(params, seeds[0] if seed is None else seed)
        return
    if params.train.num_nodes > 1:  # the other seeds would be processes of this node alone
        raise StageError(
            f"replicates.seeds {seeds} with train.num_nodes {params.train.num_nodes}: fit the seeds as jobs of "
            "their own (snakemake --profile slurm), or one at a time with `litpipe fit --seed S`"
        )
    with Replicates(params, seeds[1:]) as others:
        late_signal = fit(params, seeds[0], label=f"seed {seeds[0]}: ", cpus=others.first_share)
        others.first_done(late_signal)


def fit(params: Params, seed: int, label: str = "", cpus: list[int] | None = None) -> str | None:
    """Train with `seed` and write its run (paths.fit_run): checkpoint, history, curves, summary, TensorBoard.
    Returns the preemption signal that came after training, while the results were written (the fit finished
    them), if one did."""
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
    session = assemble(params, probe, run_paths, identity=identity, label=label)
    trainer, tensorboard, history = session.trainer, session.tensorboard, session.history
    swa_start = swa_start_epoch(params)
    provenance = describe_run(tensorboard, params, model)
    try:
        trainer.fit(model, datamodule=data, ckpt_path=resume_point(identity, run_paths), weights_only=True)
    except Preempted as stop:
        again = "run the stage again to resume" if run_paths.resume.exists() else "run the stage again"
        raise StageError(f"fit preempted by {stop}; {again}") from None
    if not trainer.is_global_zero:
        return None  # under DDP the first process writes the results
    log.info("%strained %d epochs; testing its checkpoint and writing its results", label, trainer.current_epoch)
    discard(run_paths)
    preemption = next(callback for callback in trainer.callbacks if isinstance(callback, Preemption))
    test_acc = test_accuracy_of_checkpoint(params, data, tensorboard, run_paths.checkpoint, preemption)

    table = pd.DataFrame(history.rows)
    run_paths.results.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_paths.history) as tmp:
        table.to_csv(tmp, index=False)
    rows = [row for monitor in session.monitors for row in monitor.activation_rows]
    with atomic_path(run_paths.activations) as tmp:
        pd.DataFrame(rows, columns=ACTIVATION_COLUMNS).to_csv(tmp, index=False)
    best = history.best()
    figure = curves_figure(table, best, swa_start)
    add_figure(tensorboard, "curves", figure, trainer.global_step)
    plots.save(figure, run_paths.curves)

    metrics = {
        "best_epoch": int(best["epoch"]),
        "best_val_loss": best[MONITOR],
        "best_val_acc": best["val/acc"],
        "epochs": len(table),
    }
    write_json(run_paths.metrics, metrics)
    write_json(
        run_paths.summary,
        {
            "seed": seed,
            **metrics,
            "test_acc_in_fit": test_acc,
            "searched_params": searched,
            "params": {"model": params.model.model_dump(), "optim": params.optim.model_dump()},
            "swa_start_epoch": swa_start,
            # The average is first updated at the end of epoch swa_start and validated from the next epoch.
            "checkpoint_is_averaged": best["epoch"] > swa_start,
            "early_stopped": session.early_stopping.stopped_epoch > 0,
            **provenance,
        },
    )
    log.info("%sbest epoch %d: val/loss %.4f, val/acc %.4f", label, best["epoch"], best[MONITOR], best["val/acc"])
    add_log_file(tensorboard, run_paths.log)
    session.end_session(test_acc)
    if preemption.signal:
        log.warning("%s%s came after training: the fit finished its results", label, preemption.signal)
    return preemption.signal


def assemble(
    params: Params,
    probe: torch.Tensor,
    run: paths.FitRun,
    callbacks: Sequence[Callback] = (),
    identity: str = "",
    label: str = "",
) -> TrainingRun:
    """The fit's Trainer: the shared training run plus weight averaging, the best checkpoint and
    preemption, whose resume checkpoint carries `identity` (`litpipe bench` times exactly this)."""
    checkpoint = ModelCheckpoint(
        dirpath=run.checkpoint.parent,
        filename=run.checkpoint.stem,
        monitor=MONITOR,
        mode="min",
        save_top_k=1,
        enable_version_counter=False,
        # Save right after validation: at train-epoch end the average has already absorbed this
        # epoch's weights and would no longer be the weights that were validated.
        save_on_train_epoch_end=False,
    )
    swa_start = swa_start_epoch(params)
    return training.assemble(
        params,
        run.run_name,
        probe,
        params.train.max_epochs,
        # Preemption last: its checkpoint must come after every other callback's epoch-end work.
        callbacks=[StochasticWeightAveraging(swa_start), checkpoint, *callbacks, Preemption(identity, run)],
        label=label,
        distributed=True,
        enable_checkpointing=True,
        min_epochs=min(params.train.max_epochs, swa_start + 1 + params.train.early_stopping_patience),
    )


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


class Replicates:
    """The fits of further seeds, each a `litpipe fit --seed S` process, started as slots free up. There are
    replicates.n_workers slots (one under DDP, whose fit takes every device), each with its share of the cores
    and a GPU round-robin; the first seed's fit in this process holds slot 0 until `first_done`. If that fit
    fails or is preempted, or a preemption signal comes after it, the others are stopped with SIGTERM, so they
    save what a re-run resumes from."""

    def __init__(self, params: Params, seeds: list[int]) -> None:
        distributed = params.train.devices * params.train.num_nodes > 1
        self.slots = 1 if distributed else min(params.replicates.n_workers, len(seeds) + 1)
        self.shares, self.gpus = resources.cpu_shares(self.slots), resources.visible_gpus()
        self.seeds = params.replicates.seeds
        self.pending = deque(seeds)
        self.running: dict[int, tuple[int, subprocess.Popen]] = {}
        self.failed: list[str] = []
        self.signal: str | None = None
        self._first = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._schedule, name="replicates", daemon=True)

    @property
    def first_share(self) -> list[int] | None:
        return self.shares[0] if self.slots > 1 else None  # alone, the fit keeps every core it was given

    def first_done(self, late_signal: str | None = None) -> None:
        """The first seed's fit is over: its slot is free, and SIGTERM or SIGUSR1 to this process (which its
        fit handled until now) stops the others; so does `late_signal`, one its fit received after training."""
        for signum in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(signum, self._interrupted)
        if late_signal:
            self._interrupted(signal.Signals[late_signal], None)
        self._first.set()

    def _interrupted(self, signum: int, frame) -> None:
        self.signal = signal.Signals(signum).name
        self._stop.set()

    def __enter__(self) -> "Replicates":
        log.info("fitting seeds %s: %d at once", self.seeds, self.slots)
        self._thread.start()
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is not None:
            self._stop.set()
        self._first.set()
        # In steps: Python runs signal handlers in the main thread only, and a signal that another thread of
        # this process took (the kernel may hand it to any) would wait until this thread runs Python again.
        while self._thread.is_alive():
            self._thread.join(0.2)
        if error_type is not None:
            return
        if self.signal:
            raise StageError(f"fit stopped by {self.signal}: {'; '.join(self.failed)}; run the stage again to resume")
        if self.failed:
            raise StageError(f"{'; '.join(self.failed)}; the fits that finished are kept, run the stage again")

    def _schedule(self) -> None:
        stopping = False
        while self.pending or self.running:
            for slot, (seed, process) in list(self.running.items()):
                if process.poll() is not None:
                    del self.running[slot]
                    self._finished(seed, process.returncode)
            if self._stop.is_set() and not stopping:
                stopping = True
                self.pending.clear()
                for seed, process in self.running.values():
                    log.info("stopping the fit of seed %d", seed)
                    process.send_signal(signal.SIGTERM)
            busy = set(self.running) | (set() if self._first.is_set() else {0})
            for slot in range(self.slots):
                if self.pending and slot not in busy:
                    self._start(self.pending.popleft(), slot)
            self._stop.wait(0.2)

    def _start(self, seed: int, slot: int) -> None:
        env = {**os.environ, **resources.worker_environment(slot, self.shares[slot], self.gpus)}
        command = [sys.executable, "-m", "litpipe.cli", "fit", "--seed", str(seed)]
        # Its errors go with its progress: the stage's one error line on stderr is this process's.
        self.running[slot] = (seed, subprocess.Popen(command, env=env, stderr=subprocess.STDOUT))
        log.info("seed %d: fit started (pid %d, cores %s)", seed, self.running[slot][1].pid, self.shares[slot])

    def _finished(self, seed: int, code: int) -> None:
        if code == 0:
            log.info("seed %d: fit finished", seed)
            return
        log_file = paths.fit_run(seed, self.seeds).log
        where = paths.failed_log_file(log_file) if paths.failed_log_file(log_file).exists() else log_file
        self.failed.append(f"the fit of seed {seed} exited with {resources.exit_reason(code)} (see {where})")
        log.warning("%s", self.failed[-1])


def swa_start_epoch(params: Params) -> int:
    return max(0, round(params.train.swa_epoch_start * params.train.max_epochs) - 1)


def test_accuracy_of_checkpoint(
    params: Params, data: PreparedData, tensorboard, checkpoint: Path, preemption: Preemption
) -> float:
    """Test accuracy of the checkpoint, for the HPARAMS table; the test stage re-checks it in a fresh process.
    The fit's `preemption` keeps the signals: Lightning's own SIGTERM handling would stop this test."""
    model = Classifier.from_checkpoint(checkpoint)
    trainer = make_trainer(params, logger=tensorboard, callbacks=[preemption])
    (result,) = trainer.test(model, datamodule=data, verbose=False)
    log.info("test accuracy of the checkpoint: %.4f", result["test/acc"])
    return result["test/acc"]


def curves_figure(table: pd.DataFrame, best: dict[str, float], swa_start: int):
    fig = plots.figure(10, 4)
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = table["epoch"] + 1  # counted from 1, as the logs count them
    for split in ("train", "val"):
        loss_ax.plot(epochs, table[f"{split}/loss"], label=split)
        acc_ax.plot(epochs, table[f"{split}/acc"], label=split)
    loss_ax.scatter([best["epoch"] + 1], [best[MONITOR]], color="tab:red", zorder=3, label="lowest val/loss")
    for ax in (loss_ax, acc_ax):
        # The average is first updated after epoch swa_start + 1 and validated from the next one.
        ax.axvline(swa_start + 1.5, color="grey", linestyle=":", label="averaging starts")
        ax.set_xlabel("epoch")
        ax.legend()
    loss_ax.set(ylabel="cross-entropy", title="Loss", yscale="log")
    acc_ax.set(ylabel="accuracy", title="Accuracy")
    return fig
