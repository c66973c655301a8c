"""`litpipe predict PATH...`: what a trained model gives new images, or new rows of a table, as a CSV.

Tables: each CSV or Parquet file holds the columns the model was trained on (others are kept as they are); its
rows are encoded as the training rows were (meta.json's encoding), and the CSV written is every row with the
prediction beside it: `predicted` (the target in its units, or the class with its `probability` and one
`probability_<class>` column per class). A row whose value cannot be encoded stops it with one line naming the row
and column (`--skip-bad`: the row is left out). Files are read and written a chunk of rows at a time.

Images:
Each image is prepared as the training images were (data/prepared/meta.json and the checkpoint say how): read
with its EXIF orientation, as grey or RGB for the model's channels, resized (shorter side, then centre crop,
as `data.image_size` does) to the model's input size, and scaled to the prepared data's pixel range (digits
are 0..16). The model normalises them itself. Files are read, and the model run, a batch at a time on the
device train.accelerator chooses; nothing is written until every file has been read or skipped.
"""

import argparse
import csv
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from litpipe import logs, paths
from litpipe.config import load_params
from litpipe.errors import ConfigError, StageError
from litpipe.io import atomic_path

log = logging.getLogger(__name__)

BATCH = 256  # images read and classified at a time


def main(args: argparse.Namespace) -> int:
    try:
        if args.top_k < 1:
            raise ConfigError(f"--top-k must be at least 1 (got {args.top_k})")
        params = load_params(args.params)
        given = [Path(path) for path in args.paths]
        rows_of_a_table = _trained_on_a_table()
        files = table_files(given) if rows_of_a_table else image_files(given)
    except ConfigError as error:
        print(f"litpipe: {error}", file=sys.stderr)
        return 2
    logs.log_to(paths.log_file("predict"), stream=sys.stderr)
    try:
        if rows_of_a_table:
            count = predict_rows(files, Path(args.checkpoint), params, Path(args.out), args.skip_bad)
        else:
            rows = predict(files, Path(args.checkpoint), params, args.top_k, args.skip_bad)
            write(rows, Path(args.out), args.top_k)
            count = len(rows)
    except StageError as error:
        log.error("predict failed: %s", error)
        return 1
    log.info("wrote %s: %d %s", args.out, count, "rows" if rows_of_a_table else "images")
    return 0


def _trained_on_a_table() -> bool:
    from litpipe.io import read_json

    return paths.META.exists() and read_json(paths.META).get("kind") == "table"


def table_files(given: list[Path]) -> list[Path]:
    for path in given:
        if not path.is_file():
            raise ConfigError(f"{path}: no such file; the model was trained on a table: name CSV or Parquet files")
    return given


def predict_rows(files: list[Path], checkpoint: Path, params, out: Path, skip_bad: bool) -> int:
    """Every row of `files` with the model's prediction beside it, written to `out` a chunk at a time (into a
    temporary file that becomes `out` once all are done); the number of rows written."""
    import difflib

    import torch

    from litpipe.data.encoding import Encoding
    from litpipe.data.prepared import load_meta
    from litpipe.data.table import from_file
    from litpipe.models.lit_model import LitModel
    from litpipe.training import device_type

    if not checkpoint.exists():
        raise StageError(f"{checkpoint}: not found; train a model first (`dvc repro fit`)")
    meta, model = load_meta(), LitModel.from_checkpoint(checkpoint)
    if list(model.hparams.input_shape) != meta["input_shape"]:
        raise StageError(f"{checkpoint} and {paths.META} come from different data; run the pipeline again")
    coder, device = Encoding.from_meta(meta["encoding"]), torch.device(device_type(params))
    model.to(device)
    written, header = 0, None
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as handle:
        for file in files:
            table = from_file(file)
            if header is not None and table.columns != header:  # one CSV out: one set of columns
                raise StageError(f"{file}: other columns than {files[0]}; predict files with other columns apart")
            header = table.columns
            taken = [c for c in header if c in ("predicted", "probability") or c.startswith("probability_")]
            taken += ["file"] if "file" in header and len(files) > 1 else []
            if taken:
                raise StageError(f"{file}: its column {taken[0]!r} would be overwritten by the predictions; rename it")
            for column in meta["columns"]:
                if column not in table.columns:
                    close = difflib.get_close_matches(column, table.columns, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise StageError(
                        f"{file}: no column {column!r}{hint}; the model reads {', '.join(meta['columns'])}"
                    )
            offset = 0
            for chunk in table.chunks(table.columns, coder.text):
                bad, reasons = coder.unusable(chunk)
                for row in np.flatnonzero(bad):
                    problem = f"{file}: row {offset + row + 1}: {reasons[row]}"
                    if not skip_bad:
                        raise StageError(f"{problem}; correct it, or pass --skip-bad to leave such rows out")
                    log.warning("skipped %s", problem)
                offset += len(chunk)
                chunk = chunk[~bad]
                if not len(chunk):
                    continue
                x = torch.from_numpy(coder.transform(chunk)).to(device)
                answers = pd.DataFrame(model.predict(x).cpu().numpy(), index=chunk.index)
                if meta.get("task") == "regression":
                    chunk = chunk.assign(predicted=answers[0])
                else:
                    names = meta["class_names"]
                    chunk = chunk.assign(
                        predicted=[names[k] for k in answers.to_numpy().argmax(1)],
                        probability=answers.max(axis=1),
                        **{f"probability_{name}": answers[k] for k, name in enumerate(names)},
                    )
                if len(files) > 1:
                    chunk.insert(0, "file", str(file))
                chunk.to_csv(handle, header=written == 0, index=False)
                written += len(chunk)
    if not written:
        raise StageError("no row could be used")
    return written


def image_files(given: list[Path]) -> list[Path]:
    """The files named, and the image files under each folder named (sorted; hidden names skipped)."""
    from litpipe.data.folder import SUFFIXES

    files = []
    for path in given:
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.suffix.lower() in SUFFIXES and not _hidden(f, path))
            if not found:
                raise ConfigError(f"{path}: no image files ({', '.join(sorted(SUFFIXES))})")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise ConfigError(f"{path}: no such file or folder")
    return files


