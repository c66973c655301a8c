"""What every training stage shares: seeding, the Trainer, epoch history, weight averaging; and the Trainers of
a search trial and of the fit (`assemble`, `fit_trainer`), which `litpipe bench` times."""

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, WeightAveraging
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment

from litpipe import paths
from litpipe.config import Params
from litpipe.data.prepared import load_meta
from litpipe.errors import StageError
from litpipe.models.augment import check_crop
from litpipe.models import tasks, weights
from litpipe.models.lit_model import MONITOR, LitModel
from litpipe.observe import wandb
from litpipe.observe.monitors import Monitors, monitors
from litpipe.observe.tensorboard import end_session, hp_metrics, open_run, start_session
from litpipe.preemption import Preemption

if TYPE_CHECKING:
    from litpipe.observe.dvclive import EpochCurves

log = logging.getLogger(__name__)

# `import lightning` sets PYTORCH_NVML_BASED_CUDA_CHECK=1 (so that asking whether CUDA exists does not
# initialise it before a fork). On a machine without a GPU torch then loads the NVML library on every
# `torch.cuda.is_available()`, and Adam asks on every step: ~0.1 ms a step. litpipe never forks a process
# that uses CUDA (DDP starts fresh processes; DataLoader workers stay on the CPU).
os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)


def seed_everything(seed: int) -> None:
    pl.seed_everything(seed, workers=True, verbose=False)


def build_model(params: Params, meta: dict[str, Any], augment: bool = True) -> LitModel:
    """The configured model for the prepared data, starting from model.weights when set (models/weights.py); its
    network compiled when train.compile is on. Its training images are augmented as train.augment_* say, unless
    not `augment`: the sanity overfit check must memorise its one fixed batch as it is, and the LR finder
    measures the plain model's loss curve."""
    check_crop(params.train.augment_crop, meta["input_shape"])  # in every stage, the ones without crops too
    model = LitModel(
        arch=params.model.arch,
        net_kwargs=params.model.arguments,
        stem=params.model.stem,
        input_shape=meta["input_shape"],
        mean=meta.get("mean"),  # tables: None, their features standardised by prepare
        std=meta.get("std"),
        **tasks.of_data(meta),
        loss=params.optim.loss,
        optimizer=params.optim.name,
        lr=params.optim.lr,
        weight_decay=params.optim.weight_decay,
        momentum=params.optim.momentum,
        nesterov=params.optim.nesterov,
        scheduler=params.optim.scheduler,
        warmup_epochs=params.optim.warmup_epochs,
        plateau_factor=params.optim.plateau_factor,
        plateau_patience=params.optim.plateau_patience,
        batch_size=params.train.batch_size,
        gradient_clip_val=params.train.gradient_clip_val,
        augment_flip=augment and params.train.augment_flip,
        augment_crop=params.train.augment_crop if augment else 0,
    )
    if params.model.weights:
        weights.load_into(model.net, params.model.weights)
    if params.train.compile:
        model.net.compile()  # in place: the checkpoint's keys stay those of the plain network
    return model


