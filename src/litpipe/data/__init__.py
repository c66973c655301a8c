"""Dataset registry: name -> "module:function" returning a `Source` (see data/source.py).

Adding a dataset is one module with a loader plus one line here. Entries are strings so that
validating params.yaml does not import torchvision.
"""

DATASETS = {
    "digits": "litpipe.data.digits:load",
    "folder": "litpipe.data.folder:load",
    "mnist": "litpipe.data.torchvision_sets:load_mnist",
    "fashion_mnist": "litpipe.data.torchvision_sets:load_fashion_mnist",
    "kmnist": "litpipe.data.torchvision_sets:load_kmnist",
    "cifar10": "litpipe.data.torchvision_sets:load_cifar10",
    "synthetic_mnist": "litpipe.data.synthetic:load",
}
