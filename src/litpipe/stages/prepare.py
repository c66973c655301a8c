"""prepare: load the dataset, split it with its own seed, store uint8 arrays and meta.json.

Each split is two NumPy files, `<split>-images.npy` (uint8 N x C x H x W) and `<split>-labels.npy`
(int64), written a chunk of images at a time into a memory-mapped array: prepare never holds more than
a chunk of a dataset's pixels, and training memory-maps the same files (data/prepared.py). The files
are written into a new directory that replaces data/prepared once all are complete.
"""

import logging
import math
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from litpipe import paths
from litpipe.config import Params
from litpipe.data.loaders import LOADERS
from litpipe.data.source import Images, Source, fit_to, square_shape
from litpipe.errors import StageError
from litpipe.io import atomic_directory, file_sha256, write_json

log = logging.getLogger(__name__)

CHUNK_BYTES = 16 * 2**20  # pixels written at a time (resizing holds a few float32 copies of them)


def run(params: Params) -> None:
    source = load_source(params)
    if source.read_from and not source.read_from.resolve().is_relative_to(paths.RAW.resolve()):
        log.warning(
            "data.root %s is outside %s: DVC does not track it, so a changed file there re-runs nothing",
            source.read_from,
            paths.RAW,
        )
    side = params.data.image_size
    shape = square_shape(tuple(source.images.shape[1:]), side)
    meta = {
        "dataset": params.data.dataset,
        "class_names": source.class_names,
        "num_classes": len(source.class_names),
        "input_shape": list(shape),
        "pixel_max": source.pixel_max,
        "split_seed": params.data.split_seed,
        "official_test_split": source.test_images is not None,
        "sizes": {},
        "class_counts": {},
        "sha256": {},
    }
    with atomic_directory(paths.PREPARED) as directory:  # a file that fails to decode leaves the last data whole
        for name, (images, indices, labels) in split(source, params).items():
            moments = write_split(directory, name, images, indices, labels, side, meta["sha256"])
            if name == "train":
                meta.update(moments.normalisation())
            meta["sizes"][name] = len(labels)
            meta["class_counts"][name] = torch.bincount(labels, minlength=len(source.class_names)).tolist()
            log.info("%s: %d samples of %s", name, len(labels), "x".join(map(str, shape)))
        write_json(directory / paths.META.name, meta)


def load_source(params: Params) -> Source:
    return LOADERS[params.data.dataset](params.data)


def split(source: Source, params: Params) -> dict[str, tuple[torch.Tensor | Images, torch.Tensor, torch.Tensor]]:
    """Stratified train/val/test as (images, indices into them, labels); official test and validation splits
    are kept."""
    seed = params.data.split_seed
    indices = torch.arange(len(source.labels))
    if source.test_images is None:
        indices, test_idx = _stratified(indices, source.labels, params.data.test_fraction, seed)
        test = (source.images, test_idx, source.labels[test_idx])
    else:
        test = (source.test_images, torch.arange(len(source.test_labels)), source.test_labels)
    if source.val_images is None:
        train_idx, val_idx = _stratified(indices, source.labels[indices], params.data.val_fraction, seed)
        val = (source.images, val_idx, source.labels[val_idx])
    else:
        train_idx, val = indices, (source.val_images, torch.arange(len(source.val_labels)), source.val_labels)
    if params.data.train_images is not None:
        train_idx = _sample(train_idx, source.labels[train_idx], params.data.train_images, seed)
    return {"train": (source.images, train_idx, source.labels[train_idx]), "val": val, "test": test}


def _sample(indices: torch.Tensor, labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n of the training images, in proportion to their classes (data.train_images)."""
    classes = len(labels.unique())
    if not classes <= n <= len(indices):
        raise StageError(
            f"data.train_images {n}: the training split holds {len(indices)} images of {classes} classes; "
            f"choose from {classes} to {len(indices)} (or null for all)"
        )
    if n == len(indices):
        return indices
    try:
        kept, _ = train_test_split(indices.numpy(), train_size=n, stratify=labels.numpy(), random_state=seed)
    except ValueError as error:  # a class too small to sample in proportion
        raise StageError(f"data.train_images {n}: cannot sample the training split by class: {error}") from None
    return torch.from_numpy(kept).sort().values


def _stratified(
    indices: torch.Tensor, labels: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        keep, held_out = train_test_split(
            indices.numpy(), test_size=fraction, stratify=labels.numpy(), random_state=seed
        )
    except ValueError as error:  # a class with one image, or fewer images than classes in a split
        raise StageError(f"cannot split the data in proportion to its classes: {error}") from None
    return torch.from_numpy(keep).sort().values, torch.from_numpy(held_out).sort().values


def write_split(
    directory: Path,
    name: str,
    images: torch.Tensor | Images,
    indices: torch.Tensor,
    labels: torch.Tensor,
    side: int | None,
    digests: dict[str, str],
) -> "Moments":
    """Write the split's two files, recording their SHA-256 in `digests`; return its pixels' moments."""
    image_file, label_file = (directory / path.name for path in paths.split_files(name))
    shape = (len(indices), *square_shape(tuple(images.shape[1:]), side))
    chunk = max(1, CHUNK_BYTES // max(1, math.prod(shape[1:])))
    moments = Moments(shape[1])
    with image_file.open("wb") as file:  # plain writes, not a writable mapping: the kernel can drop written pages
        np.lib.format.write_array_header_1_0(file, {"descr": "|u1", "fortran_order": False, "shape": shape})
        for start in range(0, len(indices), chunk):
            pixels = fit_to(images[indices[start : start + chunk]], side)
            file.write(pixels.numpy().tobytes())
            moments.add(pixels)
    np.save(label_file, labels.numpy().astype(np.int64))
    digests.update({file.name: file_sha256(file) for file in (image_file, label_file)})
    return moments


class Moments:
    """Per-channel count, mean and sum of squared deviations of images added a chunk at a time, combined as
    Chan et al. do: as exact as one pass over all pixels at once, without holding them."""

    def __init__(self, channels: int) -> None:
        self.count = 0
        self.mean = torch.zeros(channels, dtype=torch.float64)
        self.m2 = torch.zeros(channels, dtype=torch.float64)

    def add(self, images: torch.Tensor) -> None:
        values = images.transpose(0, 1).flatten(1).double()
        count = values.shape[1]
        if count == 0:
            return
        mean = values.mean(dim=1)
        m2 = ((values - mean[:, None]) ** 2).sum(dim=1)
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * count / total
        self.m2 = self.m2 + m2 + delta**2 * self.count * count / total
        self.count = total

    def normalisation(self) -> dict[str, list[float]]:
        """Mean and (sample) std per channel: what the model normalises with (of the training split only)."""
        std = (self.m2 / max(1, self.count - 1)).sqrt().clamp_min(1e-6)
        return {"mean": self.mean.tolist(), "std": std.tolist()}
