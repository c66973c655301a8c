"""Resume points of the fit, and a resume that ends with the same numbers as a run that never stopped.

The fit writes a resume point (models/resume.ckpt) at the end of an epoch:
- every train.resume_every_minutes of training, so that a job killed without warning (SIGKILL: a node
  failure, the OOM killer, `scancel -s KILL`) loses at most that much;
- on SIGUSR1 (what `sbatch --signal=USR1@120` sends before the time limit) or SIGTERM (scancel, preemption),
  after which it stops with Preempted.
Run again, the fit resumes from the last one. The end of an epoch is the last point a run can resume from as
if it had not stopped: mid-epoch, Lightning cannot fast-forward the epoch's batches, and a checkpoint after the
last batch but before validation makes the resumed run skip that epoch's validation. Within the epoch's end,
the resume point comes after early stopping has checked the epoch (Lightning runs the callbacks that monitor a
metric, this one among them, after the others), and none is written when training ends with the epoch anyway.

What the resumed run needs, and where it comes from:
- weights, optimizer, schedule, loop counters and the callbacks' state (early stopping, the best
  checkpoint's score, history, monitors, the weight average): Lightning's checkpoint;
- the best checkpoint itself (orchestrators delete a failed job's outputs): inside the resume point, so the
  two are written in one atomic step;
- whether early stopping has asked to stop (Lightning keeps asking until min_epochs allows it): saved here;
- the batch order: a function of (seed, epoch), see data/prepared.BatchOrder;
- the random number generators (dropout): saved here, restored right before training resumes;
- the same params and data: a fingerprint, so a checkpoint made with other ones is never resumed.
Under DDP every rank takes the same decisions: a signal or a due resume point on any rank counts for all.
"""

import hashlib
import json
import logging
import random
import signal
import time
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint

from litpipe import checkpoints, paths
from litpipe.config import Params
from litpipe.io import atomic_path

log = logging.getLogger(__name__)

RESUME_KEY = "litpipe_resume"  # the checkpoint entry this module adds


class Preempted(Exception):
    """Training stopped on a scheduler's signal after saving a checkpoint to resume from."""


class Preemption(Checkpoint):
    """Writes the run's resume points (see the module's notes) and catches SIGUSR1 and SIGTERM during training.
    Its handlers replace Lightning's for the fit: Lightning's SIGTERM handling would stop the loop, even
    mid-validation, without keeping the progress. After training they stay, and the fit passes this callback to
    the Trainer that tests its checkpoint, so a signal while the fit tests and writes its results lets it finish
    them (and the fit returns it: `signal`).
    A Checkpoint to Lightning: its epoch-end hook runs with early stopping's and after it, and Lightning puts it
    after every other callback, so its checkpoint comes after their epoch-end work."""

    def __init__(self, fingerprint: str, run: paths.FitRun, every_minutes: float = 0) -> None:
        self.fingerprint = fingerprint
        self.run = run
        self.every_seconds = every_minutes * 60  # 0: only on a signal
        self.signal: str | None = None
        self._saving = False
        self._last_saved = 0.0
        self._restored: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Before Lightning installs its own handlers, which then call this one too: a signal that comes
        # while the fit gets ready is not lost (Lightning alone would stop at the end of the first epoch
        # with SystemExit, exit status 0).
        self._listen()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.signal:  # came before training: there is nothing new to save
            raise Preempted(f"{self.signal} before training started; nothing new to save")
        self._listen()  # on_train_start runs after Lightning installed its handlers: replace them
        self._last_saved = time.monotonic()
        if self._restored is not None:  # the last moment before the first resumed batch
            set_random_states(self._restored["rng"])
            trainer.should_stop = self._restored.get("should_stop", False)

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
        if trainer.fit_loop.done:  # training ends with this epoch: the fit writes its results next
            return
        decide = trainer.strategy.reduce_boolean_decision  # True on every rank when true on any
        if decide(self.signal is not None, all=False):
            self._save(trainer)
            raise Preempted(
                f"{self.signal or 'a signal to another rank'} at epoch {trainer.current_epoch + 1}; saved {self.run.resume}"
            )
        due = self.every_seconds > 0 and time.monotonic() - self._last_saved >= self.every_seconds
        if decide(due, all=False):
            started = time.monotonic()
            self._save(trainer)
            self._last_saved = time.monotonic()
            took = self._last_saved - started
            log.info("resume point at epoch %d: %s (%.3f s)", trainer.current_epoch + 1, self.run.resume, took)

    def _save(self, trainer: pl.Trainer) -> None:
        self._saving = True
        try:
            if trainer.is_global_zero:
                with atomic_path(self.run.resume) as tmp:
                    trainer.save_checkpoint(tmp)
            else:
                trainer.save_checkpoint(self.run.resume)  # collective; only the first process writes
        finally:
            self._saving = False

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if not self._saving:  # only the resume point; the best checkpoint stays weights and training state
            return
        best = self.run.checkpoint.read_bytes() if self.run.checkpoint.exists() else b""
        checkpoint[RESUME_KEY] = {
            "fingerprint": self.fingerprint,
            "rng": random_states(),
            "should_stop": trainer.should_stop,
            # As bytes in a tensor: a checkpoint loads with weights_only.
            "best": torch.frombuffer(bytearray(best), dtype=torch.uint8) if best else torch.empty(0, dtype=torch.uint8),
        }

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._restored = checkpoint.get(RESUME_KEY)


def fingerprint(params: Params, meta: dict[str, Any]) -> str:
    """What a resumed fit must share with the one that stopped: every param, and the prepared data."""
    # The replicate's own seed is params.seed; which other seeds run beside it changes nothing, nor how often
    # resume points are written.
    changes_nothing = {"replicates": True, "train": {"resume_every_minutes"}}
    identity = {"params": params.model_dump(exclude=changes_nothing), "data": meta["sha256"]}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def resume_point(fingerprint: str, run: paths.FitRun) -> str | None:
    """The run's last resume point with these params and data, its best checkpoint put back; None to start
    afresh. A resume point of other params or data is set aside, not resumed."""
    if not run.resume.exists():
        return None
    saved = checkpoints.read(run.resume).get(RESUME_KEY, {})
    if saved.get("fingerprint") != fingerprint:
        log.warning("%s was saved with other params or data: starting the fit afresh", run.resume)
        discard(run)
        return None
    if len(saved["best"]):
        with atomic_path(run.checkpoint) as tmp:
            tmp.write_bytes(saved["best"].numpy().tobytes())
    log.info("resuming the fit from %s", run.resume)
    return str(run.resume)


def discard(run: paths.FitRun) -> None:
    run.resume.unlink(missing_ok=True)


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
