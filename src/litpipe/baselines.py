"""What simple models score on the same test split, beside the network's numbers (results/test/metrics.json).

- trivial: ignores its input. To classify, it predicts the training split's class frequencies for every test
  sample, as scikit-learn's DummyClassifier(strategy="prior") does: its accuracy is that of always answering the
  most frequent training class, its loss the cross-entropy of those frequencies. To regress, it predicts the
  training split's mean: its R² is at most 0.
- linear (tables only): logistic regression, or ridge regression, fitted with scikit-learn on the same encoded
  training rows the network trained on.

A network that does not beat the trivial baseline has learned nothing from its inputs, however good its accuracy
looks on unbalanced classes; one that does not beat the linear baseline has found nothing a line would not.
"""

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from torchmetrics.functional import mean_absolute_error, mean_squared_error, r2_score

# Like scikit-learn's log_loss: a class the training split lacks costs -log(eps), not infinity.
EPSILON = float(np.finfo(np.float64).eps)
LINEAR_MAX_ITER = 1000


def trivial(train_counts: list[int], test_labels: np.ndarray) -> dict[str, float]:
    """The trivial classifier's test accuracy and loss, from the training split's count of each class."""
    counts = np.asarray(train_counts, dtype=np.float64)
    frequencies = counts / counts.sum()
    labels = np.asarray(test_labels)
    return {
        "accuracy": float(np.mean(labels == counts.argmax())),
        "loss": float(-np.mean(np.log(np.clip(frequencies[labels], EPSILON, 1.0)))),
    }


def trivial_regression(train_y: np.ndarray, test_y: np.ndarray) -> dict[str, float]:
    """The test numbers of always predicting the training split's mean."""
    return regression_scores(np.full(len(test_y), np.mean(train_y, dtype=np.float64)), test_y)


def linear(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, num_classes: int | None
) -> dict[str, float]:
    """Logistic regression (num_classes given) or ridge regression, fitted on the training rows, on the test rows."""
    if num_classes is None:
        model = Ridge().fit(x_train, y_train)
        return regression_scores(model.predict(x_test), y_test)
    model = LogisticRegression(max_iter=LINEAR_MAX_ITER).fit(x_train, y_train)
    probabilities = np.full((len(x_test), num_classes), EPSILON)
    probabilities[:, model.classes_] = np.clip(model.predict_proba(x_test), EPSILON, 1.0)
    labels = np.asarray(y_test)
    return {
        "accuracy": float(np.mean(model.classes_[model.predict_proba(x_test).argmax(axis=1)] == labels)),
        "loss": float(-np.mean(np.log(probabilities[np.arange(len(labels)), labels]))),
    }


def regression_scores(predicted: np.ndarray | torch.Tensor, actual: np.ndarray | torch.Tensor) -> dict[str, float]:
    """RMSE, MAE (in the target's units) and R² of predictions, through torchmetrics, in float64."""
    p, a = (torch.as_tensor(np.asarray(values), dtype=torch.float64) for values in (predicted, actual))
    return {
        "rmse": float(mean_squared_error(p, a, squared=False)),
        "mae": float(mean_absolute_error(p, a)),
        "r2": float(r2_score(p, a)),
    }


def margin(network: float, baseline: float, name: str = "trivial", higher_is_better: bool = True) -> str:
    """The network's score against a baseline's, in words."""
    better = network > baseline if higher_is_better else network < baseline
    if network == baseline:
        return f"equals the {name} baseline ({baseline:.4f})"
    if better:
        return f"beats the {name} baseline ({baseline:.4f}) by {abs(network - baseline):.4f}"
    if name == "trivial":
        return f"does not beat the trivial baseline ({baseline:.4f}), which never looks at its inputs"
    return f"does not beat the {name} baseline ({baseline:.4f})"
