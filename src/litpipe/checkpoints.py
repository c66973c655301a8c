"""Checkpoints that load only what they should, and only when intact.

Every checkpoint of the model carries a SHA-256 of its own contents (added as the last step of
saving, see models/lit_model.py): torch's archive has no checksum of its own, so a flipped byte in a
weight loads silently. Reading uses `weights_only` semantics: nothing in the pickle runs.
"""

import hashlib
import pickle
from pathlib import Path
from typing import Any

import torch

from litpipe.errors import StageError

DIGEST_KEY = "litpipe_sha256"


def digest(contents: dict[str, Any]) -> str:
    """SHA-256 over every value of a checkpoint but the digest itself, tensors by their bytes."""
    sha = hashlib.sha256()
    _update(sha, {key: value for key, value in contents.items() if key != DIGEST_KEY})
    return sha.hexdigest()


def _update(sha: "hashlib._Hash", value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        sha.update(f"tensor {tensor.dtype} {tuple(tensor.shape)}:".encode())
        sha.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        sha.update(f"dict {len(value)}:".encode())
        for key, item in value.items():  # in saved order, which loading keeps
            _update(sha, key)
            _update(sha, item)
    elif isinstance(value, list | tuple):
        sha.update(f"{type(value).__name__} {len(value)}:".encode())
        for item in value:
            _update(sha, item)
    else:
        sha.update(f"{type(value).__name__} {value!r};".encode())


def read(path: Path | str) -> dict[str, Any]:
    """A checkpoint's contents, checked against its digest; one line naming the file when it is missing,
    truncated, damaged, not a checkpoint, or holds objects that would run code when unpickled."""
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StageError(f"{path}: not found") from None
    except pickle.UnpicklingError as error:
        first = str(error).splitlines()[0] if str(error) else "unreadable"
        if "Weights only load failed" in str(error):
            raise StageError(f"{path}: refused: it holds objects that would run code when loaded") from None
        raise StageError(f"{path}: not a checkpoint ({first})") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as error:  # torch's damaged-archive errors
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise StageError(f"{path}: not a readable checkpoint, truncated or damaged ({first})") from None
    if not isinstance(contents, dict) or "state_dict" not in contents:
        raise StageError(f"{path}: not a Lightning checkpoint (it has no state_dict)")
    if DIGEST_KEY not in contents:
        raise StageError(f"{path}: has no checksum (saved by something other than litpipe's fit); run the fit again")
    if contents[DIGEST_KEY] != digest(contents):
        raise StageError(f"{path}: its contents do not match their checksum: the file is damaged; run the fit again")
    return contents
