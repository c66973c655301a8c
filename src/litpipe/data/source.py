"""What a dataset loader returns: uint8 images, integer labels, class names."""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Source:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N
    class_names: list[str]
    pixel_max: int  # brightest possible pixel value, for display
    test_images: torch.Tensor | None = None  # an official test split, when the dataset has one
    test_labels: torch.Tensor | None = None
