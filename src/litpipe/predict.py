"""`litpipe predict PATH...`: the classes a trained model gives new images, as a CSV.

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
        files = image_files([Path(path) for path in args.paths])
    except ConfigError as error:
        print(f"litpipe: {error}", file=sys.stderr)
        return 2
    logs.log_to(paths.log_file("predict"), stream=sys.stderr)
    try:
        rows = predict(files, Path(args.checkpoint), params, args.top_k, args.skip_bad)
    except StageError as error:
        log.error("predict failed: %s", error)
        return 1
    write(rows, Path(args.out), args.top_k)
    log.info("wrote %s: %d images", args.out, len(rows))
    return 0


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
