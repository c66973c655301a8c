"""What `litpipe bench` measures: litpipe's training path against a plain PyTorch loop doing the same work.

In one process, on the same network, data, batch size and device: a hand-written loop (the model's own
optimizer and scheduler, gradient clipping, weight averaging as the fit does it, validation every epoch, best
weights saved when the validation loss improves) and the fit stage's real Trainer (every callback, logger and monitor the fit
uses), then the same with the monitors off. An epoch is timed from its start to the next one's, so
validation and every epoch-end hook count. Each of the fit's epochs is paired with a plain epoch run
just before it, so that both see the same spell of a shared machine; the ratio is the median over the
pairs after each run's first, the seconds the median over those epochs.

`litpipe bench --search N` times `litpipe search` (processes, start-up included, as a user runs it) on
one grid with 1 and with N workers and reports trials per minute.

Everything runs in a temporary directory: the repository's outputs are not touched.
"""

import contextlib
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import Callback

from litpipe import fanout, paths
from litpipe.config import Params
from litpipe.data.prepared import PreparedData, load_meta, load_split
from litpipe.errors import StageError
from litpipe.training import (
    build_model,
    device_type,
    fit_trainer,
    recompute_batch_norm,
    seed_everything,
    swa_start_epoch,
)

log = logging.getLogger(__name__)

MONITORS = ("gradient_norms", "histograms", "device_stats", "activations")


def run(
    params: Params, synthetic: str | None, epochs: int, repeats: int, search_workers: int | None, points: int | None
) -> dict:
    root = Path.cwd()
    with _scratch_directory():
        params = _with_data(params, synthetic, root)
        if search_workers:
            return search_throughput(params, search_workers, points or 2 * search_workers, epochs, repeats)
        return training_speed(params, epochs, repeats)


def training_speed(params: Params, epochs: int, repeats: int) -> dict[str, Any]:
    """Each litpipe variant `repeats` times, in turn, every epoch paired with a plain epoch run just
    before it. A shared machine drifts by more than the differences measured, over seconds; a ratio
    is the median of the ratios within pairs, whose two epochs run seconds apart."""
    params = params.override({"train.max_epochs": epochs, "train.early_stopping_patience": epochs})
    monitors_off = params.override({f"observe.{name}": False for name in MONITORS})
    variants = {"litpipe": params, "litpipe_monitors_off": monitors_off}
    runs: dict[str, list[list[float]]] = {name: [] for name in ("plain", *variants)}
    for repeat in range(repeats):
        for name, variant in variants.items():
            log.info(
                "%s, each epoch paired with a plain one: %d epochs (run %d of %d)", name, epochs, repeat + 1, repeats
            )
            plain, litpipe = litpipe_fit(variant, PlainLoop(params))
            # The first epoch of a run warms up caches and allocators.
            runs["plain"].append(plain[1:])
            runs[name].append(litpipe[1:])

    def epoch_s(name: str) -> float:
        return round(statistics.median(t for run in runs[name] for t in run), 4)

    def ratio(name: str) -> float:
        plain_runs = runs["plain"][list(variants).index(name) :: len(variants)]
        pairs = [t / p for run, plain in zip(runs[name], plain_runs) for t, p in zip(run, plain)]
        return round(statistics.median(pairs), 3)

    data = PreparedData.from_params(params, torch.device(device_type(params)), steps_per_call=1)
    data.setup("fit")
    return {
        "plain_epoch_s": epoch_s("plain"),
        "litpipe_epoch_s": epoch_s("litpipe"),
        "ratio": ratio("litpipe"),
        "litpipe_monitors_off_epoch_s": epoch_s("litpipe_monitors_off"),
        "ratio_monitors_off": ratio("litpipe_monitors_off"),
        "batch_size": params.train.batch_size,
        "steps_per_call": params.train.steps_per_call,
        "steps_per_epoch": len(data.train_dataloader()),
        "train_samples": len(data.splits["train"].y),
        "input_shape": load_meta()["input_shape"],
        "data_path": data.path,
        "epochs_timed": f"{epochs - 1} of {epochs} per run, {repeats} run(s) of each",
        "dataset": params.data.dataset,
        "model": {**params.model.model_dump(), "kwargs": params.model.arguments},  # the network trained
        "precision": params.train.precision,
        "compile": params.train.compile,
        **_environment(data.device),
        "epoch_s": {name: [[round(t, 6) for t in run] for run in values] for name, values in runs.items()},
    }


