"""What the network learns: a class per sample (classification) or a number (regression).

A task gives the model its loss, the sums an epoch's metrics are made of, and what its outputs mean. Metrics are
summed on the device piece by piece and divided once per epoch (models/lit_model.py), so each sum is a tensor
the loop adds to without waiting for the device.

Regression learns the target standardised with the training split's mean and std (prepare wrote them to
meta.json): the loss is in units of the target's variance, whatever its scale, so one learning rate and one
sanity threshold suit every target. Every number it reports (RMSE, MAE, predictions) is back in the target's
units; R² has none.
"""

import math
from typing import Any

import torch
import torch.nn.functional as F

from litpipe.errors import ConfigError

CLASSIFICATION, REGRESSION = "classification", "regression"


class Classification:
    name = CLASSIFICATION
    score = "acc"  # the one metric HPARAMS and the search's trials show beside the loss
    higher_is_better = True
    reported = ("accuracy", "loss")  # the test stage's numbers (results/test/metrics.json)
    headline = "accuracy"  # the score, as the test stage names it

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y)

    def losses(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each sample's loss (their mean is `loss`): the test split's own interval resamples them."""
        return F.cross_entropy(out, y, reduction="none")

    def sums(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        return torch.stack((loss.detach() * len(y), (out.argmax(dim=1) == y).sum().to(loss.dtype)))

    def means(self, sums: torch.Tensor, samples: int) -> dict[str, torch.Tensor]:
        loss, acc = sums / samples
        return {"loss": loss, "acc": acc}

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        """Class probabilities."""
        return out.softmax(dim=1)


class Regression:
    name = REGRESSION
    score = "rmse"
    higher_is_better = False
    reported = ("rmse", "mae", "r2", "loss")
    headline = "rmse"

    def __init__(self, mean: float, std: float, huber: bool = False) -> None:
        self.mean, self.std, self.huber = mean, std, huber

    def standardise(self, y: torch.Tensor) -> torch.Tensor:
        """The target (float64, as precise as its file: a timestamp keeps its seconds) in units of its spread, as
        float32 for the network's loss."""
        return ((y - self.mean) / self.std).float()

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.losses(out, y, reduction="mean")

    def losses(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        criterion = F.huber_loss if self.huber else F.mse_loss
        return criterion(out[:, 0], self.standardise(y), reduction=reduction)

    def sums(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """Loss, squared and absolute errors, and the target's sum and sum of squares (for R²): standardised units,
        where float32 sums stay accurate whatever the target's scale."""
        z = self.standardise(y)
        error = out[:, 0].detach() - z
        return torch.stack((loss.detach() * len(y), error.square().sum(), error.abs().sum(), z.sum(), z.square().sum()))

    def means(self, sums: torch.Tensor, samples: int) -> dict[str, torch.Tensor]:
        loss, squared, absolute, total, total_squares = sums
        spread = total_squares - total**2 / samples  # the target's sum of squares about its mean
        return {
            "loss": loss / samples,
            "rmse": (squared / samples).sqrt() * self.std,
            "mae": absolute / samples * self.std,
            # Undefined for a constant target: NaN, as scikit-learn's r2_score gives with force_finite=False.
            "r2": 1 - squared / spread if spread > 0 else torch.full_like(spread, math.nan),
        }

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        """Predictions in the target's units."""
        return out[:, 0] * self.std + self.mean


Task = Classification | Regression


def make(name: str, target_mean: float, target_std: float, loss: str) -> Task:
    """The task a model's hyperparameters name, with the loss optim.loss picks."""
    if name == REGRESSION:
        return Regression(target_mean, target_std, huber=loss == "huber")
    if loss == "huber":
        raise ConfigError("optim.loss: huber is a regression loss, and the prepared data is for classification")
    return Classification()


def of_data(meta: dict[str, Any]) -> dict[str, Any]:
    """The model's task hyperparameters for the prepared data (meta.json)."""
    if of(meta) is Regression:
        return {
            "task": REGRESSION,
            "num_classes": 1,
            "target_mean": meta["target"]["mean"],
            "target_std": meta["target"]["std"],
        }
    return {"task": CLASSIFICATION, "num_classes": meta["num_classes"]}


def of(meta: dict[str, Any]) -> type[Task]:
    """The prepared data's task (meta.json): its metric names, score and the like, without a model."""
    return Regression if meta.get("task") == REGRESSION else Classification  # data prepared before: classes
