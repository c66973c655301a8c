"""Digits in the shapes of MNIST and CIFAR-10, with no download: scikit-learn's 8x8 digits drawn large,
each copy randomly rotated, scaled, shifted and noised, the same on every machine.

- `synthetic_mnist`: 60,000 training and 10,000 test images of 1 x 28 x 28, as MNIST has;
- `synthetic_cifar10`: 50,000 training and 10,000 test images of 3 x 32 x 32, as CIFAR-10 has: each digit in
  a random colour on a background of another.

data.val_fraction of the training images are the validation split. Validation and test images each come
from originals that no other split's images were drawn from: a validation image warped from a training digit
would measure memory, not generalisation.

For measuring speed at real scale anywhere (`litpipe bench --synthetic [cifar10]`) and for running the whole
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
CIFAR_TRAIN_IMAGES = 50_000
SEED = 0  # a fixed dataset: data.split_seed splits it, it does not redraw it


def load(params: DataParams) -> Source:
    """MNIST's shape: grey 28 x 28 images, the digit in a centred 20 x 20 box."""
    return _load(params, TRAIN_IMAGES, side=28, box=20, colour=False)


def load_cifar10(params: DataParams) -> Source:
    """CIFAR-10's shape: colour 32 x 32 images, the digit in a centred 24 x 24 box."""
    return _load(params, CIFAR_TRAIN_IMAGES, side=32, box=24, colour=True)


def _load(params: DataParams, train_images: int, side: int, box: int, colour: bool) -> Source:
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
    val_images = round(train_images * params.val_fraction)
    generator = torch.Generator().manual_seed(SEED)
    drawn = {
        split: draw(originals[index], labels[index], n, generator, side=side, box=box, colour=colour)
        for split, index, n in (
            ("train", train_idx, train_images - val_images),
            ("val", val_idx, val_images),
            ("test", test_idx, TEST_IMAGES),
        )
    }
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = drawn.values()
    names = [str(name) for name in digits.target_names]
    return Source(
        train_x, train_y, names, 255, test_images=test_x, test_labels=test_y, val_images=val_x, val_labels=val_y
    )


def draw(
    originals: torch.Tensor,
    labels: torch.Tensor,
    n: int,
    generator: torch.Generator,
    chunk: int = 10_000,
    side: int = 28,
    box: int = 20,
    colour: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """n uint8 images of `side` x `side` (3 channels in colour): random originals, each placed in a centred
    `box` x `box` square (MNIST's 20 in 28) and warped."""
    picks = torch.randint(len(originals), (n,), generator=generator)
    margin = (side - box) // 2
    boxed = F.pad(
        F.interpolate(originals, size=(box, box), mode="bilinear", align_corners=False),
        (margin, side - box - margin, margin, side - box - margin),
    )
    images = []
    for start in range(0, n, chunk):
        index = picks[start : start + chunk]
        warped = _warp(boxed[index], generator)
        images.append(_quantised(_coloured(warped, generator) if colour else warped))
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
    return warped + 0.08 * torch.randn(warped.shape, generator=generator)


def _coloured(grey: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each grey digit in a random colour on a background of another, a little noise in every channel."""
    n = len(grey)
    ink, paper = torch.rand(n, 3, 1, 1, generator=generator), torch.rand(n, 3, 1, 1, generator=generator)
    strength = grey.clamp(0, 1)
    return strength * ink + (1 - strength) * paper + 0.04 * torch.randn(n, 3, *grey.shape[2:], generator=generator)


def _quantised(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)
