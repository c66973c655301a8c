"""`litpipe bench`: litpipe's training path against a plain PyTorch loop doing the same work.

In one process, on the same network, data, batch size and device: a hand-written loop (the model's own
optimizer and scheduler, gradient clipping, validation every epoch, best weights saved when the
validation loss improves) and the fit stage's real Trainer (every callback, logger and monitor the fit
uses), then the same with the monitors off. An epoch is timed from its start to the next one's, so
validation and every epoch-end hook count; the figure is the median over the epochs after the first.

`litpipe bench --search N` times `litpipe search` (processes, start-up included, as a user runs it) on
one grid with 1 and with N workers and reports trials per minute.

Everything runs in a temporary directory: the repository's outputs are not touched.
"""

import contextlib
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
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

from litpipe import paths
from litpipe.config import Params
from litpipe.data.prepared import PreparedData, load_meta, load_split
from litpipe.errors import StageError
from litpipe.stages import fit, prepare
from litpipe.training import build_model, device_type, seed_everything

log = logging.getLogger(__name__)

MONITORS = ("gradient_norms", "histograms", "device_stats", "activations")


def run(
    params: Params, synthetic: bool, epochs: int, repeats: int, search_workers: int | None, points: int | None
) -> dict:
    root = Path.cwd()
    with _scratch_directory():
        params = _with_data(params, synthetic, root)
        if search_workers:
            return search_throughput(params, search_workers, points or 2 * search_workers, epochs)
        return training_speed(params, epochs, repeats)


def training_speed(params: Params, epochs: int, repeats: int) -> dict[str, Any]:
    """Each variant `repeats` times, in turn (so a slow spell of a shared machine hits all of them)."""
    params = params.override({"train.max_epochs": epochs, "train.early_stopping_patience": epochs})
    monitors_off = params.override({f"observe.{name}": False for name in MONITORS})
    variants = {
        "plain": lambda: plain_loop(params),
        "litpipe": lambda: litpipe_fit(params),
        "litpipe_monitors_off": lambda: litpipe_fit(monitors_off),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(repeats):
        for name, variant in variants.items():
            log.info("%s: %d epochs (run %d of %d)", name, epochs, repeat + 1, repeats)
            times[name] += variant()[1:]  # the first epoch of a run warms up caches and allocators
    plain, litpipe, bare = (statistics.median(times[name]) for name in variants)
    data = PreparedData.from_params(params, torch.device(device_type(params)))
    data.setup("fit")
    return {
        "plain_epoch_s": round(plain, 4),
        "litpipe_epoch_s": round(litpipe, 4),
        "ratio": round(litpipe / plain, 3),
        "litpipe_monitors_off_epoch_s": round(bare, 4),
        "ratio_monitors_off": round(bare / plain, 3),
        "batch_size": params.train.batch_size,
        "steps_per_epoch": len(data.train_dataloader()),
        "train_samples": len(data.splits["train"].y),
        "input_shape": load_meta()["input_shape"],
        "data_path": data.path,
        "epochs_timed": f"{epochs - 1} of {epochs} per run, {repeats} run(s) of each",
        "model": params.model.model_dump(),
        "precision": params.train.precision,
        "compile": params.train.compile,
        **_environment(data.device),
        "epoch_s": {name: [round(t, 4) for t in values] for name, values in times.items()},
    }


def plain_loop(params: Params) -> list[float]:
    """The same training written by hand, train and validation metrics included; the wall time of each epoch."""
    seed_everything(params.seed)
    device = torch.device(device_type(params))
    data = PreparedData.from_params(params, device)
    data.setup("fit")
    model = build_model(params, load_meta()).to(device)
    configured = model.optimizers_for(params.train.precision)
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    autocast = _autocast(params.train.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=params.train.precision == "16-mixed")
    train_batches, val_batches = data.train_dataloader(), data.val_dataloader()
    best, times = float("inf"), []
    for _ in range(params.train.max_epochs):
        started = _now(device)
        model.train()
        train_sums = torch.zeros(2, device=device)  # loss x samples and correct predictions, as the module keeps
        for x, y in train_batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast:
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            train_sums += torch.stack((loss.detach() * len(y), (logits.argmax(dim=1) == y).sum().to(loss.dtype)))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), params.train.gradient_clip_val)
            scaler.step(optimizer)
            scaler.update()
        model.eval()
        loss_sum, correct, count = torch.zeros((), device=device), torch.zeros((), device=device), 0
        with torch.inference_mode(), autocast:
            for x, y in val_batches:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                logits = model(x)
                loss_sum += F.cross_entropy(logits, y, reduction="sum")
                correct += (logits.argmax(dim=1) == y).sum()
                count += len(y)
        val_loss = float(loss_sum) / count
        scheduler.step(val_loss)
        if val_loss < best:
            best = val_loss
            torch.save(model.state_dict(), "plain-best.pt")
        times.append(_now(device) - started)
        log.info(
            "plain epoch %d: %.2f s, val/loss %.4f, val/acc %.4f",
            len(times),
            times[-1],
            val_loss,
            float(correct) / count,
        )
    return times


