"""The loader of each dataset that data.dataset may name (DATASETS): imported by prepare only."""

from collections.abc import Callable

from litpipe.config import DataParams
from litpipe.data import digits, folder, synthetic, table, torchvision_sets
from litpipe.data.source import Source
from litpipe.data.table import Table

LOADERS: dict[str, Callable[[DataParams], Source | Table]] = {
    "digits": digits.load,
    "folder": folder.load,
    "mnist": torchvision_sets.load_mnist,
    "fashion_mnist": torchvision_sets.load_fashion_mnist,
    "kmnist": torchvision_sets.load_kmnist,
    "cifar10": torchvision_sets.load_cifar10,
    "synthetic_mnist": synthetic.load,
    "synthetic_cifar10": synthetic.load_cifar10,
    "table": table.load,
    "diabetes": table.load_diabetes,
    "wine": table.load_wine,
}
