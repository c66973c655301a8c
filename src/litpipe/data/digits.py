"""scikit-learn's 8x8 handwritten digits: 1,797 images that ship inside the package (no network)."""

import torch
from sklearn.datasets import load_digits

from litpipe.config import DataParams
from litpipe.data.source import Source


def load(params: DataParams) -> Source:
    digits = load_digits()
    images = torch.from_numpy(digits.images).to(torch.uint8).unsqueeze(1)  # values 0..16
    labels = torch.from_numpy(digits.target).long()
    return Source(images, labels, [str(name) for name in digits.target_names], pixel_max=16)
