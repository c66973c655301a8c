"""Random horizontal flips and random crops of a batch of images, on the batch's device.

Pure tensor operations, vectorised over the batch, on raw images of any dtype (uint8 in, uint8 out),
before normalisation. The random numbers come from torch's global generator of the batch's device, so
`seed_everything` makes runs reproducible and a resumed fit, whose generator states are restored
(litpipe.preemption), draws what the uninterrupted one would have drawn. With both off nothing is drawn.
"""

import torch
import torch.nn.functional as F

from litpipe.errors import StageError


def check_crop(padding: int, input_shape: list[int]) -> None:
    """A crop padding the images of `input_shape` (channels, height, width) can take: smaller than their
    side, so every crop keeps part of the image (a larger one could crop nothing but padding)."""
    side = min(input_shape[-2:])
    if padding >= side:
        shape = "x".join(map(str, input_shape[-2:]))
        raise StageError(
            f"train.augment_crop: {padding} pixels of padding is not smaller than the {shape} images' side; "
            f"use at most {side - 1}, or 0 for no crops"
        )


def augment(x: torch.Tensor, flip: bool, crop: int) -> torch.Tensor:
    """`x` (samples, channels, height, width) with each sample flipped left-right with probability 1/2
    (if `flip`), then padded by `crop` pixels of zeros on every side and cropped back to its size at a
    random offset (if `crop` > 0). Flips are drawn before crops, both one number per sample."""
    if flip:
        x = random_flip(x)
    if crop:
        x = random_crop(x, crop)
    return x


def random_flip(x: torch.Tensor) -> torch.Tensor:
    mirrored = torch.rand(len(x), device=x.device) < 0.5
    return torch.where(mirrored.view(-1, 1, 1, 1), x.flip(-1), x)


def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Each sample: the window of x's size at offsets (dy, dx), each uniform in [0, 2 * padding], of the
    sample padded by `padding`. Zeros pad: the background of the digit datasets, and torchvision's
    RandomCrop default (the CIFAR recipe); reflecting or replicating would invent strokes at the border."""
    n, channels, height, width = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy, dx = torch.randint(0, 2 * padding + 1, (2, n, 1), device=x.device)
    rows = dy + torch.arange(height, device=x.device)  # (n, height): the padded rows each sample keeps
    cols = dx + torch.arange(width, device=x.device)
    samples = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    planes = torch.arange(channels, device=x.device).view(1, channels, 1, 1)
    return padded[samples, planes, rows.view(n, 1, height, 1), cols.view(n, 1, 1, width)]