def litpipe_fit(params: Params) -> list[float]:
    """The fit stage's own Trainer, callbacks, loggers and monitors: the wall time of each epoch."""
    shutil.rmtree(paths.MODELS, ignore_errors=True)  # as a fresh fit finds it
    seed_everything(params.seed)
    clock = EpochClock()
    run = fit.assemble(params, load_split("val").head(params.observe.probe_size).x, callbacks=[clock])
    run.trainer.fit(build_model(params, load_meta()), datamodule=PreparedData.from_params(params))
    return clock.epochs


class EpochClock(Callback):
    """Wall time from each epoch's start to the next one's (or to the end of training)."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.marks.append(_now(pl_module.device))

    def on_train_end(self, trainer, pl_module) -> None:
        self.marks.append(_now(pl_module.device))
        log.info("litpipe epochs: %s s", ", ".join(f"{t:.2f}" for t in self.epochs))

    @property
    def epochs(self) -> list[float]:
        return [end - start for start, end in zip(self.marks, self.marks[1:])]


def search_throughput(params: Params, workers: int, points: int, epochs: int) -> dict[str, Any]:
    """Trials per minute of `litpipe search` on one grid of `points` equal-cost trials, 1 worker then N."""
    settings = params.model_dump()
    settings["search"].update(
        enabled=True,
        sampler="grid",
        pruner="none",
        storage="journal",
        max_epochs=epochs,
        # Equal-cost trials: only the dropout rate changes.
        space={"model.dropout": [round(0.05 + 0.3 * i / max(1, points - 1), 4) for i in range(points)]},
    )
    settings["train"]["early_stopping_patience"] = epochs
    rates = {}
    for count in sorted({1, workers}):
        settings["search"]["n_workers"] = count
        Params.model_validate(settings)  # the grid as litpipe will read it
        paths.PARAMS.write_text(yaml.safe_dump(settings, sort_keys=False))
        (paths.SEARCH / "study.journal").unlink(missing_ok=True)  # a fresh study each time
        log.info("litpipe search: %d trials of %d epochs with %d worker(s)", points, epochs, count)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "litpipe.cli", "search"], capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise StageError(f"litpipe search with {count} workers failed: {done.stderr.strip().splitlines()[-1:]}")
        rates[count] = round(points / seconds * 60, 2)
        log.info("%d worker(s): %.1f s, %.2f trials/min", count, seconds, rates[count])
    device = torch.device(device_type(params))
    return {
        "search_trials_per_min": {str(count): rate for count, rate in rates.items()},
        "speedup": round(rates[workers] / rates[1], 3),
        "workers": workers,
        "trials": points,
        "epochs_per_trial": epochs,
        "batch_size": params.train.batch_size,
        "input_shape": load_meta()["input_shape"],
        "train_samples": load_meta()["sizes"]["train"],
        **_environment(device),
    }


def _with_data(params: Params, synthetic: bool, root: Path) -> Params:
    """Prepared splits in the scratch directory: MNIST-shaped synthetic data, or the repository's own."""
    if synthetic:
        params = params.override({"data.dataset": "synthetic_mnist"})
        log.info("preparing synthetic MNIST-shaped data (60,000 + 10,000 images of 1 x 28 x 28)")
        prepare.run(params)
        return params
    if not (root / paths.META).exists():
        raise StageError(
            f"{paths.META} not found: run `litpipe prepare` (or `dvc repro prepare`) first, or use --synthetic"
        )
    paths.PREPARED.parent.mkdir(parents=True)
    paths.PREPARED.symlink_to(root / paths.PREPARED)
    return params


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


def dumps(result: dict) -> str:
    return json.dumps(result, indent=2)
