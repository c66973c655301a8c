"""Datasets: each loads into a `Source` of images (data/source.py) or a `Table` of rows (data/table.py), which
prepare writes as the prepared splits that every later stage reads (data/prepared.py).

DATASETS are the names `data.dataset` accepts; data/loaders.py maps each to its loader. Only prepare imports
the loaders, so editing one re-runs prepare alone, and validating params.yaml imports no torchvision.
Adding a dataset: a module with a `load(params: DataParams) -> Source` (or `-> Table`), its name here, its entry
in loaders.LOADERS (a test checks that the two agree).
"""

DATASETS = (
    "digits",
    "folder",
    "mnist",
    "fashion_mnist",
    "kmnist",
    "cifar10",
    "synthetic_mnist",
    "synthetic_cifar10",
    "table",
    "diabetes",
    "wine",
)
TABLES = ("table", "diabetes", "wine")  # rows and columns (data/table.py); the other datasets are images
