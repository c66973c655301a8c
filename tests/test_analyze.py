"""The analysis numbers `litpipe analyze` writes (confusion matrix, per-class precision and recall, expected
calibration error) against scikit-learn and an independent computation of the calibration error: for a
trained model, and for the degenerate cases a small test split meets (a class never predicted, a class with
no test sample, confidences of exactly 1 and on a bin's edge)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from litpipe import paths
from litpipe.data.prepared import load_meta, load_split
from litpipe.io import write_json
from litpipe.models.lit_model import LitModel
from litpipe.stages import analyze, fit

from .helpers import write_network

BINS = 10  # the reliability diagram's equal-width confidence bins


def calibration_error(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Expected calibration error over BINS equal-width bins, each (low, high] (the first [0, high]): the
    mean over samples of |accuracy - mean confidence| of their bin."""
    edges = np.linspace(0, 1, BINS + 1)
    bins = np.clip(np.digitize(confidence, edges, right=True) - 1, 0, BINS - 1)
    error = 0.0
    for b in np.unique(bins):
        members = bins == b
        gap = correct[members].mean() - confidence[members].astype(np.float64).mean()
        error += members.sum() / len(confidence) * abs(gap)
    return float(error)


def predictions(logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's predicted class (the first of equal scores) and its probability, as the model gives them
    (float32)."""
    probabilities = logits.softmax(dim=1).numpy()
    return probabilities.argmax(axis=1), probabilities.max(axis=1)


def assert_tables_match_scikit_learn(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    """analyze's confusion, per-class and calibration numbers for these logits, as analyze.run computes them."""
    residuals = analyze.residual_table(logits, labels)
    confusion = analyze.confusion_table(residuals, num_classes)
    per_class = analyze.per_class_table(residuals, confusion, [f"class {c}" for c in range(num_classes)])
    ece = analyze.expected_calibration_error(analyze.reliability(residuals), len(residuals))

    (predicted, confidence), truth, everyone = predictions(logits), labels.numpy(), list(range(num_classes))
    np.testing.assert_array_equal(confusion.to_numpy(), confusion_matrix(truth, predicted, labels=everyone))
    precision, recall, _, support = precision_recall_fscore_support(truth, predicted, labels=everyone, zero_division=0)
    np.testing.assert_allclose(per_class["precision"], precision, rtol=1e-12)
    np.testing.assert_allclose(per_class["recall"], recall, rtol=1e-12)
    np.testing.assert_array_equal(per_class["support"], support)
    assert ece == pytest.approx(calibration_error(confidence, predicted == truth), abs=1e-6)


def test_the_analysis_of_a_trained_model_matches_scikit_learn(digits):
    """A two-epoch model of 16 units, analysed by the stage; its files checked against the checkpoint
    evaluated here."""
    write_json(paths.SEARCH_BEST, {"params": {}})
    params = digits.override({"train.max_epochs": 2, "model.kwargs.mlp.width": 16, "train.accelerator": "cpu"})
    fit.run(params)
    analyze.run(params)

    test = load_split("test")
    with torch.no_grad():
        logits = LitModel.from_checkpoint(paths.BEST_CKPT)(test.x)
    (predicted, confidence), truth = predictions(logits), test.y.numpy()
    everyone = list(range(load_meta()["num_classes"]))

    written = pd.read_csv(paths.ANALYSIS / "confusion.csv", index_col=0).to_numpy()
    np.testing.assert_array_equal(written, confusion_matrix(truth, predicted, labels=everyone))
    per_class = pd.read_csv(paths.PER_CLASS_TABLE)
    precision, recall, _, support = precision_recall_fscore_support(truth, predicted, labels=everyone, zero_division=0)
    np.testing.assert_allclose(per_class["precision"], precision, rtol=1e-9)
    np.testing.assert_allclose(per_class["recall"], recall, rtol=1e-9)
    np.testing.assert_array_equal(per_class["support"], support)
    summary = json.loads(paths.ANALYSIS_SUMMARY.read_text())
    assert summary["mistakes"] == int((predicted != truth).sum())
    assert summary["accuracy"] == pytest.approx((predicted == truth).mean(), abs=1e-12)
    expected = calibration_error(confidence, predicted == truth)
    assert summary["expected_calibration_error"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("layers", [[], ["stage1.0.body", "stem"]], ids=["blocks", "named-layers"])
def test_the_pca_shows_each_block_or_named_layer_with_maps_pooled_per_channel(digits, layers):
    """A researcher's convolutional network: the PCA covers its top-level blocks, or the modules analyze.layers
    names; each map is averaged per channel first, checked with scikit-learn's PCA of maps pooled here."""
    from sklearn.decomposition import PCA

    write_network(paths.PARAMS.parent.absolute())
    params = digits.override(
        {
            "model.arch": "nets/small.py:SmallResNet",
            "model.kwargs.SmallResNet": {"channels": 8, "blocks": 1},
            "train.max_epochs": 2,
            "analyze.layers": layers,
        }
    )
    write_json(paths.SEARCH_BEST, {"params": {}})
    fit.run(params)
    analyze.run(params)

    model, test = LitModel.from_checkpoint(paths.BEST_CKPT), load_split("test")
    modules = dict(model.net.named_modules())
    expected = layers or ["stem", "stage1", "head"]
    maps = {}
    hooks = [
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: maps.__setitem__(name, out))
        for name in expected
    ]
    with torch.no_grad():
        model(test.x)
    for hook in hooks:
        hook.remove()
    explained = json.loads(paths.ANALYSIS_SUMMARY.read_text())["pca_explained_variance"]
    assert sorted(explained) == sorted(expected)
    for name in expected:
        values = maps[name].mean(dim=(2, 3)) if maps[name].dim() == 4 else maps[name]
        assert values.shape[1] == (10 if name == "head" else 8)  # 8 channels, or the 10 classes' logits
        reference = PCA(n_components=2).fit(values.double().numpy()).explained_variance_ratio_
        np.testing.assert_allclose(explained[name], reference, rtol=1e-3, atol=1e-6)


def test_a_layer_the_network_does_not_have_is_one_line_naming_a_close_one():
    from litpipe.errors import ConfigError
    from litpipe.models import zoo
    from litpipe.models.networks import CNN

    net = CNN((1, 8, 8), num_classes=10, width=4, depth=2, dropout=0.0)
    close = r"^analyze.layers: CNN has no module 'hiden.conv1' \(did you mean hidden.conv1\?\)$"
    with pytest.raises(ConfigError, match=close):
        zoo.blocks(net, ["hidden.conv1", "hiden.conv1"])
    far = r"^analyze.layers: CNN has no module 'zzz' \(its blocks are hidden.conv1, hidden.conv2\)$"
    with pytest.raises(ConfigError, match=far):
        zoo.blocks(net, ["zzz"])
    assert list(zoo.blocks(net, ["hidden.conv2", "head"])) == ["hidden.conv2", "head"]


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # analyze.reliability writes its table to results/analysis


def test_degenerate_analyses_match_scikit_learn(scratch):
    """Four classes, eight samples: class 3 never predicted (its precision 0/0 is 0), class 2 predicted once
    but never the truth (its recall 0/0 is 0), confidences of exactly 1 (the last bin's upper edge)."""
    big = 100.0  # softmax of 100 against 0s is 1.0 in float32
    logits = torch.tensor(
        [
            [big, 0, 0, 0],  # 0 -> 0, confidence 1
            [0, big, 0, 0],  # 1 -> 1, confidence 1
            [0, big, 0, 0],  # 0 -> 1, confidence 1: a certain mistake
            [2.0, 0, 0, 0],  # 0 -> 0
            [0, 0, 1.5, 0],  # 3 -> 2
            [0, 1.0, 0, 0],  # 3 -> 1
            [1.0, 0, 0, -1e4],  # 1 -> 0
            [0, 0.7, -1e4, -1e4],  # 1 -> 1
        ]
    )
    labels = torch.tensor([0, 1, 0, 0, 3, 3, 1, 1])
    assert_tables_match_scikit_learn(logits, labels, num_classes=4)


def test_tied_scores_and_a_confidence_on_a_bins_edge(scratch):
    """Two classes scored alike: the first is predicted (as argmax does), with a confidence of exactly 0.5,
    a bin's upper edge: it counts in the bin below."""
    halves = torch.tensor([[0.0, 0.0, -1e4], [0.0, -1e4, 0.0]])
    assert analyze.residual_table(halves, torch.tensor([0, 2]))["predicted"].tolist() == [0, 0]
    assert_tables_match_scikit_learn(halves, torch.tensor([0, 2]), num_classes=3)


def test_a_perfect_and_a_hopeless_model(scratch):
    """All right and certain: no calibration error, precision and recall 1 where a class has samples. All
    wrong and certain: an error of 1."""
    labels = torch.tensor([0, 1, 2, 2])
    certain = torch.nn.functional.one_hot(labels, 3).float() * 100
    assert_tables_match_scikit_learn(certain, labels, num_classes=3)
    wrong = torch.nn.functional.one_hot((labels + 1) % 3, 3).float() * 100
    assert_tables_match_scikit_learn(wrong, labels, num_classes=3)
    residuals = analyze.residual_table(wrong, labels)
    assert residuals["confidence"].eq(1).all() and not residuals["correct"].any()
    table = analyze.reliability(residuals)
    assert analyze.expected_calibration_error(table, len(residuals)) == 1.0
