"""prepare: load the dataset, split it with its own seed, store NumPy arrays and meta.json.

Each split is two NumPy files, `<split>-x.npy` and `<split>-y.npy`: images as uint8 N x C x H x W with int64
classes; a table's rows encoded as float32 N x F (data/encoding.py) with int64 classes or the float64 target.
The inputs are written a chunk at a time: prepare never holds more than a chunk of a dataset's pixels or rows,
and training memory-maps the same files (data/prepared.py). The files are written into a new directory that
replaces data/prepared once all are complete.
"""

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from litpipe import paths
from litpipe.config import Params
from litpipe.data import encoding
from litpipe.data.loaders import LOADERS
from litpipe.data.source import Images, Source, fit_to, square_shape
from litpipe.data.table import Table, category_text
from litpipe.errors import StageError
from litpipe.io import atomic_directory, file_sha256, write_json

log = logging.getLogger(__name__)

CHUNK_BYTES = 16 * 2**20  # pixels written at a time (resizing holds a few float32 copies of them)
CLASSES_MAX = 20  # a table's whole-number target with up to this many values is classes (unless data.task says)


def run(params: Params) -> None:
    source = load_source(params)
    if source.read_from and not source.read_from.resolve().is_relative_to(paths.RAW.resolve()):
        log.warning(
            "data.root %s is outside %s: DVC does not track it, so a changed file there re-runs nothing",
            source.read_from,
            paths.RAW,
        )
    if isinstance(source, Table):
        prepare_table(source, params)
    else:
        prepare_images(source, params)


