"""MNIST-shaped digits with no download: scikit-learn's 8x8 digits drawn at 28x28, each copy randomly
rotated, scaled, shifted and noised. 60,000 training and 10,000 test images of 1 x 28 x 28, as MNIST
has, the same on every machine; data.val_fraction of the 60,000 are the validation split. Validation and
test images each come from originals that no other split's images were drawn from: a validation image
warped from a training digit would measure memory, not generalisation.

For measuring speed at real scale anywhere (`litpipe bench --synthetic`) and for running the whole
pipeline at MNIST's size (`data.dataset: synthetic_mnist`).
"""

import math

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from litpipe.config import DataParams
from litpipe.data.source import Source
from litpipe.errors import StageError

TRAIN_IMAGES, TEST_IMAGES = 60_000, 10_000
SEED = 0  # a fixed dataset: data.split_seed splits it, it does not redraw it


def load(params: DataParams) -> Source:
    digits = load_digits()
    originals = torch.from_numpy(digits.images).float().unsqueeze(1) / 16
    labels = torch.from_numpy(digits.target).long()
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=0.2, stratify=labels.numpy(), random_state=SEED
    )
    try:
        train_idx, val_idx = train_test_split(
            train_idx, test_size=params.val_fraction, stratify=labels[train_idx].numpy(), random_state=SEED
        )
    except ValueError as error:  # too few originals left for one of each class on a side
        raise StageError(f"data.val_fraction {params.val_fraction}: cannot hold out originals of every digit ({error})")
    val_images = round(TRAIN_IMAGES * params.val_fraction)
    generator = torch.Generator().manual_seed(SEED)
    train_x, train_y = draw(originals[train_idx], labels[train_idx], TRAIN_IMAGES - val_images, generator)
    val_x, val_y = draw(originals[val_idx], labels[val_idx], val_images, generator)
    test_x, test_y = draw(originals[test_idx], labels[test_idx], TEST_IMAGES, generator)
    names = [str(name) for name in digits.target_names]
    return Source(
        train_x, train_y, names, 255, test_images=test_x, test_labels=test_y, val_images=val_x, val_labels=val_y
    )


def draw(
    originals: torch.Tensor, labels: torch.Tensor, n: int, generator: torch.Generator, chunk: int = 10_000
) -> tuple[torch.Tensor, torch.Tensor]:
    """n uint8 images of 1 x 28 x 28: random originals, each placed in MNIST's 20 x 20 box and warped."""
    picks = torch.randint(len(originals), (n,), generator=generator)
    # Like MNIST: the digit fills a 20 x 20 box centred in the 28 x 28 image.
    boxed = F.pad(F.interpolate(originals, size=(20, 20), mode="bilinear", align_corners=False), (4, 4, 4, 4))
    images = []
    for start in range(0, n, chunk):
        index = picks[start : start + chunk]
        images.append(_warp(boxed[index], generator))
    return torch.cat(images), labels[picks]


def _warp(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n = len(images)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle, scale = uniform(-15, 15) * math.pi / 180, uniform(0.85, 1.15)
    shift_x, shift_y = uniform(-0.15, 0.15), uniform(-0.15, 0.15)  # in [-1, 1] image coordinates: ~2 pixels
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    noisy = warped + 0.08 * torch.randn(warped.shape, generator=generator)
    return (noisy.clamp(0, 1) * 255).round().to(torch.uint8)
