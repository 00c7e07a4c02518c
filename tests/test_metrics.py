"""Metrics against hand-computed confusion matrices, including the degenerate one-class cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from enhancer.train.metrics import (
    auroc,
    classification_metrics,
    confusion_matrix,
    format_metrics,
    sensitivity_specificity,
)


def test_confusion_matrix_and_rates_by_hand():
    # true:  N N N N P P P P P P   (N=0, P=1)
    # pred:  N N N P P P P P N N   -> TN 3, FP 1, TP 4, FN 2
    labels = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    preds = [0, 0, 0, 1, 1, 1, 1, 1, 0, 0]
    cm = confusion_matrix(labels, preds)
    assert cm == [[3, 1], [2, 4]]
    sens, spec = sensitivity_specificity(cm)
    assert sens == pytest.approx(4 / 6)
    assert spec == pytest.approx(3 / 4)


def test_classification_metrics_from_probabilities():
    labels = [0, 0, 1, 1]
    probs = [[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]]  # preds 0, 1, 1, 0
    m = classification_metrics(labels, probs, loss=0.5)
    assert m["confusion_matrix"] == [[1, 1], [1, 1]]
    assert m["accuracy"] == 0.5
    assert (m["sensitivity"], m["specificity"]) == (0.5, 0.5)
    # positive scores 0.7, 0.2 vs negatives 0.1, 0.6: pairs won 0.7>0.1, 0.7>0.6, 0.2>0.1 -> 3 of 4
    assert m["auroc"] == pytest.approx(0.75)
    assert m["auroc_per_class"]["NORMAL"] == pytest.approx(0.75)
    assert m["loss"] == 0.5 and m["n"] == 4 and m["positive_class"] == "PNEUMONIA"
    assert "acc 50.00%" in format_metrics(m)


def test_only_positive_samples_specificity_and_auroc_undefined():
    m = classification_metrics([1, 1, 1], [[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    assert m["confusion_matrix"] == [[0, 0], [1, 2]]
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] is None
    assert m["auroc"] is None and m["auroc_per_class"] == {"NORMAL": None, "PNEUMONIA": None}
    assert "spec n/a" in format_metrics(m) and "AUROC n/a" in format_metrics(m)


def test_only_negative_samples_sensitivity_undefined():
    m = classification_metrics([0, 0], [[0.7, 0.3], [0.4, 0.6]])
    assert m["confusion_matrix"] == [[1, 1], [0, 0]]
    assert m["sensitivity"] is None
    assert m["specificity"] == 0.5
    assert m["auroc"] is None


def test_empty_set():
    m = classification_metrics([], np.zeros((0, 2)), loss=float("nan"))
    assert m["n"] == 0 and m["accuracy"] is None and m["loss"] is None
    assert m["confusion_matrix"] == [[0, 0], [0, 0]]


def test_auroc_matches_pair_counting_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=40).astype(float)  # many ties
    positives = rng.random(40) < 0.4
    pos, neg = scores[positives], scores[~positives]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    assert auroc(scores, positives) == pytest.approx(wins / (len(pos) * len(neg)))
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert auroc([0.5, 0.5], [False, True]) == 0.5


def test_bad_labels_are_rejected():
    with pytest.raises(ValueError, match="label values"):
        confusion_matrix([0, 2], [0, 1])
    with pytest.raises(ValueError, match="differ in length"):
        confusion_matrix([0, 1], [0])
