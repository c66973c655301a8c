"""litpipe: a reproducible PyTorch Lightning research pipeline."""

__version__ = "0.1.0"
