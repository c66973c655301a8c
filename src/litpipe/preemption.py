"""Preemption of the fit, and a resume that ends with the same numbers as a run that never stopped.

On SIGUSR1 (what `sbatch --signal=USR1@120` sends before the time limit) or SIGTERM (scancel, preemption)
the fit saves a full training checkpoint at the end of the epoch in progress and stops with Preempted;
run again, it resumes there. The end of an epoch is the last point a run can resume from as if it had
not stopped: mid-epoch, Lightning cannot fast-forward the epoch's batches, and a checkpoint after the
last batch but before validation makes the resumed run skip that epoch's validation.

What the resumed run needs, and where it comes from:
- weights, optimizer, schedule, loop counters and the callbacks' state (early stopping, the best
  checkpoint's score, history, monitors, the weight average): Lightning's checkpoint;
- the batch order: a function of (seed, epoch), see data/prepared.BatchOrder;
- the random number generators (dropout): saved here, restored right before training resumes;
- the same params and data: a fingerprint, so a checkpoint made with other ones is never resumed.
"""

import hashlib
import json
import logging
import random
import shutil
import signal
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from litpipe import checkpoints, paths
from litpipe.config import Params
from litpipe.io import atomic_path

log = logging.getLogger(__name__)

RESUME_KEY = "litpipe_resume"  # the checkpoint entry this module adds


class Preempted(Exception):
    """Training stopped on a scheduler's signal after saving a checkpoint to resume from."""


class Preemption(Callback):
    """Catches SIGUSR1 and SIGTERM during training and stops at the end of the epoch in progress, after
    saving the run's resume checkpoint (models/resume.ckpt) and a copy of its best checkpoint (orchestrators
    delete a failed job's outputs). Its handlers replace Lightning's for the fit: Lightning's SIGTERM
    handling would stop the loop, even mid-validation, without keeping the progress. After training they stay,
    and the fit passes this callback to the Trainer that tests its checkpoint, so a signal while the fit tests
    and writes its results lets it finish them (and the fit returns it: `signal`).
    Keep it the last callback: its checkpoint must come after every other callback's epoch-end work."""

    def __init__(self, fingerprint: str, run: paths.FitRun) -> None:
        self.fingerprint = fingerprint
        self.run = run
        self.signal: str | None = None
        self._saving = False
        self._restored_rng: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Before Lightning installs its own handlers, which then call this one too: a signal that comes
        # while the fit gets ready is not lost (Lightning alone would stop at the end of the first epoch
        # with SystemExit, exit status 0).
        self._listen()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.signal:  # came before training: there is nothing new to save
            raise Preempted(f"{self.signal} before training started; nothing new to save")
        self._listen()  # on_train_start runs after Lightning installed its handlers: replace them
        if self._restored_rng is not None:  # the last moment before the first resumed batch
            set_random_states(self._restored_rng)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The fit's test of its checkpoint, after training: replace Lightning's handlers again, and forget a
        # SIGTERM they caught since they were installed (this callback's handler had it too), which would
        # stop the test at its next batch.
        self._listen()
        trainer._signal_connector.received_sigterm = False  # Lightning has no public way to clear it

    def _listen(self) -> None:
        for signum in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(signum, lambda received, frame: setattr(self, "signal", signal.Signals(received).name))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.signal:
            return
        self._saving = True
        run = self.run
        if trainer.is_global_zero:
            with atomic_path(run.resume) as tmp:
                trainer.save_checkpoint(tmp)
            if run.checkpoint.exists():
                with atomic_path(run.resume_best) as tmp:
                    shutil.copy2(run.checkpoint, tmp)
        else:
            trainer.save_checkpoint(run.resume)  # collective; only the first process writes
        raise Preempted(f"{self.signal} at epoch {trainer.current_epoch + 1}; saved {run.resume}")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self._saving:  # only the resume checkpoint; the best checkpoint stays weights and training state
            checkpoint[RESUME_KEY] = {"fingerprint": self.fingerprint, "rng": random_states()}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._restored_rng = checkpoint.get(RESUME_KEY, {}).get("rng")


def fingerprint(params: Params, meta: dict[str, Any]) -> str:
    """What a resumed fit must share with the one that stopped: every param, and the prepared data."""
    # The replicate's own seed is params.seed; which other seeds run beside it changes nothing.
    identity = {"params": params.model_dump(exclude={"replicates"}), "data": meta["sha256"]}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def resume_point(fingerprint: str, run: paths.FitRun) -> str | None:
    """The checkpoint of the run's preempted earlier fit with these params and data, its best checkpoint put
    back; None to start afresh. A resume checkpoint of other params or data is set aside, not resumed."""
    if not run.resume.exists():
        return None
    saved = checkpoints.read(run.resume).get(RESUME_KEY, {})
    if saved.get("fingerprint") != fingerprint:
        log.warning("%s was saved with other params or data: starting the fit afresh", run.resume)
        discard(run)
        return None
    if run.resume_best.exists():
        run.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(run.checkpoint) as tmp:
            shutil.copy2(run.resume_best, tmp)
    log.info("resuming the preempted fit from %s", run.resume)
    return str(run.resume)


def discard(run: paths.FitRun) -> None:
    run.resume.unlink(missing_ok=True)
    run.resume_best.unlink(missing_ok=True)


def random_states() -> dict[str, Any]:
    """Every random number generator training may draw from, as tensors and plain values (a checkpoint
    loads with weights_only)."""
    name, key, position, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(key.astype(np.int64)), position, has_gauss, cached),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, key, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(states["python"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])