class PlainLoop:
    """The same training written by hand, train and validation metrics included, one epoch at a time:
    the model's own optimizer and scheduler, gradient clipping, weight averaging from the fit's epoch on (as
    torch.optim.swa_utils shows it: the average updated after the epoch's training, its BatchNorm statistics
    recomputed, and validated in place of the weights being trained), best weights saved when validation
    improves."""

    def __init__(self, params: Params) -> None:
        self.params = params
        self.device = torch.device(device_type(params))
        # Batches of `batch_size`, the loop a researcher would write: the pieces the fit takes its batches in.
        self.data = PreparedData.from_params(params, self.device, steps_per_call=1)
        self.data.setup("fit")
        # Without augmentation, in both loops: the bench compares the training loops, not the augmentation.
        self.model = build_model(params, load_meta(), augment=False).to(self.device)
        (self.optimizer,), self.schedule = self.model.optimizers_for(
            params.train.precision, self.data.steps_per_epoch(), params.train.max_epochs
        )
        self.autocast = _autocast(params.train.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=params.train.precision == "16-mixed")
        self.average = torch.optim.swa_utils.AveragedModel(self.model, use_buffers=True)  # as Lightning's
        self.average_from = swa_start_epoch(params)
        self.best, self.epochs = float("inf"), 0

    def epoch(self) -> float:
        """Train and validate one epoch; its wall time. Its random numbers do not touch the caller's."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            started = _now(self.device)
            self._train()
            validated = self.model
            if self.epochs >= self.average_from:
                self.average.update_parameters(self.model)
                recompute_batch_norm(self.average.module, self.data, self.device)
                validated = self.average.module
            val_loss, val_acc = self._validate(validated)
            self._step_schedules("epoch", val_loss)
            if val_loss < self.best:
                self.best = val_loss
                torch.save(validated.state_dict(), "plain-best.pt")
            seconds = _now(self.device) - started
        self.epochs += 1
        log.info("plain epoch %d: %.2f s, val/loss %.4f, val/acc %.4f", self.epochs, seconds, val_loss, val_acc)
        return seconds

    def _train(self) -> None:
        model, optimizer, scaler, device = self.model, self.optimizer, self.scaler, self.device
        model.train()
        sums = torch.zeros(2, device=device)  # loss x samples and correct predictions, as the module keeps
        for x, y in self.data.train_dataloader():
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with self.autocast:
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            sums += torch.stack((loss.detach() * len(y), (logits.argmax(dim=1) == y).sum().to(loss.dtype)))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.params.train.gradient_clip_val)
            scaler.step(optimizer)
            scaler.update()
            self._step_schedules("step")

    def _step_schedules(self, interval: str, val_loss: float | None = None) -> None:
        for config in self.schedule:
            if config["interval"] == interval:
                config["scheduler"].step(*([val_loss] if interval == "epoch" else []))

    def _validate(self, model: torch.nn.Module) -> tuple[float, float]:
        model.eval()
        loss_sum, correct, count = torch.zeros((), device=self.device), torch.zeros((), device=self.device), 0
        with torch.inference_mode(), self.autocast:
            for x, y in self.data.val_dataloader():
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                logits = model(x)
                loss_sum += F.cross_entropy(logits, y, reduction="sum")
                correct += (logits.argmax(dim=1) == y).sum()
                count += len(y)
        return float(loss_sum) / count, float(correct) / count


def litpipe_fit(params: Params, plain: PlainLoop) -> tuple[list[float], list[float]]:
    """The fit stage's own Trainer, callbacks, loggers and monitors, a plain epoch run before each of its
    epochs: the wall times of the plain epochs and of the fit's."""
    shutil.rmtree(paths.MODELS, ignore_errors=True)  # as a fresh fit finds it
    seed_everything(params.seed)
    clock = EpochClock(plain)
    probe, first = load_split("val").head(params.observe.probe_size).x, paths.fit_run(params.seed, [params.seed])
    run = fit_trainer(params, probe, first, callbacks=[clock])
    run.trainer.fit(build_model(params, load_meta(), augment=False), datamodule=PreparedData.from_params(params))
    return clock.plain_epochs, clock.epochs


