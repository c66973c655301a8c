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


def fit_to(images: torch.Tensor, side: int | tuple[int, int] | None) -> torch.Tensor:
    """uint8 images (..., C, H, W) resized to cover `side` x `side` (or a (height, width) pair) with the aspect
    ratio kept (antialiased bilinear), then cropped about the centre: for a square, the shorter side becomes
    `side` and the middle is what remains. None: as is."""
    if side is None:
        return images
    target = (side, side) if isinstance(side, int) else tuple(side)
    if tuple(images.shape[-2:]) == target:
        return images
    height, width = images.shape[-2:]
    scale = max(target[0] / height, target[1] / width)
    size = (max(target[0], round(height * scale)), max(target[1], round(width * scale)))
    batch = images.reshape(-1, *images.shape[-3:]).float()
    resized = F.interpolate(batch, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - target[0]) // 2, (size[1] - target[1]) // 2
    cropped = resized[..., top : top + target[0], left : left + target[1]].round_().clamp_(0, 255)
    return cropped.to(torch.uint8).reshape(*images.shape[:-2], *target)