def _hidden(file: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in file.relative_to(root).parts)


def predict(files: list[Path], checkpoint: Path, params, top_k: int, skip_bad: bool) -> list[dict]:
    import torch

    from litpipe.data.prepared import load_meta
    from litpipe.models.lit_model import LitModel
    from litpipe.training import device_type

    if not checkpoint.exists():
        raise StageError(f"{checkpoint}: not found; train a model first (`dvc repro fit`)")
    meta = load_meta()
    model = LitModel.from_checkpoint(checkpoint)
    shape = tuple(model.hparams.input_shape)
    if model.hparams.num_classes != len(meta["class_names"]):
        raise StageError(
            f"{checkpoint} has {model.hparams.num_classes} classes and {paths.META} {len(meta['class_names'])}: "
            "they come from different data"
        )
    device = torch.device(device_type(params))
    model.to(device)
    rows = []
    for batch in _batches(files, shape, meta["pixel_max"], skip_bad):
        names, images = zip(*batch)
        with torch.no_grad():
            probabilities = model(torch.stack(images).to(device)).softmax(dim=1).cpu()
        best, classes = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)
        for name, p, c in zip(names, best.tolist(), classes.tolist()):
            rows.append({"file": str(name), "ranked": [(meta["class_names"][k], q) for k, q in zip(c, p)]})
    if not rows:
        raise StageError("no image could be read")
    return rows


def _batches(files: list[Path], shape: tuple[int, ...], pixel_max: int, skip_bad: bool) -> Iterator[list]:
    batch = []
    for file in files:
        try:
            batch.append((file, read_image(file, shape, pixel_max)))
        except StageError as error:
            if not skip_bad:
                raise
            log.warning("skipped %s", error)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def read_image(file: Path, shape: tuple[int, ...], pixel_max: int):
    """uint8 C x H x W, as prepare would have stored the image."""
    import torch
    from PIL import Image, ImageOps

    from litpipe.data.folder import image_pixels
    from litpipe.data.source import fit_to

    channels, height, width = shape
    try:
        with Image.open(file) as opened:
            pixels = image_pixels(ImageOps.exif_transpose(opened), channels)
    except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for what is not an image, or damaged
        raise StageError(f"{file}: cannot be read as an image ({str(error).splitlines()[0]})") from None
    image = fit_to(torch.from_numpy(pixels).permute(2, 0, 1), (height, width))
    if pixel_max != 255:  # the prepared data's range (digits: 0..16)
        image = (image.float() * pixel_max / 255).round().to(torch.uint8)
    return image


def write(rows: list[dict], out: Path, top_k: int) -> None:
    ranks = range(2, min(top_k, len(rows[0]["ranked"])) + 1)
    header = ["file", "predicted", "probability"] + [f"{kind}{k}" for k in ranks for kind in ("top", "probability")]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as handle:
        table = csv.writer(handle)
        table.writerow(header)
        for row in rows:
            table.writerow([row["file"], *(value for pair in row["ranked"] for value in (pair[0], f"{pair[1]:.6f}"))])