class EpochClock(Callback):
    """Wall time from each epoch's start to the next one's (or to the end of training), with a plain epoch
    run (and timed apart) between the two."""

    def __init__(self, plain: PlainLoop) -> None:
        self.plain = plain
        self.plain_epochs: list[float] = []
        self.epochs: list[float] = []
        self.started: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._lap(pl_module)
        self.plain_epochs.append(self.plain.epoch())
        self.started = _now(pl_module.device)

    def on_train_end(self, trainer, pl_module) -> None:
        self._lap(pl_module)
        log.info("litpipe epochs: %s s", ", ".join(f"{t:.2f}" for t in self.epochs))

    def _lap(self, pl_module) -> None:
        if self.started is not None:
            self.epochs.append(_now(pl_module.device) - self.started)


def search_throughput(params: Params, workers: int, points: int, epochs: int, repeats: int = 1) -> dict[str, Any]:
    """Trials per minute of `litpipe search` on one grid of `points` equal-cost trials, 1 worker then N,
    `repeats` times in turn; the speedup is the median of the repeats' own speedups."""
    settings = params.model_dump()
    settings["search"].update(
        enabled=True,
        sampler="grid",
        pruner="none",
        storage="journal",
        max_epochs=epochs,
        # Equal-cost trials, whatever the network: only the weight decay changes.
        space={"optim.weight_decay": [round(1e-5 * (i + 1), 7) for i in range(points)]},
    )
    settings["train"]["early_stopping_patience"] = epochs
    rates: dict[int, list[float]] = {1: [], workers: []}
    for repeat in range(repeats):
        for count in rates:
            settings["search"]["n_workers"] = count
            Params.model_validate(settings)  # the grid as litpipe will read it
            paths.PARAMS.write_text(yaml.safe_dump(settings, sort_keys=False))
            paths.STUDY_JOURNAL.unlink(missing_ok=True)  # a fresh study each time
            log.info(
                "litpipe search: %d trials of %d epochs with %d worker(s) (run %d of %d)",
                points,
                epochs,
                count,
                repeat + 1,
                repeats,
            )
            started = time.perf_counter()
            run_stage("search")
            seconds = time.perf_counter() - started
            rates[count].append(round(points / seconds * 60, 2))
            log.info("%d worker(s): %.1f s, %.2f trials/min", count, seconds, rates[count][-1])
    device = torch.device(device_type(params))
    return {
        "search_trials_per_min": {str(count): statistics.median(values) for count, values in rates.items()},
        "speedup": round(statistics.median(n / one for n, one in zip(rates[workers], rates[1])), 3),
        "runs_trials_per_min": {str(count): values for count, values in rates.items()},
        "workers": workers,
        "trials": points,
        "epochs_per_trial": epochs,
        "batch_size": params.train.batch_size,
        "input_shape": load_meta()["input_shape"],
        "train_samples": load_meta()["sizes"]["train"],
        **_environment(device),
    }


def _with_data(params: Params, synthetic: str | None, root: Path) -> Params:
    """Prepared splits in the scratch directory: synthetic data of MNIST's or CIFAR-10's shape (data/synthetic.py;
    the data.* params apply, data.train_images among them), or the repository's own."""
    if synthetic:
        params = params.override({"data.dataset": f"synthetic_{synthetic}"})
        log.info("preparing synthetic %s-shaped data (data.train_images: %s)", synthetic, params.data.train_images)
        paths.PARAMS.write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))
        run_stage("prepare")
        return params
    if not (root / paths.META).exists():
        raise StageError(
            f"{paths.META} not found: run `litpipe prepare` (or `dvc repro prepare`) first, or use --synthetic"
        )
    paths.PREPARED.parent.mkdir(parents=True)
    paths.PREPARED.symlink_to(root / paths.PREPARED)
    return params


def run_stage(stage: str) -> None:
    """`litpipe <stage>` on the scratch directory's params.yaml, as a user runs it; its output on stderr."""
    with fanout.Launcher([fanout.whole(stage)], slots=1, output=sys.stderr) as launcher:
        pass
    if launcher.failed:
        raise StageError(f"litpipe {stage}: {launcher.failed[0]}")


@contextlib.contextmanager
def _scratch_directory() -> Iterator[None]:
    previous = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="litpipe-bench-") as scratch:
        os.chdir(scratch)
        try:
            yield
        finally:
            os.chdir(previous)


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """What Lightning's precision plugin does around the forward pass."""
    if precision == "32-true":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16-mixed" else torch.float16)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _environment(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "device": f"{device.type} ({name})",
        "cpus": len(os.sched_getaffinity(0)),
        "threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": lightning.__version__,
        },
    }