def make_trainer(params: Params, distributed: bool = False, **overrides: Any) -> pl.Trainer:
    """A deterministic Trainer on the configured accelerator; stages pass what differs (epochs, callbacks,
    logger). One device, except for `distributed` (the fit), which uses train.devices/num_nodes/strategy."""
    train = params.train
    if train.precision == "16-mixed" and device_type(params) != "cuda":
        raise StageError("train.precision: 16-mixed needs a CUDA GPU and none is in use; use 32-true or bf16-mixed")
    settings: dict[str, Any] = dict(
        accelerator=train.accelerator,
        precision=train.precision,
        devices=train.devices if distributed else 1,
        num_nodes=train.num_nodes if distributed else 1,
        strategy=train.strategy if distributed else "auto",
        deterministic=True,
        max_epochs=params.train.max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        # A live bar only where someone watches; batch logs get no carriage-return noise.
        enable_progress_bar=sys.stderr.isatty(),
        num_sanity_val_steps=0,
        log_every_n_steps=params.observe.log_every_n_steps,
        # Under DDP the training batches are already sharded by rank (data/prepared.BatchOrder) and validation and
        # test are whole on every rank: Lightning's own distributed sampler would shard them again.
        use_distributed_sampler=False,
        # Under SLURM, Lightning would requeue the job itself on SIGUSR1, behind the orchestrator's
        # back; litpipe handles the signals (Preemption, the search worker) and the orchestrator re-runs.
        plugins=[SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None,
    )
    settings.update(overrides)
    try:
        return pl.Trainer(**settings)
    except MisconfigurationException as error:  # no such device here, more devices than there are...
        where = f"train.accelerator: {train.accelerator}, train.devices: {settings['devices']}"
        raise StageError(f"{where}: {str(error).splitlines()[0]}") from None


def device_type(params: Params) -> str:
    """The kind of device the training stages run on: "cuda", "mps" or "cpu"."""
    accelerator = params.train.accelerator
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return "cuda" if accelerator == "gpu" else accelerator


class History(Callback):
    """One row of logged metrics per completed epoch, with the learning rate; each row is also logged
    as one plain line, so batch logs show progress without a progress bar's carriage returns.

    The row goes to the loggers at the optimizer step count, the step axis of the monitors (Lightning
    would log at its batch count, and a batch may hold several steps). The learning rate is tagged
    `lr-<Optimizer>`, as Lightning's LearningRateMonitor does (whose hooks would run on every step for
    a once-per-epoch number). `curves` (DVCLive's, observe/dvclive.py) get the rows themselves: an epoch's
    once it is complete, at the start of training those a resumed fit restored, and on an exception what
    the stopped epoch has (a pruned trial's validation)."""

    def __init__(self, label: str = "", curves: Sequence["EpochCurves"] = ()) -> None:
        self.label = label
        self.curves = curves
        self.rows: list[dict[str, float]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for curves in self.curves:  # after the checkpoint's callback states were restored
            curves.write(self.rows)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {"epoch": trainer.current_epoch}
        row.update({k: float(v) for k, v in trainer.callback_metrics.items() if "/" in k})
        row["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        self.rows.append(row)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Training metrics are aggregated after validation ran; complete this epoch's row.
        if self.rows and self.rows[-1]["epoch"] == trainer.current_epoch:
            row = self.rows[-1]
            row.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})
            numbers = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch")
            log.info("%sepoch %d/%d %s", self.label, row["epoch"] + 1, trainer.max_epochs, numbers)
            metrics = {k: v for k, v in row.items() if "/" in k}
            metrics[f"lr-{type(trainer.optimizers[0]).__name__}"] = row["lr"]
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
            for curves in self.curves:
                curves.write(self.rows)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        for curves in self.curves:  # a pruned trial's last validation, the one the pruner judged, too
            curves.write(self.rows)

    def best(self, monitor: str = MONITOR) -> dict[str, float]:
        return min(self.rows, key=lambda row: row[monitor])

    def state_dict(self) -> dict:  # kept in checkpoints, so a resumed fit keeps its earlier epochs
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict["rows"])


class RankRandomness(Callback):
    """Under DDP, each rank's own random numbers for dropout and augmentation, drawn afresh each epoch from (seed,
    epoch, rank). Every rank is seeded alike, so without this they would all draw the same masks for their
    different samples; and a function of the epoch makes a resumed epoch draw what it drew the first time (the
    resume point holds the first rank's generator states only). One process trains as it always has."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            # Distinct for every (seed, epoch, rank) below 2**20 epochs and 2**12 ranks.
            torch.manual_seed((self.seed * 2**20 + trainer.current_epoch) * 2**12 + trainer.global_rank)


class StochasticWeightAveraging(WeightAveraging):
    """Equal-weight average of the weights at the end of each epoch from `start_epoch` on.

    Lightning's WeightAveraging validates and checkpoints the averaged weights. The average takes an epoch's
    weights after its last training batch, before validation: the average validated at epoch e includes
    epoch e (Lightning's epoch-end update comes after validation, so each validation would see the previous
    epoch's average). Batch normalisation's running statistics are then recomputed for the averaged weights
    with a pass over the training split (torch.optim.swa_utils.update_bn): an average of the statistics of
    other weights would not describe them. Before the first update the average is just the initial weights,
    so until then this validates, checkpoints and keeps the weights being trained: whatever stops training
    (early stopping included), the checkpoint holds the weights whose validation loss it records.
    """

    def __init__(self, start_epoch: int) -> None:
        super().__init__()
        self.start_epoch = start_epoch

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch >= self.start_epoch and batch_idx + 1 == trainer.num_training_batches:
            self._average_model.update_parameters(pl_module)
            recompute_batch_norm(self._average_model.module, trainer.datamodule, pl_module.device)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass  # updated after the epoch's last batch instead

    @property
    def started(self) -> bool:
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.started:
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.started:
            super().on_validation_epoch_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self.started:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.started:
            super().on_train_end(trainer, pl_module)


def recompute_batch_norm(model: torch.nn.Module, data: Any, device: torch.device) -> None:
    """BatchNorm running statistics of `model` as one pass over the training split in `batch_size` pieces, in
    order, gives them (update_bn: a cumulative average over the pieces). Nothing to do, and no data read,
    for a network without BatchNorm. Training's random numbers are left as they were."""
    if not any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in model.modules()):
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.optim.swa_utils.update_bn(data.train_in_order(), model, device)