def prepare_images(source: Source, params: Params) -> None:
    side = params.data.image_size
    shape = square_shape(tuple(source.images.shape[1:]), side)
    meta = {
        "dataset": params.data.dataset,
        "kind": "images",
        "task": "classification",
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


def load_source(params: Params) -> Source | Table:
    return LOADERS[params.data.dataset](params.data)


def prepare_table(table: Table, params: Params) -> None:
    """A table's rows, encoded with the training split's statistics (data/encoding.py), as the prepared splits."""
    data = params.data
    features = data.features if data.features is not None else [c for c in table.columns if c != table.target]
    if not features:
        raise StageError(f"{table.name}: no feature columns to predict {table.target!r} from")
    found = encoding.scan(table, features)
    if found.rows == 0:
        raise StageError(f"{table.name}: no rows")
    refuse_missing(table, found, features, data.missing)
    task, y, class_names = target_of(table, found, data.task)
    indices = split_indices(y, data.test_fraction, data.val_fraction, data.split_seed, data.train_images, class_names)
    categorical = encoding.categorical_columns(features, found, set(data.categorical))
    in_train = np.zeros(found.rows, dtype=bool)
    in_train[indices["train"].numpy()] = True
    coder = encoding.Encoding.fit(
        _rows(table.chunks(features, categorical), in_train), features, found, categorical, data.missing == "impute"
    )
    meta = {
        "dataset": data.dataset,
        "kind": "table",
        "task": task,
        "source": table.name,
        "columns": features,
        "features": coder.names,
        "encoding": coder.to_meta(),
        "input_shape": [len(coder.names)],
        "target": {"name": table.target},
        "split_seed": data.split_seed,
        "official_test_split": False,
        "sizes": {name: len(rows) for name, rows in indices.items()},
        "sha256": {},
    }
    train_y = y[indices["train"]].double()
    if class_names is None:
        meta["target"].update(mean=train_y.mean().item(), std=max(train_y.std().item(), 1e-12))
    else:
        counts = {name: torch.bincount(y[rows], minlength=len(class_names)).tolist() for name, rows in indices.items()}
        meta.update(class_names=class_names, num_classes=len(class_names), class_counts=counts)
    with atomic_directory(paths.PREPARED) as directory:
        write_table_splits(directory, table, coder, features, indices, y, meta["sha256"])
        write_json(directory / paths.META.name, meta)
    log.info(
        "%s: %d rows, %d features (%d columns encoded), %s of %r; %s",
        table.name,
        found.rows,
        len(coder.names),
        len(features),
        task,
        table.target,
        ", ".join(f"{name} {size}" for name, size in meta["sizes"].items()),
    )


def refuse_missing(table: Table, found: encoding.Scan, features: list[str], missing: str) -> None:
    """A missing target is refused always (a row without one can neither train nor test); a missing feature
    unless data.missing is impute."""
    if found.missing[table.target]:
        raise StageError(
            f"{table.name}: the target {table.target!r} is missing in {found.missing[table.target]} rows; "
            "drop those rows or fill them in"
        )
    gaps = {column: found.missing[column] for column in features if found.missing[column]}
    if gaps and missing == "refuse":
        column, count = next(iter(gaps.items()))
        more = f" (and {len(gaps) - 1} more columns)" if len(gaps) > 1 else ""
        raise StageError(
            f"{table.name}: column {column!r} has {count} missing values{more}; fill them in, or set data.missing: "
            "impute (the training median or most frequent value, plus a column saying where)"
        )


def target_of(table: Table, found: encoding.Scan, task: str | None) -> tuple[str, torch.Tensor, list[str] | None]:
    """The task, the target of every row (class indices, or the float64 value) and the class names (None to
    regress). Unless data.task says, a target of text, or of whole numbers with few values, is classes."""
    values = found.target
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if not numeric:
        encoding.refuse_typos(table.name, table.target, values.dropna())
    if task is None:
        whole = numeric and bool(np.all(np.mod(values.to_numpy(dtype=np.float64), 1) == 0))
        task = "regression" if numeric and not (whole and values.nunique() <= CLASSES_MAX) else "classification"
    if task == "regression":
        if not numeric:
            example = values.iloc[int(np.argmax(pd.to_numeric(values, errors="coerce").isna()))]
            raise StageError(
                f"{table.name}: data.task regression needs a numeric target, and {table.target!r} holds {example!r}"
            )
        return task, torch.from_numpy(values.to_numpy(dtype=np.float64)), None
    names = values.map(category_text)
    class_names = sorted(names.unique(), key=_class_order)
    if len(class_names) < 2:
        raise StageError(f"{table.name}: the target {table.target!r} has one value only; there is nothing to classify")
    codes = pd.Categorical(names, categories=class_names).codes
    return task, torch.from_numpy(codes.astype(np.int64)), class_names


def _class_order(name: str) -> tuple[bool, float, str]:
    """Numbers in numeric order (2 before 10), then text in alphabetical order."""
    number = pd.to_numeric(name, errors="coerce")
    return (bool(pd.isna(number)), 0.0 if pd.isna(number) else float(number), name)


def split_indices(
    y: torch.Tensor,
    test_fraction: float,
    val_fraction: float,
    seed: int,
    train_rows: int | None,
    class_names: list[str] | None,
) -> dict[str, torch.Tensor]:
    """A table's rows per split, sorted: stratified by class to classify, at random to regress."""
    stratify = class_names is not None
    rows, test = _stratified(torch.arange(len(y)), y, test_fraction, seed, stratify)
    train, val = _stratified(rows, y[rows], val_fraction, seed, stratify)
    if train_rows is not None:
        train = _sample(train, y[train], train_rows, seed, stratify)
    splits = {"train": train, "val": val, "test": test}
    for name, rows in splits.items():
        if len(rows) < 2:  # a mean, a spread, an R² need two
            raise StageError(
                f"the {name} split would hold {len(rows)} of the table's {len(y)} rows; a split needs at least 2 "
                "(data.test_fraction, data.val_fraction, data.train_images)"
            )
    return splits


def _rows(chunks, keep: np.ndarray):
    """The rows of `chunks` whose place in the table `keep` marks."""
    offset = 0
    for chunk in chunks:
        yield chunk[keep[offset : offset + len(chunk)]]
        offset += len(chunk)


def write_table_splits(
    directory: Path,
    table: Table,
    coder: encoding.Encoding,
    features: list[str],
    indices: dict[str, torch.Tensor],
    y: torch.Tensor,
    digests: dict[str, str],
) -> None:
    """Each split's encoded rows (float32, in the table's order) and targets, in one pass over the table."""
    place = np.full(len(y), -1, dtype=np.int8)  # the split of each row (-1: left out by data.train_images)
    for number, rows in enumerate(indices.values()):
        place[rows.numpy()] = number
    files = [(directory / paths.split_files(name)[0].name).open("wb") for name in indices]
    try:
        for file, rows in zip(files, indices.values()):
            header = {"descr": "<f4", "fortran_order": False, "shape": (len(rows), len(coder.names))}
            np.lib.format.write_array_header_1_0(file, header)
        offset = 0
        for chunk in table.chunks(features, coder.text):
            encoded, where = coder.transform(chunk), place[offset : offset + len(chunk)]
            for number, file in enumerate(files):
                file.write(encoded[where == number].tobytes())
            offset += len(chunk)
    finally:
        for file in files:
            file.close()
    for name, rows in indices.items():
        x_file, y_file = (directory / path.name for path in paths.split_files(name))
        np.save(y_file, y[rows].numpy())
        digests.update({file.name: file_sha256(file) for file in (x_file, y_file)})


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


def _sample(indices: torch.Tensor, labels: torch.Tensor, n: int, seed: int, stratify: bool = True) -> torch.Tensor:
    """n of the training samples, in proportion to their classes (data.train_images)."""
    classes = len(labels.unique()) if stratify else 1
    if not classes <= n <= len(indices):
        raise StageError(
            f"data.train_images {n}: the training split holds {len(indices)} images of {classes} classes; "
            f"choose from {classes} to {len(indices)} (or null for all)"
        )
    if n == len(indices):
        return indices
    try:
        kept, _ = train_test_split(
            indices.numpy(), train_size=n, stratify=labels.numpy() if stratify else None, random_state=seed
        )
    except ValueError as error:  # a class too small to sample in proportion
        raise StageError(f"data.train_images {n}: cannot sample the training split by class: {error}") from None
    return torch.from_numpy(kept).sort().values


def _stratified(
    indices: torch.Tensor, labels: torch.Tensor, fraction: float, seed: int, stratify: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        keep, held_out = train_test_split(
            indices.numpy(), test_size=fraction, stratify=labels.numpy() if stratify else None, random_state=seed
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
