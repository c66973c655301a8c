"""What a dataset loader returns: uint8 images, integer labels, class names.

Images are a tensor when the dataset fits in memory (digits, the torchvision sets), or any object that
has a `shape` and gives the images at a tensor of indices (`ImageFiles` for a folder of image files):
prepare reads and writes them a chunk at a time, so a dataset bigger than memory goes through.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F


class Images(Protocol):
    @property
    def shape(self) -> tuple[int, ...]: ...  # N x C x H x W

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor: ...  # uint8 images at these indices


@dataclass(frozen=True)
class Source:
    images: torch.Tensor | Images  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N
    class_names: list[str]
    pixel_max: int  # brightest possible pixel value, for display
    test_images: torch.Tensor | Images | None = None  # an official test split, when the dataset has one
    test_labels: torch.Tensor | None = None
    val_images: torch.Tensor | Images | None = None  # an official validation split, when it has one
    val_labels: torch.Tensor | None = None
    read_from: Path | None = None  # the raw files' directory, for datasets that have one (not digits)


def square_shape(shape: tuple[int, ...], side: int | None) -> tuple[int, ...]:
    """The shape images of `shape` (..., H, W) have once `fit_to(side)`."""
    return shape if side is None else (*shape[:-2], side, side)


def fit_to(images: torch.Tensor, side: int | None) -> torch.Tensor:
    """uint8 images (..., C, H, W) resized so the shorter side is `side` (antialiased bilinear), then cropped
    to `side` x `side` about the centre: the aspect ratio is kept and the middle is what remains. None: as is."""
    if side is None or images.shape[-2:] == (side, side):
        return images
    height, width = images.shape[-2:]
    scale = side / min(height, width)
    size = (max(side, round(height * scale)), max(side, round(width * scale)))
    batch = images.reshape(-1, *images.shape[-3:]).float()
    resized = F.interpolate(batch, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - side) // 2, (size[1] - side) // 2
    cropped = resized[..., top : top + side, left : left + side].round_().clamp_(0, 255)
    return cropped.to(torch.uint8).reshape(*images.shape[:-2], side, side)
