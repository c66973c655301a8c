"""The LightningModule: normalisation, a network from the zoo (models/zoo.py), the task's loss and metrics
(models/tasks.py), and the optimiser and schedule of params.optim (models/optim.py).

A batch from the data module may hold several steps' worth of samples: Lightning's loop costs about
a millisecond per batch (hooks, progress, result bookkeeping), as much as a step of a small model.
Every loop cuts its batch into `batch_size` pieces in the order the samples came, and training takes
one optimizer step per piece (manual optimization), so the numbers are the same however many pieces
a batch holds.
Training pieces may be augmented (litpipe.models.augment): each piece draws its own random numbers just
before its step, so augmentation too gives the same numbers however many pieces a batch holds.
"""

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import SingleDeviceStrategy

from litpipe import checkpoints
from litpipe.errors import ConfigError, StageError
from litpipe.models.augment import augment, check_crop
from litpipe.models import optim, tasks, zoo

MONITOR = "val/loss"  # what the learning-rate schedule, early stopping, checkpoints and the search minimise


class LitModel(pl.LightningModule):
    def __init__(
        self,
        arch: str,
        # Not `kwargs`: Lightning's load_from_checkpoint would pass every hyperparameter under that name.
        net_kwargs: dict[str, Any],
        stem: str,
        input_shape: list[int],
        num_classes: int,  # the network's outputs: the classes, or 1 to regress
        mean: list[float] | None,  # per image channel; None: the inputs are standardised already (tables)
        std: list[float] | None,
        lr: float,
        weight_decay: float,
        plateau_factor: float,
        plateau_patience: int,
        batch_size: int,
        gradient_clip_val: float,
        # Defaults: checkpoints saved before augmentation and the optimiser choice existed load as trained.
        augment_flip: bool = False,
        augment_crop: int = 0,
        optimizer: str = "adam",
        momentum: float = 0.0,
        nesterov: bool = False,
        scheduler: str = "plateau",
        warmup_epochs: int = 0,
        task: str = "classification",
        target_mean: float = 0.0,  # regression: the training split's target, which the network learns standardised
        target_std: float = 1.0,
        loss: str = "auto",
    ) -> None:
        super().__init__()
        check_crop(augment_crop, input_shape)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.task = tasks.make(task, target_mean, target_std, loss)
        self.net = zoo.build(arch, net_kwargs, stem, tuple(input_shape), num_classes)
        # Normalisation lives in the model, so a checkpoint is usable on raw uint8 images alone.
        if mean is not None:
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, *[1] * (len(input_shape) - 1)))
            self.register_buffer("std", torch.tensor(std).view(1, -1, *[1] * (len(input_shape) - 1)))
        else:
            self.mean = self.std = None
        dtype = torch.uint8 if mean is not None else torch.float32
        self.example_input_array = torch.zeros(1, *input_shape, dtype=dtype)
        self._sums: dict[str, torch.Tensor] = {}  # split -> the task's sums of this epoch so far
        self._samples: dict[str, int] = {}
        self._plain_backward = False  # decided when training starts

    @classmethod
    def from_checkpoint(cls, path: Path | str) -> "LitModel":
        """The model in a checkpoint, on the CPU, in eval mode: read with weights_only semantics and checked
        against its checksum (litpipe.checkpoints)."""
        contents = checkpoints.read(path)
        try:
            model = cls(**contents["hyper_parameters"])
            model.load_state_dict(contents["state_dict"])
        except ConfigError as error:  # its network no longer builds (a researcher's module moved or changed)
            raise StageError(f"{path}: {error}") from None
        except (KeyError, TypeError, RuntimeError) as error:
            first = str(error).splitlines()[0]
            raise StageError(f"{path}: not a checkpoint of a litpipe model ({first}); run the fit again") from None
        return model.eval()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this after the callbacks' hooks (weight averaging puts its average in place there).
        checkpoint[checkpoints.DIGEST_KEY] = checkpoints.digest(checkpoint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(x))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() if self.mean is None else (x.float() - self.mean) / self.std

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """What the task's outputs mean (class probabilities, or the target in its units), in eval mode, without
        gradients."""
        return self.task.predict(self.outputs(x))

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The network's outputs (logits, or the standardised target), in eval mode, without gradients."""
        with torch.no_grad():
            return self.eval()(x)

    def forward_with_activations(
        self, x: torch.Tensor, layers: Sequence[str] = (), pooled: bool = False, chunk: int | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and the output of every block (zoo.blocks: the modules `layers` names, or the network's
        blocks), in eval mode and without gradients. `pooled`: each channel of a convolutional map (4 or 5
        dimensions) is averaged over its positions, so a map is one number per channel, and every output is one
        row per sample; `chunk`: that many samples at a time (the pooled outputs of a large split fit in memory
        where the maps would not)."""
        captured: dict[str, list[torch.Tensor]] = {}

        def keep(name: str, out: Any) -> None:
            out = (out[0] if isinstance(out, tuple | list) else out).detach()  # a block may return more than one
            if pooled:
                out = out.flatten(2).mean(2) if out.dim() >= 4 else out.flatten(1)
            captured.setdefault(name, []).append(out)

        hooks = [
            block.register_forward_hook(lambda _m, _i, out, name=name: keep(name, out))
            for name, block in zoo.blocks(self.net, layers).items()
        ]
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                # The network's own forward: eager even when training compiled it, so the hooks see every block.
                logits = torch.cat([self.net.forward(self.normalise(part)) for part in x.split(chunk or len(x))])
        finally:
            self.train(was_training)
            for hook in hooks:
                hook.remove()
        return logits, {name: torch.cat(parts) for name, parts in captured.items()}

    # Metrics are summed on the device and logged once per epoch: a `self.log` per step costs more
    # than a step of a small model (Lightning moves its whole result state on every call), and a
    # per-step `.item()` would make the host wait for the device.
    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        x, y = batch
        out = self(x)
        loss = self.task.loss(out, y)
        sums = self.task.sums(out, y, loss)
        self._sums[split] = self._sums[split] + sums if split in self._sums else sums
        self._samples[split] = self._samples.get(split, 0) + len(y)
        return loss

    def _pieces(self, batch: tuple[torch.Tensor, torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = batch
        return zip(x.split(self.hparams.batch_size), y.split(self.hparams.batch_size))

    def _end_batch(self, batch_idx: int, split: str) -> None:
        if batch_idx + 1 == self._batches_per_epoch(split):
            self._log_epoch(split)

    def _batches_per_epoch(self, split: str) -> int:
        trainer = self.trainer
        if split == "train":
            return trainer.num_training_batches
        return (trainer.num_val_batches if split == "val" else trainer.num_test_batches)[0]

    def _log_epoch(self, split: str) -> None:
        """Log the epoch's means after its last batch: callbacks (History) read them in their epoch-end
        hooks, which Lightning calls before the module's own."""
        means = self.task.means(self._sums.pop(split), self._samples.pop(split))
        # Under DDP each rank trains on its own equal shard (means averaged across ranks); evaluation sees all data.
        # Training and validation reach the loggers through History, at the optimizer step count; Lightning
        # would log them at its batch count, which is not the step axis the monitors use.
        self.log_dict(
            {f"{split}/{name}": value for name, value in means.items()},
            on_step=False,
            on_epoch=True,
            batch_size=1,
            sync_dist=split == "train",
            logger=split == "test",
        )

    def _start_epoch(self, split: str) -> None:
        self._sums.pop(split, None)  # an epoch cut short (max_steps, an interruption) left partial sums
        self._samples.pop(split, None)

    def on_train_epoch_start(self) -> None:
        self._start_epoch("train")

    def on_validation_epoch_start(self) -> None:
        self._start_epoch("val")

    def on_test_epoch_start(self) -> None:
        self._start_epoch("test")

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimizer step per piece of the batch; returns their mean loss."""
        optimizer = self.optimizers()
        losses = []
        for x, y in self._pieces(batch):
            x = augment(x, self.hparams.augment_flip, self.hparams.augment_crop)
            loss = self._evaluate((x, y), "train")
            optimizer.zero_grad(set_to_none=True)
            self._backward(loss)
            optimizer.step()  # gradient clipping in on_before_optimizer_step, as automatic optimization does
            self._step_schedulers("step")
            losses.append(loss.detach())
        self._end_batch(batch_idx, "train")
        return torch.stack(losses).mean()

    def on_train_start(self) -> None:
        self._plain_backward = backward_is_plain_autograd(self.trainer)

    def _backward(self, loss: torch.Tensor) -> None:
        # Lightning's backward makes two callback broadcasts per step (on_before_backward, on_after_backward),
        # 6% of a step of the default MLP at batch 64 on a CPU; where it would be autograd's and nothing
        # listens to them, the plain backward gives the same gradients.
        if self._plain_backward:
            loss.backward()
        else:
            self.manual_backward(loss)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # After the callbacks' hook (the monitors read the raw gradients) and after mixed precision unscaled them.
        if self.hparams.gradient_clip_val:
            self.clip_gradients(optimizer, self.hparams.gradient_clip_val, gradient_clip_algorithm="norm")

    def on_validation_epoch_end(self) -> None:
        # Before the epoch-end callbacks, so that a checkpoint saved there (preemption) holds the stepped schedule.
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self._step_schedulers("epoch")

    def _step_schedulers(self, interval: str) -> None:
        """What Lightning does for automatic optimization: the plateau scheduler after each epoch's
        validation, on the monitored metric; step-interval schedulers (the LR finder installs one) after
        each step."""
        for config in self.trainer.lr_scheduler_configs:
            if config.interval != interval:
                continue
            if isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                config.scheduler.step(self.trainer.callback_metrics[MONITOR])
            else:
                config.scheduler.step()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        for piece in self._pieces(batch):
            self._evaluate(piece, "val")
        self._end_batch(batch_idx, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        for piece in self._pieces(batch):
            self._evaluate(piece, "test")
        self._end_batch(batch_idx, "test")

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[dict[str, Any]]]:
        trainer = self.trainer
        data = trainer.datamodule
        # A datamodule's batches hold several steps; a loader given directly (the sanity check's one batch) one each.
        if data is not None:
            steps = data.steps_per_epoch(trainer.world_size)
        else:
            steps = trainer.estimated_stepping_batches // trainer.max_epochs
        return self.optimizers_for(trainer.precision, steps, trainer.max_epochs)

    def optimizers_for(
        self, precision: str, steps_per_epoch: int, max_epochs: int
    ) -> tuple[list[torch.optim.Optimizer], list[dict[str, Any]]]:
        """The optimiser and schedule of params.optim (models/optim.py), for training at `precision` (a Lightning
        precision name) for `max_epochs` epochs of `steps_per_epoch` optimizer steps."""
        hp = self.hparams
        # The fused kernel updates every parameter in one call: a third of the time of the per-tensor loop.
        # Lightning's mixed-precision plugin cannot clip a fused optimizer's gradients: there, the
        # multi-tensor kernel. Other devices get torch's default.
        kernel = {"fused": True} if precision == "32-true" else {"foreach": True}
        if self.device.type not in ("cpu", "cuda"):
            kernel = {}
        chosen = optim.optimizer(
            hp.optimizer, self.parameters(), hp.lr, hp.weight_decay, hp.momentum, hp.nesterov, kernel
        )
        schedule = optim.schedule(
            chosen, hp.scheduler, hp.warmup_epochs, steps_per_epoch, max_epochs, hp.plateau_factor, hp.plateau_patience
        )
        return [chosen], schedule


def backward_is_plain_autograd(trainer: pl.Trainer) -> bool:
    """Whether Lightning's backward would be `loss.backward()` plus hooks nobody overrides: one device (DDP
    prepares its reducer there), no loss scaling (16-mixed), no callback or module hook on the backward."""
    if not isinstance(trainer.strategy, SingleDeviceStrategy) or getattr(trainer.precision_plugin, "scaler", None):
        return False
    module = type(trainer.lightning_module)
    listeners = [(type(callback), Callback) for callback in trainer.callbacks] + [(module, pl.LightningModule)]
    hooks = ("on_before_backward", "on_after_backward")
    unhooked = all(getattr(cls, hook) is getattr(base, hook) for cls, base in listeners for hook in hooks)
    return unhooked and module.backward is pl.LightningModule.backward
