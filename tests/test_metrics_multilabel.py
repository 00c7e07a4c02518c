"""Multi-label metrics: per-class AUROC and average precision equal scikit-learn's on the same scores (ties, masked
targets), their means, and the counts at the threshold."""

from __future__ import annotations

import numpy as np
import pytest

from enhancer.train.metrics import average_precision, format_metrics, multilabel_metrics
from tests.tools.missing import require_module

metrics = require_module("sklearn.metrics", install="scikit-learn==1.9.1")


def _random_set(seed: int, n: int = 60, c: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.3).astype(np.int64)
    targets[rng.random((n, c)) < 0.15] = -1  # uncertain, masked
    probs = np.round(rng.random((n, c)), 1)  # one decimal: many ties
    return targets, probs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_auroc_and_ap_equal_sklearn(seed: int) -> None:
    targets, probs = _random_set(seed)
    names = tuple("abcde")
    m = multilabel_metrics(targets, probs, class_names=names)
    for c, name in enumerate(names):
        keep = targets[:, c] >= 0
        y, s = targets[keep, c], probs[keep, c]
        assert abs(m["auroc_per_class"][name] - metrics.roc_auc_score(y, s)) < 1e-9
        assert abs(m["ap_per_class"][name] - metrics.average_precision_score(y, s)) < 1e-9
    assert m["mean_auroc"] == pytest.approx(np.mean(list(m["auroc_per_class"].values())), abs=1e-12)
    assert m["mean_ap"] == pytest.approx(np.mean(list(m["ap_per_class"].values())), abs=1e-12)
    assert m["masked"] == int((targets == -1).sum())
    assert m["positives_per_class"] == {n: int((targets[:, c] == 1).sum()) for c, n in enumerate(names)}


def test_counts_at_the_threshold_and_undefined_classes() -> None:
    targets = np.array([[1, 0, -1], [0, 0, -1], [1, 0, 1], [0, 0, -1]])
    probs = np.array([[0.9, 0.2, 0.1], [0.6, 0.1, 0.7], [0.4, 0.7, 0.2], [0.1, 0.3, 0.9]])
    m = multilabel_metrics(targets, probs, class_names=("a", "b", "c"), loss=0.3)
    assert m["confusion_matrix"]["a"] == [[1, 1], [1, 1]]  # tn (0.1), fp (0.6), fn (0.4), tp (0.9)
    assert m["confusion_matrix"]["b"] == [[3, 1], [0, 0]]
    assert m["confusion_matrix"]["c"] == [[0, 0], [1, 0]]  # one known target, positive, missed
    assert m["auroc_per_class"]["b"] is None and m["ap_per_class"]["b"] is None  # no positive
    assert m["auroc_per_class"]["c"] is None and m["ap_per_class"]["c"] == 1.0  # no negative: AP still defined
    assert m["mean_auroc"] == m["auroc_per_class"]["a"] == 0.75
    assert (m["sensitivity"], m["specificity"]) == (1 / 3, 4 / 6)
    assert m["accuracy"] == 5 / 9
    line = format_metrics(m)
    assert "mean AUROC 0.7500" in line and "b n/a/n/a" in line


def test_average_precision_by_hand_and_bad_targets() -> None:
    # ranks: 0.9 (+), 0.8 (-), 0.7 (+) -> AP = 1/2 * 1 + 1/2 * 2/3
    assert average_precision([0.9, 0.8, 0.7], [True, False, True]) == pytest.approx(0.5 + 1 / 3)
    assert average_precision([0.5, 0.5], [True, False]) == 0.5  # one tied step: precision 1/2 at recall 1
    assert average_precision([0.1], [False]) is None
    with pytest.raises(ValueError, match="1, 0 or -1"):
        multilabel_metrics([[2]], [[0.5]], class_names=("a",))
