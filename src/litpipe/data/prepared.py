"""The prepared splits, batched in one of two ways that give the same batches.

- resident: each split is one uint8 tensor on the training device; an epoch's batches are slices of
  it in a seeded random order. A per-sample Dataset + DataLoader costs more than a small model
  itself (on an H100 it made a Lightning epoch of an MNIST-sized MLP 2.7x slower than a plain loop,
  resident batches 1.65x), so this is the path whenever the splits fit.
- loader: for splits too big for the device's memory, a DataLoader whose workers gather each batch
  from the memory-mapped split files (prepare wrote them as NumPy arrays, a chunk at a time), with
  pinned memory for the copy to a GPU: a split larger than the machine's memory streams from disk.

Both take their sample order from the same `BatchOrder`, so a run gives the same metrics either way.
A batch holds `steps_per_call` x `batch_size` samples, which the model takes in `batch_size` pieces
(one optimizer step each in training; see models/lit_model.py).
`train.data_path: auto` picks resident when the splits take at most `train.resident_max_mb` and half of
the device's free memory (under a cgroup limit, such as a SLURM job's --mem, what the limit leaves).
"""

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from litpipe import paths, resources
from litpipe.config import Params
from litpipe.errors import StageError
from litpipe.io import file_sha256, read_json

log = logging.getLogger(__name__)

RESIDENT_SHARE = 0.5  # of the device's free memory; the rest is for the model and a shuffled copy
PREPARED_X = {(torch.uint8, 4), (torch.float32, 2)}  # images, tables: what prepare writes (dtype, dimensions)


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # images: uint8, N x C x H x W, which the model normalises; tables: float32 N x F, standardised
    y: torch.Tensor  # classes: int64, N; regression: float64, N (the target in its units, as precise as the file)

    def to(self, device: torch.device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))

    def head(self, n: int) -> "Split":
        return Split(self.x[:n], self.y[:n])

    @property
    def nbytes(self) -> int:
        return self.x.nbytes + self.y.nbytes


def load_split(name: str, verify: bool = True) -> Split:
    """A prepared split, memory-mapped: pages are read from disk when used, not all at once. `verify`
    first checks the files against the SHA-256 that prepare recorded in meta.json (DataLoader workers
    map files their process already checked)."""
    files = paths.split_files(name)
    if verify:
        digests = load_meta()["sha256"]
        for path in files:
            verify_file(path, digests.get(path.name))
    try:
        # Copy-on-write mappings: writable tensors without a copy (nothing writes to them).
        x, y = (torch.from_numpy(np.load(path, mmap_mode="c", allow_pickle=False)) for path in files)
    except (OSError, ValueError) as error:  # matched its checksum: written by another prepare
        raise StageError(f"{files[0]}: not a split that prepare wrote ({error}); run prepare again") from None
    if (x.dtype, x.dim()) not in PREPARED_X or y.dtype not in (torch.int64, torch.float64) or len(x) != len(y):
        raise StageError(f"{files[0]}: not a split that prepare wrote ({x.dtype} {tuple(x.shape)}); run prepare again")
    return Split(x, y)


def verify_file(path: Path, expected: str | None) -> None:
    rerun = "run `dvc repro prepare` (or `litpipe prepare`)"
    try:
        actual = file_sha256(path)
    except FileNotFoundError:
        raise StageError(f"{path}: not found; {rerun}") from None
    if actual != expected:
        raise StageError(
            f"{path}: its contents do not match the SHA-256 in {paths.META} (truncated or changed); {rerun}"
        )


def load_meta() -> dict[str, Any]:
    if not paths.META.exists():
        raise StageError(
            f"{paths.META}: not found; the prepare stage makes it: run `dvc repro prepare` (or `litpipe prepare`)"
        )
    return read_json(paths.META)


