"""folder: a researcher's own images, one sub-directory per class (torchvision's ImageFolder layout).

    data.root/                          or, with an official test split:   data.root/train/<class>/...
        <class name>/<any name>.png                                        data.root/test/<class>/...
        <class name>/...

Class names are the directory names, in sorted order. PNG, JPEG, BMP, GIF, TIFF and WebP files are
read (other files, and names starting with a dot, are skipped). Grey images stay one channel; when any
image has colour, all are read as RGB. Images keep their size when they share one; with
`data.image_size` set they are resized to it (shorter side, then centre crop), whatever their sizes.

The files are listed and their headers checked first, so a bad file fails the prepare stage before
anything is written; pixels are decoded only when prepare writes them, a chunk at a time, in threads.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from litpipe.config import DataParams
from litpipe.data.source import Source, fit_to, square_shape
from litpipe.errors import StageError

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
GREY_MODES = {"1", "L", "LA", "I;16", "I;16B", "I;16L", "I;16N"}


def load(params: DataParams) -> Source:
    root = Path(params.root)
    if not root.is_dir():
        raise StageError(
            f"data.root {root} is not a directory; data.dataset folder reads one sub-directory of images per class"
        )
    official = (root / "train").is_dir()
    train_dir = root / "train" if official else root
    class_names = sorted(child.name for child in train_dir.iterdir() if child.is_dir() and _visible(child))
    if len(class_names) < 2:
        raise StageError(f"{train_dir}: {len(class_names)} class directories; a classifier needs at least two")
    train_files, train_labels = _listing(train_dir, class_names)
    test_files, test_labels = _listing(root / "test", class_names) if (root / "test").is_dir() else ([], [])
    channels, size = _survey(train_files + test_files, params.image_size)
    images = ImageFiles(train_files, channels, size, params.image_size)
    test = ImageFiles(test_files, channels, size, params.image_size) if test_files else None
    return Source(
        images,
        torch.tensor(train_labels),
        class_names,
        pixel_max=255,
        test_images=test,
        test_labels=torch.tensor(test_labels) if test_files else None,
        read_from=root,
    )


class ImageFiles:
    """Images on disk, decoded when indexed: uint8 N x C x H x W at a tensor of indices."""

    def __init__(self, files: list[Path], channels: int, size: tuple[int, int], side: int | None) -> None:
        self.files, self.channels, self.side = files, channels, side
        self.shape = square_shape((len(files), channels, *size), side)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        files = [self.files[index] for index in indices.tolist()]
        if not files:
            return torch.empty(0, *self.shape[1:], dtype=torch.uint8)
        with ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:  # PIL decodes without the GIL
            return torch.stack(list(pool.map(self._read, files)))

    def _read(self, path: Path) -> torch.Tensor:
        try:
            with Image.open(path) as opened:
                image = ImageOps.exif_transpose(opened)  # photos stored sideways, as cameras mark them
                pixels = image_pixels(image, self.channels)
        except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for truncated or damaged data
            raise StageError(f"{path}: cannot be decoded ({error})") from None
        image = torch.from_numpy(pixels).permute(2, 0, 1)
        if self.side is None and tuple(image.shape) != self.shape[1:]:
            raise StageError(f"{path}: decoded as {tuple(image.shape)}, expected {self.shape[1:]}")
        return fit_to(image, self.side)


def image_pixels(image: Image.Image, channels: int) -> np.ndarray:
    """H x W x C uint8; 16-bit grey scaled to 8 bits (PIL's convert would clip it)."""
    if image.mode.startswith("I;16"):
        grey = (np.asarray(image, dtype=np.float64) / 257).round().astype(np.uint8)
        return np.repeat(grey[..., None], channels, axis=2)
    converted = image.convert("L" if channels == 1 else "RGB")
    return np.array(converted, dtype=np.uint8).reshape(converted.height, converted.width, channels)  # a writable copy


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")  # .ipynb_checkpoints, .DS_Store, editors' and DVC's files


def _listing(directory: Path, class_names: list[str]) -> tuple[list[Path], list[int]]:
    """The image files of each class directory, sorted, and their labels."""
    unknown = sorted(c.name for c in directory.iterdir() if c.is_dir() and _visible(c) and c.name not in class_names)
    if unknown:
        raise StageError(f"{directory}: class directories {unknown} are not among the training classes {class_names}")
    files, labels = [], []
    for label, name in enumerate(class_names):
        found = (
            sorted(f for f in (directory / name).rglob("*") if f.suffix.lower() in SUFFIXES and _visible(f))
            if (directory / name).is_dir()
            else []
        )
        if not found and directory.name != "test":
            raise StageError(f"{directory / name}: no image files ({', '.join(sorted(SUFFIXES))})")
        files += found
        labels += [label] * len(found)
    return files, labels


def _survey(files: list[Path], side: int | None) -> tuple[int, tuple[int, int]]:
    """(channels, H x W) from the image headers: 3 when any image has colour; one size unless resizing."""
    channels, size, first = 1, None, None
    for path in files:
        try:
            with Image.open(path) as image:
                mode, (width, height) = image.mode, image.size
                # EXIF sits in the header of JPEG and TIFF files (PIL reads a PNG's whole file to find it).
                exif = image.getexif() if image.format in ("JPEG", "MPO", "TIFF") else {}
                if exif.get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):
                    width, height = height, width  # stored sideways: exif_transpose turns it
        except (UnidentifiedImageError, OSError) as error:
            raise StageError(f"{path}: not an image PIL can read ({error})") from None
        channels = 1 if channels == 1 and mode in GREY_MODES else 3
        if size is None:
            size, first = (height, width), path
        elif side is None and (height, width) != size:
            raise StageError(
                f"{path} is {width}x{height} pixels, {first} is {size[1]}x{size[0]}: "
                "set data.image_size to resize every image to one size"
            )
    return channels, size
