"""The MNIST family and CIFAR-10 through the real torchvision dataset classes.

An existing copy under `data.root` in torchvision's layout is used as is:
<root>/<ClassName>/raw/*-ubyte for the MNIST family, <root>/cifar-10-batches-py/ for CIFAR-10.
Otherwise torchvision downloads it, which needs network access.
"""

import contextlib
from http.client import HTTPException
from pathlib import Path
from typing import TypeVar

import torch
from torchvision import datasets

from litpipe.config import DataParams
from litpipe.data.source import Source
from litpipe.errors import StageError

TorchvisionSet = TypeVar("TorchvisionSet", datasets.MNIST, datasets.CIFAR10)


class CIFAR10(datasets.CIFAR10):
    """torchvision's CIFAR10, checking that each batch file is there but not its MD5.

    torchvision compares every batch file with hard-coded MD5s of the official release, so it refuses
    a researcher's own subset in the same layout (and a test's fabricated copy). The raw files are
    DVC's to track by content (`dvc add data/raw/cifar-10-batches-py`); `check_integrity(path, None)`
    only checks that a file exists. The archive keeps its MD5 (`tgz_md5`), so a download is still checked.
    """

    train_list = [[name, None] for name, _ in datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in datasets.CIFAR10.test_list]
    meta = {**datasets.CIFAR10.meta, "md5": None}


def _load_mnist_family(cls: type[datasets.MNIST], params: DataParams) -> Source:
    root = Path(params.root).expanduser()
    folder = root / cls.__name__ / "raw"
    # Each archive is downloaded into raw/ and extracted next to it; an interrupted one is left partly written.
    archives = [folder / Path(resource).name for resource, _ in cls.resources]
    leftovers = [folder.parent, folder, *archives, *(archive.with_suffix("") for archive in archives)]
    train, test = (_open(cls, root, train, folder, leftovers) for train in (True, False))
    return Source(
        images=train.data.unsqueeze(1).to(torch.uint8),
        labels=train.targets.long(),
        class_names=list(train.classes),
        pixel_max=255,
        test_images=test.data.unsqueeze(1).to(torch.uint8),
        test_labels=test.targets.long(),
        read_from=Path(params.root),
    )


def load_cifar10(params: DataParams) -> Source:
    root = Path(params.root).expanduser()
    folder = root / CIFAR10.base_folder
    # The archive is downloaded into root and extracted there; an interrupted download leaves part of it.
    leftovers = [folder, root / CIFAR10.filename]
    train, test = (_open(CIFAR10, root, train, folder, leftovers) for train in (True, False))
    return Source(
        images=_channels_first(train),
        labels=torch.tensor(train.targets, dtype=torch.int64),
        class_names=list(train.classes),
        pixel_max=255,
        test_images=_channels_first(test),
        test_labels=torch.tensor(test.targets, dtype=torch.int64),
        read_from=Path(params.root),
    )


def _channels_first(dataset: datasets.CIFAR10) -> torch.Tensor:
    """torchvision keeps CIFAR's images as N x H x W x C NumPy (for PIL); a Source is N x C x H x W."""
    return torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous().to(torch.uint8)


def _open(cls: type[TorchvisionSet], root: Path, train: bool, folder: Path, leftovers: list[Path]) -> TorchvisionSet:
    """`cls` from `folder` under root, downloaded when it is not there. `leftovers`, outermost first, are
    what a download may create under root: those a failed download made are removed, with root and its
    parents if it made them (torchvision's `os.makedirs`), so a retry starts clean and DVC sees no stray
    files in data/raw."""
    try:
        return cls(root, train=train, download=False)
    except RuntimeError:
        pass  # not on disk yet
    made = [path for path in (*reversed(root.parents), root, *leftovers) if not path.exists()]
    try:
        return cls(root, train=train, download=True)
    # Offline, urllib raises URLError (an OSError); a wrong checksum is a RuntimeError; a connection
    # dropped mid-file can also be http.client.IncompleteRead, which is neither.
    except (RuntimeError, OSError, HTTPException) as error:
        for path in reversed(made):
            _remove(path)
        lines = str(error).splitlines() or [type(error).__name__]
        reason = lines[0].rstrip(":")  # torchvision's MNIST lists every mirror it tried, line by line
        raise StageError(f"{cls.__name__} is not under {folder} and could not be downloaded ({reason})") from None


def _remove(path: Path) -> None:
    if path.is_dir():
        with contextlib.suppress(OSError):  # not empty: something was downloaded (or extracted) after all
            path.rmdir()
    else:
        path.unlink(missing_ok=True)


def load_mnist(params: DataParams) -> Source:
    return _load_mnist_family(datasets.MNIST, params)


def load_fashion_mnist(params: DataParams) -> Source:
    return _load_mnist_family(datasets.FashionMNIST, params)


def load_kmnist(params: DataParams) -> Source:
    return _load_mnist_family(datasets.KMNIST, params)
