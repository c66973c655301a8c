"""The loader of each dataset that data.dataset may name (DATASETS): imported by prepare only."""

from collections.abc import Callable

from litpipe.config import DataParams
from litpipe.data import digits, folder, synthetic, torchvision_sets
from litpipe.data.source import Source

LOADERS: dict[str, Callable[[DataParams], Source]] = {
    "digits": digits.load,
    "folder": folder.load,
    "mnist": torchvision_sets.load_mnist,
    "fashion_mnist": torchvision_sets.load_fashion_mnist,
    "kmnist": torchvision_sets.load_kmnist,
    "cifar10": torchvision_sets.load_cifar10,
    "synthetic_mnist": synthetic.load,
    "synthetic_cifar10": synthetic.load_cifar10,
}
