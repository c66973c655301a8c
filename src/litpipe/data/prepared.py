"""The prepared splits as device-resident tensors, batched by slicing a random permutation.

A per-sample Dataset + DataLoader costs more than the model itself on data this small (see
DESIGN.md), so each split is one uint8 tensor that lives on the training device.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch

from litpipe import paths
from litpipe.io import read_json


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # uint8, N x C x H x W; the model normalises
    y: torch.Tensor  # int64, N

    def to(self, device: torch.device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))

    def head(self, n: int) -> "Split":
        return Split(self.x[:n], self.y[:n])


def load_split(name: str) -> Split:
    tensors = torch.load(paths.split_file(name), weights_only=True)
    return Split(tensors["x"], tensors["y"])


def load_meta() -> dict[str, Any]:
    return read_json(paths.META)


class Batches:
    """An epoch of (x, y) batches; a new permutation per epoch when shuffling, from a seeded generator.

    Under DDP each of `world` processes takes every world-th sample of the same permutation: disjoint
    shards of equal size (the remainder of n / world is left out), so every rank runs as many steps.
    """

    def __init__(
        self, split: Split, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return -(-(len(self.split.y) // self.world) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.split.y)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        if self.world > 1:
            order = order[: n // self.world * self.world][self.rank :: self.world]
        if self.shuffle or self.world > 1:
            order = order.to(self.split.y.device)
            x, y = self.split.x[order], self.split.y[order]
        else:
            x, y = self.split.x, self.split.y
        for start in range(0, len(y), self.batch_size):
            yield x[start : start + self.batch_size], y[start : start + self.batch_size]


class PreparedData(pl.LightningDataModule):
    """The prepared splits, moved once to the device the trainer runs on."""

    def __init__(self, batch_size: int, seed: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.seed = seed
        self.splits: dict[str, Split] = {}

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        for name in paths.SPLITS:
            if name not in self.splits:
                self.splits[name] = load_split(name).to(device)

    def train_dataloader(self) -> Batches:
        # Validation and test stay whole on every rank: small, and exact without gathering.
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        return Batches(self.splits["train"], self.batch_size, shuffle=True, seed=self.seed, rank=rank, world=world)

    def val_dataloader(self) -> Batches:
        return Batches(self.splits["val"], self.batch_size, shuffle=False)

    def test_dataloader(self) -> Batches:
        return Batches(self.splits["test"], self.batch_size, shuffle=False)
