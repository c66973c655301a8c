"""Dataset registry: name -> "module:function" returning a `Source` (see data/source.py).

Adding a dataset is one module with a loader plus one line here. Entries are strings so that
validating params.yaml does not import torchvision.
"""

DATASETS = {
    "digits": "litpipe.data.digits:load",
    "mnist": "litpipe.data.torchvision_sets:load_mnist",
    "fashion_mnist": "litpipe.data.torchvision_sets:load_fashion_mnist",
    "kmnist": "litpipe.data.torchvision_sets:load_kmnist",
    "synthetic_mnist": "litpipe.data.synthetic:load",
}
