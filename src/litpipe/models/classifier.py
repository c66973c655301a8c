"""The LightningModule: normalisation, network, losses, metrics, Adam + ReduceLROnPlateau."""

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from litpipe.config import Params
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

    @classmethod
    def from_params(cls, params: Params, meta: dict[str, Any]) -> "Classifier":
        return cls(
            **params.model.model_dump(),
            input_shape=meta["input_shape"],
            num_classes=meta["num_classes"],
            mean=meta["mean"],
            std=meta["std"],
            lr=params.optim.lr,
            weight_decay=params.optim.weight_decay,
            plateau_factor=params.optim.plateau_factor,
            plateau_patience=params.optim.plateau_patience,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.float() - self.mean) / self.std)

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
                logits = self(x)
        finally:
            self.train(was_training)
            for hook in hooks:
                hook.remove()
        return logits, captured

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        # Under DDP each rank trains on its own shard (averaged across ranks); evaluation sees all data.
        self.log_dict(
            {f"{split}/loss": loss, f"{split}/acc": acc},
            on_step=False,
            on_epoch=True,
            batch_size=len(y),
            sync_dist=split == "train",
        )
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=hp.plateau_factor, patience=hp.plateau_patience
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}
