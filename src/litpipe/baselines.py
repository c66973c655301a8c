"""What a model scores that ignores its input, beside the network's test numbers (results/test/metrics.json).

The trivial baseline predicts the training split's class frequencies for every test sample, as scikit-learn's
DummyClassifier(strategy="prior") does: its accuracy is that of always answering the most frequent training
class, its loss the cross-entropy of those frequencies. A network that does not beat it has learned nothing
from its inputs, however good its accuracy looks on unbalanced classes.
"""

import numpy as np

# Like scikit-learn's log_loss: a class the training split lacks costs -log(eps), not infinity.
EPSILON = float(np.finfo(np.float64).eps)


def trivial(train_counts: list[int], test_labels: np.ndarray) -> dict[str, float]:
    """The trivial baseline's test accuracy and loss, from the training split's count of each class."""
    counts = np.asarray(train_counts, dtype=np.float64)
    frequencies = counts / counts.sum()
    labels = np.asarray(test_labels)
    return {
        "accuracy": float(np.mean(labels == counts.argmax())),
        "loss": float(-np.mean(np.log(np.clip(frequencies[labels], EPSILON, 1.0)))),
    }


def margin(network: float, baseline: float) -> str:
    """The network's accuracy against the baseline's, in words."""
    if network > baseline:
        return f"beats the trivial baseline ({baseline:.4f}) by {network - baseline:.4f}"
    return f"does not beat the trivial baseline ({baseline:.4f}), which never looks at its inputs"