@dataclass
class TrainingRun:
    """A fit's or a search trial's Trainer, with the records a stage writes out of it."""

    trainer: pl.Trainer
    tensorboard: TensorBoardLogger  # its run is an HPARAMS session
    extra_loggers: list[Logger]
    history: History
    early_stopping: EarlyStopping
    monitors: list[Monitors]
    score: str  # the task's metric beside the loss: acc, or rmse (models/tasks.py)

    def end_session(self, test_score: float | None = None) -> dict[str, float]:
        """Close the HPARAMS session with what the run reached (the fit adds its checkpoint's test score) and the
        other loggers; the best epoch's row. Pruned or completed, the session shows it."""
        best = self.history.best(MONITOR) if self.history.rows else {}
        if best:
            values = (best[MONITOR], best[f"val/{self.score}"], test_score)
            columns = hp_metrics(self.score)
            session = {name: value for name, value in zip(columns, values, strict=True) if value is not None}
            end_session(self.tensorboard, session, self.trainer.global_step)
        wandb.finish(self.extra_loggers)
        return best


def assemble(
    params: Params,
    run: str,
    live: Path,
    probe: torch.Tensor,
    max_epochs: int,
    callbacks: Sequence[Callback] = (),
    label: str = "",
    distributed: bool = False,
    **trainer_options: Any,
) -> TrainingRun:
    """The Trainer that the fit and every search trial train with: TensorBoard run tb/<run> (an HPARAMS
    session), DVCLive's epoch curves in `live` and W&B when on, epoch history, early stopping on MONITOR,
    the monitors of params.observe, then the stage's own `callbacks` in their order."""
    from litpipe.observe.dvclive import EpochCurves  # dvclive imports DVC: 0.25 s, for the stages that train only

    tensorboard, extra, curves = open_run(run), wandb.wandb_loggers(params, run), EpochCurves(live)
    score = tasks.of(load_meta()).score
    start_session(tensorboard, params, max_epochs, score)
    history = History(label, curves=[curves])
    early_stopping = EarlyStopping(MONITOR, patience=params.train.early_stopping_patience)
    observers = monitors(params, probe)
    freezing = [weights.FreezeBackbone(params.train.freeze_epochs)] if params.train.freeze_epochs else []
    trainer = make_trainer(
        params,
        distributed=distributed,
        max_epochs=max_epochs,
        callbacks=[*freezing, history, early_stopping, *observers, *callbacks],
        logger=[tensorboard, *extra, curves],
        **trainer_options,
    )
    return TrainingRun(trainer, tensorboard, extra, history, early_stopping, observers, score)


def fit_trainer(
    params: Params,
    probe: torch.Tensor,
    run: paths.FitRun,
    callbacks: Sequence[Callback] = (),
    identity: str = "",
    label: str = "",
) -> TrainingRun:
    """The fit's Trainer: the shared training run plus weight averaging, the best checkpoint (run.checkpoint)
    and preemption, whose resume checkpoint carries `identity`."""
    checkpoint = ModelCheckpoint(
        dirpath=run.checkpoint.parent,
        filename=run.checkpoint.stem,
        monitor=MONITOR,
        mode="min",
        save_top_k=1,
        enable_version_counter=False,
        # Save right after validation, the weights it validated (the average, once averaging has started).
        save_on_train_epoch_end=False,
    )
    swa_start = swa_start_epoch(params)
    return assemble(
        params,
        run.run_name,
        run.live,
        probe,
        params.train.max_epochs,
        # Preemption last: its checkpoint must come after every other callback's epoch-end work.
        callbacks=[
            RankRandomness(params.seed),
            StochasticWeightAveraging(swa_start),
            checkpoint,
            *callbacks,
            Preemption(identity, run, params.train.resume_every_minutes),
        ],
        label=label,
        distributed=True,
        enable_checkpointing=True,
        # Early stopping may only stop once the average has been validated for a full patience window.
        min_epochs=min(params.train.max_epochs, swa_start + 1 + params.train.early_stopping_patience),
    )


def swa_start_epoch(params: Params) -> int:
    """The first epoch whose weights go into the average (counted from 0)."""
    return max(0, round(params.train.swa_epoch_start * params.train.max_epochs) - 1)
