"""Training monitors: gradient norms, parameter histograms, device statistics, activations.

Each writes to the run's TensorBoard logger, throttled (every `every` optimizer steps, or once
per epoch), and skips non-finite values with a warning instead of corrupting the plots.
"""

import logging
import math

import lightning.pytorch as pl
import psutil
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from litpipe.config import Params

log = logging.getLogger(__name__)


def monitors(params: Params, probe: torch.Tensor) -> list[Callback]:
    """The monitors that params.observe switches on, for a run whose loggers include TensorBoard."""
    observe = params.observe
    switched = [
        (observe.gradient_norms, lambda: GradientNorms(observe.log_every_n_steps)),
        (observe.histograms, ParameterHistograms),
        (observe.device_stats, lambda: DeviceStats(observe.log_every_n_steps)),
        (observe.activations, lambda: ActivationTracker(probe)),
    ]
    return [make() for on, make in switched if on]


def _tensorboard(trainer: pl.Trainer) -> TensorBoardLogger | None:
    return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)


def _log_finite(trainer: pl.Trainer, metrics: dict[str, float], what: str) -> None:
    finite = {key: value for key, value in metrics.items() if math.isfinite(value)}
    if len(finite) < len(metrics):
        bad = sorted(set(metrics) - set(finite))
        log.warning("non-finite %s at step %d, not logged: %s", what, trainer.global_step, ", ".join(bad[:5]))
    for logger in trainer.loggers:
        logger.log_metrics(finite, step=trainer.global_step)


class GradientNorms(Callback):
    """L2 norm of the gradient of each layer and of the whole model, before the optimizer step."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        if trainer.global_step % self.every:
            return
        squares: dict[str, float] = {}
        for name, parameter in pl_module.named_parameters():
            if parameter.grad is not None:
                layer = name.rpartition(".")[0]
                squares[layer] = squares.get(layer, 0.0) + float(parameter.grad.detach().pow(2).sum())
        norms = {f"grad_norm/{layer}": math.sqrt(value) for layer, value in squares.items()}
        norms["grad_norm/total"] = math.sqrt(sum(squares.values()))
        _log_finite(trainer, norms, "gradient norms")


class ParameterHistograms(Callback):
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tensorboard = _tensorboard(trainer)
        if tensorboard is None:
            return
        for name, parameter in pl_module.named_parameters():
            values = parameter.detach()
            if torch.isfinite(values).all():
                tensorboard.experiment.add_histogram(f"params/{name}", _subsample(values), trainer.current_epoch)
            else:
                log.warning("parameter %s has non-finite values at epoch %d", name, trainer.current_epoch)


class DeviceStats(Callback):
    """GPU memory and utilisation on CUDA; CPU load and memory otherwise (and as well)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        if trainer.global_step % self.every == 0:
            _log_finite(trainer, device_stats(pl_module.device), "device statistics")


def device_stats(device: torch.device) -> dict[str, float]:
    process = psutil.Process()
    stats = {
        "device/cpu_percent": psutil.cpu_percent(),
        "device/ram_used_percent": psutil.virtual_memory().percent,
        "device/process_rss_mib": process.memory_info().rss / 2**20,
    }
    if device.type == "cuda":
        stats["device/gpu_memory_allocated_mib"] = torch.cuda.memory_allocated(device) / 2**20
        stats["device/gpu_memory_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        try:
            stats["device/gpu_utilization_percent"] = float(torch.cuda.utilization(device))
        except (ImportError, RuntimeError):
            pass  # utilisation needs NVML (nvidia-ml-py); memory statistics do not
    return stats


class ActivationTracker(Callback):
    """After each epoch, each hidden block's output on a fixed probe batch: mean, std, dead units, quantiles.

    `rows` keeps the numbers for the analysis stage; TensorBoard gets scalars and a histogram.
    A unit (a feature, or a channel of a conv block) is dead when it is zero for every probe image.
    """

    QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
    COLUMNS = ("epoch", "layer", "mean", "std", "dead_fraction", "q05", "q25", "q50", "q75", "q95", "max")

    def __init__(self, probe: torch.Tensor) -> None:
        self.probe = probe
        self.rows: list[dict[str, float | str | int]] = []

    def state_dict(self) -> dict:  # kept in checkpoints, so a resumed fit keeps the earlier epochs
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict["rows"])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch, step = trainer.current_epoch, trainer.global_step
        tensorboard = _tensorboard(trainer)
        metrics: dict[str, float] = {}
        _, activations = pl_module.forward_with_activations(self.probe.to(pl_module.device))
        for layer, values in activations.items():
            row = activation_stats(values)
            self.rows.append({"epoch": epoch, "layer": layer, **row})
            metrics.update({f"activations/{layer}/{key}": row[key] for key in ("mean", "std", "dead_fraction")})
            if tensorboard is not None and torch.isfinite(values).all():
                tensorboard.experiment.add_histogram(f"activations/{layer}", _subsample(values), step)
        _log_finite(trainer, metrics, "activation statistics")


def _subsample(values: torch.Tensor, limit: int = 8192) -> torch.Tensor:
    """An evenly strided sample, as float32 on the CPU. TensorBoard's histogram works in float64
    numpy; on hundreds of thousands of values it slowed the training steps after it two-fold."""
    flat = values.detach().flatten()
    return flat[:: max(1, flat.numel() // limit)].float().cpu()


def activation_stats(values: torch.Tensor) -> dict[str, float]:
    values = values.float()
    per_unit = values.transpose(0, 1).flatten(1)  # units (features or channels) x everything else
    flat = values.flatten()
    quantiles = torch.quantile(_subsample(flat, 100_000), torch.tensor(ActivationTracker.QUANTILES)).tolist()
    return {
        "mean": float(flat.mean()),
        "std": float(flat.std()),
        "dead_fraction": float((per_unit.abs().amax(dim=1) == 0).float().mean()),
        **{f"q{round(q * 100):02d}": value for q, value in zip(ActivationTracker.QUANTILES, quantiles)},
        "max": float(flat.max()),
    }
