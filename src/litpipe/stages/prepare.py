"""prepare: load the dataset, split it with its own seed, store uint8 tensors and meta.json."""

import hashlib
import importlib
import io
import logging

import torch
from sklearn.model_selection import train_test_split

from litpipe import paths
from litpipe.config import Params
from litpipe.data import DATASETS
from litpipe.data.source import Source
from litpipe.io import atomic_path, write_json

log = logging.getLogger(__name__)


def run(params: Params) -> None:
    source = load_source(params)
    splits = split(source, params)
    stats = normalisation(splits["train"][0])
    meta = {
        "dataset": params.data.dataset,
        "class_names": source.class_names,
        "num_classes": len(source.class_names),
        "input_shape": list(source.images.shape[1:]),
        "pixel_max": source.pixel_max,
        "split_seed": params.data.split_seed,
        "official_test_split": source.test_images is not None,
        "sizes": {name: len(y) for name, (_, y) in splits.items()},
        "class_counts": {
            name: torch.bincount(y, minlength=len(source.class_names)).tolist() for name, (_, y) in splits.items()
        },
        **stats,
        "sha256": {},
    }
    for name, (x, y) in splits.items():
        # Serialised in memory: torch.save names the archive after the file, and the temporary
        # file's random name would make identical tensors hash differently.
        buffer = io.BytesIO()
        torch.save({"x": x.contiguous(), "y": y.contiguous()}, buffer)
        with atomic_path(paths.split_file(name)) as tmp:
            tmp.write_bytes(buffer.getvalue())
        meta["sha256"][name] = hashlib.sha256(buffer.getvalue()).hexdigest()
        log.info("%s: %d samples", name, len(y))
    write_json(paths.META, meta)


def load_source(params: Params) -> Source:
    module, _, function = DATASETS[params.data.dataset].partition(":")
    return getattr(importlib.import_module(module), function)(params.data)


def split(source: Source, params: Params) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Stratified train/val/test; a dataset's official test split is kept as it is."""
    seed = params.data.split_seed
    indices = torch.arange(len(source.labels))
    if source.test_images is None:
        indices, test_idx = _stratified(indices, source.labels, params.data.test_fraction, seed)
        test = (source.images[test_idx], source.labels[test_idx])
    else:
        test = (source.test_images, source.test_labels)
    train_idx, val_idx = _stratified(indices, source.labels[indices], params.data.val_fraction, seed)
    return {
        "train": (source.images[train_idx], source.labels[train_idx]),
        "val": (source.images[val_idx], source.labels[val_idx]),
        "test": test,
    }


def _stratified(
    indices: torch.Tensor, labels: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    keep, held_out = train_test_split(indices.numpy(), test_size=fraction, stratify=labels.numpy(), random_state=seed)
    return torch.from_numpy(keep).sort().values, torch.from_numpy(held_out).sort().values


def normalisation(train_images: torch.Tensor) -> dict[str, list[float]]:
    """Per-channel mean and std of the training images (never of val or test)."""
    pixels = train_images.double().transpose(0, 1).flatten(1)
    return {"mean": pixels.mean(dim=1).tolist(), "std": pixels.std(dim=1).clamp_min(1e-6).tolist()}