class BatchOrder:
    """The sample indices of each batch of an epoch; when shuffling, a permutation drawn from a generator
    seeded with (seed, epoch). Lightning sets the epoch before each one (`set_epoch`, as for a
    DistributedSampler), so a fit resumed at epoch k takes the batches of epoch k, as if it had never
    stopped; iterated by hand, each pass is the next epoch.

    Under DDP each of `world` processes takes every world-th sample of the same permutation: disjoint
    shards of equal size (the remainder of n / world is left out), so every rank runs as many steps.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world = rank, world
        self.next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.next_epoch = epoch

    def __len__(self) -> int:
        return -(-(self.n // self.world) // self.batch_size)

    def order(self) -> torch.Tensor | None:
        """The next epoch's sample order, or None when it is the split as stored."""
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        if not self.shuffle and self.world == 1:
            return None
        if self.shuffle:  # seeds up to 2**32 and epochs below 2**31: distinct values under 2**64
            generator = torch.Generator().manual_seed(self.seed * 2**32 + epoch)
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        if self.world > 1:
            order = order[: self.n // self.world * self.world][self.rank :: self.world]
        return order

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = self.order()
        if order is None:
            order = torch.arange(self.n)
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]


class Batches:
    """The resident path: an epoch of (x, y) batches sliced from a split that lives on the device."""

    def __init__(
        self, split: Split, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        # Named as a DataLoader's sampler (and no batch sampler), so that Lightning sets its epoch.
        self.sampler = BatchOrder(len(split.y), batch_size, shuffle, seed, rank, world)
        self.batch_sampler = None

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.sampler.order()
        if order is None:
            x, y = self.split.x, self.split.y
        else:  # one gather per epoch, then every batch is a view
            order = order.to(self.split.y.device)
            x, y = self.split.x[order], self.split.y[order]
        for start in range(0, len(y), self.batch_size):
            yield x[start : start + self.batch_size], y[start : start + self.batch_size]


class SplitFile(Dataset):
    """The loader path's dataset: item = a batch of indices, whose images are read from the split's file.

    Each worker opens the file itself, so nothing large is copied to the workers, and reads each image
    with pread into the batch: the pages read stay in the page cache, which the kernel frees as it needs,
    and not in the worker's own memory, as the pages of a mapping it keeps touching do (under a cgroup
    limit, a worker that mapped a split larger than the limit was killed for them)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._file: ImageRows | None = None

    def __getitem__(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._file is None:
            self._file = ImageRows(self.name)
        return self._file.read(indices), self._file.labels[indices]

    def __getstate__(self) -> dict:
        return {"name": self.name, "_file": None}


class ImageRows:
    """A split's inputs file, read a sample (an image, a table's row) at a time at their offsets; its targets, in
    memory."""

    def __init__(self, name: str) -> None:
        images, labels = paths.split_files(name)
        self.fd = os.open(images, os.O_RDONLY)
        self.labels = torch.from_numpy(np.load(labels, allow_pickle=False))
        with images.open("rb") as file:
            np.lib.format.read_magic(file)
            self.shape, _, self.dtype = np.lib.format.read_array_header_1_0(file)
            self.offset = file.tell()
        self.row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize
        self.path = images

    def read(self, indices: torch.Tensor) -> torch.Tensor:
        batch = np.empty((len(indices), *self.shape[1:]), dtype=self.dtype)
        rows = batch.reshape(len(indices), -1).view(np.uint8)
        for row, index in zip(rows, indices.tolist()):
            if os.preadv(self.fd, [row], self.offset + index * self.row_bytes) != self.row_bytes:
                raise StageError(f"{self.path}: image {index} is cut short; run prepare again")
        return torch.from_numpy(batch)

    def __del__(self) -> None:
        os.close(self.fd)


class PreparedData(pl.LightningDataModule):
    """The prepared splits on the device the trainer runs on, resident or through a DataLoader."""

    def __init__(
        self,
        batch_size: int,
        seed: int,
        path: str = "auto",
        workers: int = 0,
        resident_max_mb: float = math.inf,
        device: torch.device | None = None,
        steps_per_call: int = 1,
    ) -> None:
        super().__init__()
        self.batch_size, self.seed, self.steps_per_call = batch_size, seed, steps_per_call
        self.requested_path, self.workers, self.resident_max_mb = path, workers, resident_max_mb
        self.device = device or torch.device("cpu")
        self.path = ""  # "resident" or "loader", once set up
        self.splits: dict[str, Split] = {}

    @classmethod
    def from_params(
        cls, params: Params, device: torch.device | None = None, steps_per_call: int | None = None
    ) -> "PreparedData":
        """As params say; `steps_per_call=1` for users that need one optimizer step per batch (the LR
        finder, the profiler, the bench's plain loop)."""
        train = params.train
        steps = steps_per_call or train.steps_per_call
        return cls(
            train.batch_size, params.seed, train.data_path, train.loader_workers, train.resident_max_mb, device, steps
        )

    def rebatched(self, params: Params) -> "PreparedData":
        """The same loaded splits, batched as `params` says: a search trial may change the batch size."""
        data = PreparedData.from_params(params, self.device)
        data.splits, data.path = self.splits, self.path
        return data

    def setup(self, stage: str) -> None:
        if self.splits:
            return  # set up once per process: search trials reuse the loaded data
        if self.trainer:
            self.device = self.trainer.strategy.root_device
        stored = {name: load_split(name) for name in paths.SPLITS}
        needed, free = sum(split.nbytes for split in stored.values()), free_memory(self.device)
        self.path = choose_path(self.requested_path, needed, free, self.resident_max_mb * 2**20)
        how = f"DataLoader with {self.workers} workers" if self.path == "loader" else "resident"
        log.info(
            "data: %s on %s (splits %.0f MiB, device memory free %.0f MiB)",
            how,
            self.device,
            needed / 2**20,
            free / 2**20,
        )
        self.splits = (
            {name: split.to(self.device) for name, split in stored.items()} if self.path == "resident" else stored
        )

    def steps_per_epoch(self, world: int = 1) -> int:
        """Optimizer steps in a training epoch (set up first): one per `batch_size` piece of a rank's shard."""
        return len(BatchOrder(len(self.splits["train"].y), self.batch_size, shuffle=False, world=world))

    def train_in_order(self) -> Batches | DataLoader:
        """The whole training split in `batch_size` pieces, unshuffled, on every rank: for a pass that must not
        move the training order on (BatchNorm statistics of averaged weights)."""
        return self._batches("train", self.batch_size, shuffle=False)

    def train_dataloader(self) -> Batches | DataLoader:
        # Validation and test stay whole on every rank: small, and exact without gathering.
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        # DDP synchronises gradients once per forward through its wrapper, so one step per batch there.
        samples = self.batch_size * (self.steps_per_call if world == 1 else 1)
        batches = self._batches("train", samples, shuffle=True, seed=self.seed, rank=rank, world=world)
        if self.trainer:
            # Lightning makes a resumed fit's first training iterator before it sets the epoch, and a DataLoader
            # with workers draws its first batches as the iterator is made: start at the epoch the fit is at.
            batches.sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)
        return batches

    def val_dataloader(self) -> Batches | DataLoader:
        return self._batches("val", self.batch_size * self.steps_per_call, shuffle=False)

    def test_dataloader(self) -> Batches | DataLoader:
        return self._batches("test", self.batch_size * self.steps_per_call, shuffle=False)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if self.path == "resident":
            return batch  # already on the device: skip Lightning's generic walk through the batch
        x, y = batch
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def _batches(
        self, name: str, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1
    ) -> Batches | DataLoader:
        split = self.splits[name]
        if self.path == "resident":
            return Batches(split, batch_size, shuffle, seed, rank, world)
        return DataLoader(
            SplitFile(name),
            batch_size=None,  # the sampler yields whole batches of indices
            sampler=BatchOrder(len(split.y), batch_size, shuffle, seed, rank, world),
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.workers > 0,
            # Its own generator for the workers' seeds: drawing them from the global one would shift the
            # dropout noise, and the two paths would no longer train alike.
            generator=torch.Generator().manual_seed(seed),
        )


def choose_path(requested: str, needed: int, free: int, max_resident: float = math.inf) -> str:
    """ "resident" when the splits take at most `max_resident` bytes and RESIDENT_SHARE of the device's free
    memory, else "loader"."""
    if requested != "auto":
        return requested
    return "resident" if needed <= min(max_resident, RESIDENT_SHARE * free) else "loader"


def free_memory(device: torch.device) -> int:
    """Bytes free on the device: GPU memory for CUDA, else the memory this process may still take."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return resources.memory_available()
