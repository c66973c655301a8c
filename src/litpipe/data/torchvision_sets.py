"""The MNIST family through the real torchvision dataset classes.

An existing copy under `data.root` (torchvision's layout: <root>/<ClassName>/raw/*-ubyte) is used
as is; otherwise torchvision downloads it, which needs network access.
"""

import contextlib
from pathlib import Path

import torch
from torchvision import datasets

from litpipe.config import DataParams
from litpipe.data.source import Source
from litpipe.errors import StageError


def _load(cls: type[datasets.MNIST], params: DataParams) -> Source:
    train, test = (_open(cls, params.root, train) for train in (True, False))
    return Source(
        images=train.data.unsqueeze(1).to(torch.uint8),
        labels=train.targets.long(),
        class_names=list(train.classes),
        pixel_max=255,
        test_images=test.data.unsqueeze(1).to(torch.uint8),
        test_labels=test.targets.long(),
    )


def _open(cls: type[datasets.MNIST], root: str, train: bool) -> datasets.MNIST:
    try:
        return cls(root, train=train, download=False)
    except RuntimeError:
        pass  # not on disk yet
    folders = [Path(root), Path(root) / cls.__name__, Path(root) / cls.__name__ / "raw"]
    made = [folder for folder in folders if not folder.exists()]
    try:
        return cls(root, train=train, download=True)
    except (RuntimeError, OSError) as error:
        for folder in reversed(made):  # a failed download leaves only the folders it made: remove them
            with contextlib.suppress(OSError):  # not empty: something was downloaded after all
                folder.rmdir()
        reason = str(error).splitlines()[0].rstrip(":")  # torchvision lists every mirror it tried, line by line
        raise StageError(
            f"{cls.__name__} is not under {root}/{cls.__name__}/raw and could not be downloaded ({reason})"
        ) from None


def load_mnist(params: DataParams) -> Source:
    return _load(datasets.MNIST, params)


def load_fashion_mnist(params: DataParams) -> Source:
    return _load(datasets.FashionMNIST, params)


def load_kmnist(params: DataParams) -> Source:
    return _load(datasets.KMNIST, params)
