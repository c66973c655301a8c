"""The optimiser and learning-rate schedule that params.optim names, for every loop that trains: the model's
(manual optimization, which steps the schedules itself) and the bench's plain loop.

A schedule is a list of Lightning scheduler configs, each stepped at its `interval`: "step" after every
optimizer step (one per `batch_size` piece, however many pieces a batch holds), "epoch" after validation
(ReduceLROnPlateau on the validation loss). The shapes:
- plateau: the learning rate times `plateau_factor` after `plateau_patience` epochs without improvement;
- cosine: from the learning rate down to 0 at the last step of `max_epochs`, on a half cosine;
- onecycle: torch's OneCycleLR, up to the learning rate and down again (its momentum cycles too);
- none: the learning rate throughout.
`warmup_epochs` first raises the rate linearly from a step's worth to the full rate: for onecycle, it is
the rising part (else torch's 30% of the run).
"""

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, LinearLR, OneCycleLR, ReduceLROnPlateau


def optimizer(
    name: str, parameters: Any, lr: float, weight_decay: float, momentum: float, nesterov: bool, kernel: dict
) -> torch.optim.Optimizer:
    """`kernel`: torch's implementation choice ({"fused": True}, {"foreach": True} or {}), which all three take."""
    if name == "sgd":
        return torch.optim.SGD(
            parameters, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, **kernel
        )
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    return kind(parameters, lr=lr, weight_decay=weight_decay, **kernel)


def schedule(
    optimizer: torch.optim.Optimizer,
    name: str,
    warmup_epochs: int,
    steps_per_epoch: int,
    max_epochs: int,
    plateau_factor: float,
    plateau_patience: int,
) -> list[dict[str, Any]]:
    """The scheduler configs of schedule `name` for a run of `max_epochs` epochs of `steps_per_epoch` steps."""
    total = max(1, steps_per_epoch * max_epochs)
    warmup = min(total, warmup_epochs * steps_per_epoch)
    if name == "onecycle":
        rise = warmup / total if warmup else 0.3
        return [_each_step(OneCycleLR(optimizer, max_lr=_lrs(optimizer), total_steps=total, pct_start=rise))]
    if name == "plateau":
        # The warmup multiplies whatever rate the plateau schedule has set (LinearLR is chainable), and
        # leaves the rate alone once it is over.
        warming = [_each_step(LinearLR(optimizer, 1 / warmup, 1.0, total_iters=warmup - 1))] if warmup > 1 else []
        plateau = ReduceLROnPlateau(optimizer, mode="min", factor=plateau_factor, patience=plateau_patience)
        return [*warming, {"scheduler": plateau, "interval": "epoch"}]
    if name == "none" and not warmup:
        return []
    return [_each_step(LambdaLR(optimizer, Shape(warmup, total, cosine=name == "cosine")))]


class Shape:
    """The learning rate's factor at each step: a linear warmup over `warmup` steps, then 1 or a half cosine
    down to 0 at step `total` - 1. A class, not a closure: a scheduler's state (in resume checkpoints) keeps it."""

    def __init__(self, warmup: int, total: int, cosine: bool) -> None:
        self.warmup, self.total, self.cosine = warmup, total, cosine

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if not self.cosine:
            return 1.0
        progress = (step - self.warmup) / max(1, self.total - 1 - self.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _each_step(scheduler: Any) -> dict[str, Any]:
    return {"scheduler": scheduler, "interval": "step"}


def _lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [group["lr"] for group in optimizer.param_groups]
