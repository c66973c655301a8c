"""The trivial baseline beside the network's test numbers, checked against scikit-learn's own."""

import numpy as np
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.metrics import accuracy_score, log_loss

from litpipe import baselines


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_trivial_baseline_is_scikit_learns_prior_classifier(seed):
    """Unbalanced classes, one of them missing from the training split: accuracy and loss as DummyClassifier
    (strategy "prior") and log_loss give them."""
    rng = np.random.default_rng(seed)
    train = rng.choice(5, size=400, p=[0.5, 0.2, 0.2, 0.1, 0.0])
    test = rng.choice(5, size=150, p=[0.3, 0.3, 0.2, 0.1, 0.1])
    dummy = DummyClassifier(strategy="prior").fit(np.zeros((len(train), 1)), train)
    probabilities = np.zeros((len(test), 5))
    probabilities[:, dummy.classes_] = dummy.predict_proba(np.zeros((len(test), 1)))
    expected = {
        "accuracy": accuracy_score(test, dummy.predict(np.zeros((len(test), 1)))),
        "loss": log_loss(test, probabilities, labels=range(5)),
    }
    got = baselines.trivial(np.bincount(train, minlength=5).tolist(), test)
    assert got == pytest.approx(expected, rel=1e-9)


def test_the_margin_says_whether_the_network_beats_it():
    assert baselines.margin(0.9, 0.1) == "beats the trivial baseline (0.1000) by 0.8000"
    assert baselines.margin(0.05, 0.1).startswith("does not beat the trivial baseline (0.1000)")
    assert baselines.margin(0.1, 0.1) == "equals the trivial baseline (0.1000)"
    # Lower is better for an error: an RMSE below the baseline's beats it.
    assert (
        baselines.margin(2.0, 3.0, "linear", higher_is_better=False) == "beats the linear baseline (3.0000) by 1.0000"
    )
    assert baselines.margin(4.0, 3.0, "linear", higher_is_better=False) == "does not beat the linear baseline (3.0000)"
