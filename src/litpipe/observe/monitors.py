"""Training monitors: gradient norms, parameter histograms, device statistics, activations.

One callback runs every monitor that params.observe switches on: Lightning calls each hook of each
callback on every step, so four callbacks would cost four times the dispatch of one. Each monitor is
throttled (every `log_every_n_steps` optimizer steps, or once per epoch), reads the device with one
host synchronisation, and skips non-finite values with a warning instead of corrupting the plots.
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

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
ACTIVATION_COLUMNS = ("epoch", "layer", "mean", "std", "dead_fraction", "q05", "q25", "q50", "q75", "q95", "max")
HISTOGRAM_VALUES = 8192  # at most, per histogram
HISTOGRAM_BINS = 64  # TensorBoard's default ("tensorflow", ~1,500 edges) costs three times as much to write


def monitors(params: Params, probe: torch.Tensor) -> list["Monitors"]:
    """The monitors that params.observe switches on, as one callback (none when all are off), for a run
    whose loggers include TensorBoard."""
    observe = params.observe
    if not (observe.gradient_norms or observe.histograms or observe.device_stats or observe.activations):
        return []
    monitor = Monitors(
        every=observe.log_every_n_steps,
        gradient_norms=observe.gradient_norms,
        histograms=observe.histograms,
        device_stats=observe.device_stats,
        probe=probe if observe.activations else None,
    )
    return [monitor]


class Monitors(Callback):
    """Gradient norms (per layer and total, before the optimizer step) and device statistics every `every`
    steps; parameter histograms and activations on a fixed probe batch once per epoch.

    `activation_rows` keeps the activation numbers for the analysis stage (and in checkpoints, so a
    resumed fit keeps its earlier epochs). A unit (a feature, or a channel of a conv block) is dead when
    it is zero for every probe image.
    """

    def __init__(
        self, every: int, gradient_norms: bool, histograms: bool, device_stats: bool, probe: torch.Tensor | None
    ) -> None:
        self.every = every
        self.gradient_norms, self.histograms, self.device_stats = gradient_norms, histograms, device_stats
        self.probe = probe
        self.activation_rows: list[dict[str, float | str | int]] = []

    def state_dict(self) -> dict:
        return {"activation_rows": self.activation_rows}

    def load_state_dict(self, state_dict: dict) -> None:
        self.activation_rows = list(state_dict["activation_rows"])

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        # Per optimizer step, not per batch: a training batch may hold several steps (models/lit_model.py).
        if trainer.global_step % self.every:
            return
        if self.gradient_norms:
            _log_finite(trainer, gradient_norms(pl_module), "gradient norms")
        if self.device_stats:
            _log_finite(trainer, device_stats(pl_module.device), "device statistics")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tensorboard = _tensorboard(trainer)
        if self.histograms and tensorboard is not None:
            parameter_histograms(tensorboard, pl_module, trainer.current_epoch)
        if self.probe is not None:
            self._record_activations(trainer, pl_module, tensorboard)

    def _record_activations(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, tensorboard: TensorBoardLogger | None
    ) -> None:
        epoch, step = trainer.current_epoch, trainer.global_step
        metrics: dict[str, float] = {}
        _, activations = pl_module.forward_with_activations(self.probe.to(pl_module.device))
        for layer, values in activations.items():
            row = activation_stats(values)
            self.activation_rows.append({"epoch": epoch, "layer": layer, **row})
            metrics.update({f"activations/{layer}/{key}": row[key] for key in ("mean", "std", "dead_fraction")})
            if tensorboard is not None and all(math.isfinite(v) for v in row.values()):
                tensorboard.experiment.add_histogram(
                    f"activations/{layer}", _subsample(values).cpu(), step, bins=HISTOGRAM_BINS
                )
        _log_finite(trainer, metrics, "activation statistics")


def gradient_norms(module: torch.nn.Module) -> dict[str, float]:
    """L2 norm of the gradient of each layer and of the whole model: one fused kernel, one host sync."""
    named = [(name.rpartition(".")[0], p.grad) for name, p in module.named_parameters() if p.grad is not None]
    if not named:
        return {}
    squares = torch.stack(torch._foreach_norm([grad for _, grad in named])).float().square().tolist()
    per_layer: dict[str, float] = {}
    for (layer, _), square in zip(named, squares):
        per_layer[layer] = per_layer.get(layer, 0.0) + square
    norms = {f"grad_norm/{layer}": math.sqrt(value) for layer, value in per_layer.items()}
    norms["grad_norm/total"] = math.sqrt(sum(per_layer.values()))
    return norms


def parameter_histograms(tensorboard: TensorBoardLogger, module: torch.nn.Module, epoch: int) -> None:
    """A histogram of each parameter (subsampled), copied to the host in one transfer."""
    named = list(module.named_parameters())
    finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in named]).tolist()
    samples = [_subsample(p) for _, p in named]
    on_host = torch.cat(samples).cpu().split([len(s) for s in samples])
    for (name, _), ok, values in zip(named, finite, on_host):
        if ok:
            tensorboard.experiment.add_histogram(f"params/{name}", values, epoch, bins=HISTOGRAM_BINS)
        else:
            log.warning("parameter %s has non-finite values at epoch %d", name, epoch)


def device_stats(device: torch.device) -> dict[str, float]:
    """GPU memory and utilisation on CUDA; CPU load and memory otherwise (and as well)."""
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


def activation_stats(values: torch.Tensor) -> dict[str, float]:
    """Mean, std, dead fraction, quantiles and max of a block's output, computed on the device, one sync."""
    values = values.float()
    flat = values.flatten()
    per_unit = values.transpose(0, 1).flatten(1)  # units (features or channels) x everything else
    quantiles = torch.quantile(_subsample(flat, 100_000), torch.tensor(QUANTILES, device=flat.device))
    numbers = torch.cat(
        [
            torch.stack([flat.mean(), flat.std(), (per_unit.abs().amax(dim=1) == 0).float().mean()]),
            quantiles,
            flat.max().view(1),
        ]
    ).tolist()
    return dict(zip(ACTIVATION_COLUMNS[2:], numbers))


def _tensorboard(trainer: pl.Trainer) -> TensorBoardLogger | None:
    return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)


def _log_finite(trainer: pl.Trainer, metrics: dict[str, float], what: str) -> None:
    finite = {key: value for key, value in metrics.items() if math.isfinite(value)}
    if len(finite) < len(metrics):
        bad = sorted(set(metrics) - set(finite))
        log.warning("non-finite %s at step %d, not logged: %s", what, trainer.global_step, ", ".join(bad[:5]))
    for logger in trainer.loggers:
        logger.log_metrics(finite, step=trainer.global_step)


def _subsample(values: torch.Tensor, limit: int = HISTOGRAM_VALUES) -> torch.Tensor:
    """An evenly strided sample as float32, on the values' device. TensorBoard's histogram works in
    float64 numpy; on hundreds of thousands of values it slowed the training steps after it two-fold."""
    flat = values.detach().flatten()
    return flat[:: max(1, flat.numel() // limit)].float()
