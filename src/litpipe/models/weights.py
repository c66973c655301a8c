"""Starting weights for fine-tuning: `model.weights`, a file of the repository (tracked by DVC, never
downloaded), loaded into the network before training, and `train.freeze_epochs`, epochs that train the head
alone.

The file is read with `weights_only=True` (nothing in it can run code) and may be a state dict (torchvision's
`.pth` files are), a dict holding one under `state_dict` or `model`, or a checkpoint of litpipe's fit (its
network's weights, checked against the checkpoint's SHA-256). Each tensor whose name and shape fit the network
is loaded. What the file lacks, what the network lacks, and what fits in name but not in shape (the head of a
model trained for another class count, a first convolution adapted to the data's channels) are one log line
each; those parameters keep their fresh initialisation. A file of which nothing fits is refused.
"""

import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from litpipe import checkpoints
from litpipe.errors import ConfigError, StageError

log = logging.getLogger(__name__)

NETWORK_PREFIX = "net."  # the network's keys inside the model of a litpipe checkpoint


def load_into(net: nn.Module, path: str | Path) -> None:
    """The file's tensors that fit `net`, loaded into it in place."""
    state = state_dict(Path(path))
    own = net.state_dict()
    fits = {key: value for key, value in state.items() if key in own and value.shape == own[key].shape}
    if not fits:
        raise ConfigError(
            f"model.weights: none of the {len(state)} tensors of {path} fit {type(net).__name__} "
            f"(its first keys: {', '.join(list(state)[:3])}; the network's: {', '.join(list(own)[:3])})"
        )
    net.load_state_dict(fits, strict=False)
    reshaped = [key for key in state if key in own and key not in fits]
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    log.info("model.weights: loaded %d of the network's %d tensors from %s", len(fits), len(own), path)
    if reshaped:
        log.info("model.weights: another shape in the file, so initialised afresh (a new head): %s", _few(reshaped))
    if missing:
        log.info("model.weights: missing from the file, so initialised afresh: %s", _few(missing))
    if unexpected:
        log.info("model.weights: in the file but not in the network, so ignored: %s", _few(unexpected))


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The network's tensors in the file, by name; one line naming the file when it holds none."""
    if not path.is_file():
        raise ConfigError(f"model.weights: {path} not found (a file of the repository, tracked by DVC)")
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error):  # a class or function: loading it would run its code
            raise ConfigError(f"model.weights: {path} refused: it holds objects that would run code when loaded")
        raise ConfigError(f"model.weights: {path} is not a file of weights (torch.load cannot read it)") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as error:  # a damaged archive
        raise ConfigError(f"model.weights: {path} cannot be read ({str(error).splitlines()[0]})") from None
    if isinstance(contents, dict) and checkpoints.DIGEST_KEY in contents:  # litpipe's fit saved it
        try:
            contents = checkpoints.read(path)["state_dict"]
        except StageError as error:
            raise ConfigError(f"model.weights: {error}") from None
        return {k.removeprefix(NETWORK_PREFIX): v for k, v in contents.items() if k.startswith(NETWORK_PREFIX)}
    for key in ("state_dict", "model"):
        if isinstance(contents, dict) and isinstance(contents.get(key), dict):
            contents = contents[key]
            break
    tensors = {k: v for k, v in contents.items() if isinstance(v, torch.Tensor)} if isinstance(contents, dict) else {}
    if not tensors:
        raise ConfigError(f"model.weights: {path} holds no state dict (found {type(contents).__name__})")
    if all(key.startswith("module.") for key in tensors):  # saved from DataParallel or DDP
        tensors = {key.removeprefix("module."): value for key, value in tensors.items()}
    return tensors


def head(net: nn.Module) -> nn.Module:
    """The module that gives the logits: the network's last linear layer (a ResNet's `fc`, the last layer of
    a `classifier`), else its last module with parameters of its own."""
    linear = [module for module in net.modules() if isinstance(module, nn.Linear)]
    if linear:
        return linear[-1]
    return [module for module in net.modules() if next(module.parameters(recurse=False), None) is not None][-1]


class FreezeBackbone(Callback):
    """For the first `epochs` epochs only the head trains (every other parameter's requires_grad is off, so it
    gets no gradient and the optimiser leaves it as it is); then everything does. Decided from the epoch
    number at each epoch's start, so a resumed fit freezes exactly as an uninterrupted one."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        trains_all = trainer.current_epoch >= self.epochs
        kept = {id(parameter) for parameter in head(pl_module.net).parameters()}
        for parameter in pl_module.net.parameters():
            parameter.requires_grad_(trains_all or id(parameter) in kept)


def _few(keys: list[str], shown: int = 6) -> str:
    return ", ".join(keys[:shown]) + (f" (+{len(keys) - shown} more)" if len(keys) > shown else "")
