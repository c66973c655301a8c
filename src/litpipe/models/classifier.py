"""The LightningModule: normalisation, network, losses, metrics, Adam + ReduceLROnPlateau."""

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from litpipe.models.networks import NETWORKS


class Classifier(pl.LightningModule):
    def __init__(
        self,
        arch: str,
        width: int,
        depth: int,
        dropout: float,
        input_shape: list[int],
        num_classes: int,
        mean: list[float],
        std: list[float],
        lr: float,
        weight_decay: float,
        plateau_factor: float,
        plateau_patience: int,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = NETWORKS[arch](tuple(input_shape), num_classes, width, depth, dropout)
        # Normalisation lives in the model, so a checkpoint is usable on raw uint8 images alone.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.example_input_array = torch.zeros(1, *input_shape, dtype=torch.uint8)
        self._sums: dict[str, torch.Tensor] = {}  # split -> (loss x samples, correct) of this epoch so far
        self._samples: dict[str, int] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(x))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def forward_with_activations(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and the output of every hidden block, in eval mode and without gradients."""
        captured: dict[str, torch.Tensor] = {}
        hooks = [
            block.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out.detach()))
            for name, block in self.net.hidden.items()
        ]
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                # The network's own forward: eager even when training compiled it, so the hooks see every block.
                logits = self.net.forward(self.normalise(x))
        finally:
            self.train(was_training)
            for hook in hooks:
                hook.remove()
        return logits, captured

    # Metrics are summed on the device and logged once per epoch: a `self.log` per step costs more
    # than a step of a small model (Lightning moves its whole result state on every call), and a
    # per-step `.item()` would make the host wait for the device.
    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, split: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        sums = torch.stack((loss.detach() * len(y), (logits.argmax(dim=1) == y).sum().to(loss.dtype)))
        self._sums[split] = self._sums[split] + sums if split in self._sums else sums
        self._samples[split] = self._samples.get(split, 0) + len(y)
        if batch_idx + 1 == self._batches_per_epoch(split):
            self._log_epoch(split)
        return loss

    def _batches_per_epoch(self, split: str) -> int:
        trainer = self.trainer
        if split == "train":
            return trainer.num_training_batches
        return (trainer.num_val_batches if split == "val" else trainer.num_test_batches)[0]

    def _log_epoch(self, split: str) -> None:
        """Log the epoch's means after its last batch: callbacks (History) read them in their epoch-end
        hooks, which Lightning calls before the module's own."""
        loss, acc = self._sums.pop(split) / self._samples.pop(split)
        # Under DDP each rank trains on its own equal shard (means averaged across ranks); evaluation sees all data.
        self.log_dict(
            {f"{split}/loss": loss, f"{split}/acc": acc},
            on_step=False,
            on_epoch=True,
            batch_size=1,
            sync_dist=split == "train",
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
        return self._evaluate(batch, batch_idx, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        return self.optimizers_for(self.trainer.precision)

    def optimizers_for(self, precision: str) -> dict[str, Any]:
        """Adam + ReduceLROnPlateau on val/loss, for training at `precision` (a Lightning precision name)."""
        hp = self.hparams
        # The fused kernel updates every parameter in one call: a third of the time of the per-tensor loop.
        # Lightning's mixed-precision plugin cannot clip a fused optimizer's gradients: there, the
        # multi-tensor kernel. Other devices get torch's default.
        kernel = {"fused": True} if precision == "32-true" else {"foreach": True}
        if self.device.type not in ("cpu", "cuda"):
            kernel = {}
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, **kernel)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=hp.plateau_factor, patience=hp.plateau_patience
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}
