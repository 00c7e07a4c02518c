"""Classification metrics with the seed's conventions, in plain Python/NumPy (no scikit-learn).

Usage::

    from enhancer.train.metrics import classification_metrics
    m = classification_metrics(labels=[0, 1, 1], probs=[[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], loss=0.41)
    m["accuracy"], m["sensitivity"], m["specificity"], m["auroc"], m["confusion_matrix"]

Conventions (the seed notebook's): class 0 = NORMAL, class 1 = PNEUMONIA = the positive class; prediction = argmax.
``confusion_matrix[t][p]`` counts samples of true class ``t`` predicted as ``p``. Sensitivity = TP / (TP + FN),
specificity = TN / (TN + FP). Undefined values are ``None`` rather than a number that looks real: sensitivity
when there is no positive sample, specificity when there is no negative sample, AUROC of a class when all samples
are (or none is) of that class, accuracy and loss of an empty set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

POSITIVE_CLASS = 1  # PNEUMONIA


def confusion_matrix(
    labels: Sequence[int] | np.ndarray, preds: Sequence[int] | np.ndarray, num_classes: int = 2
) -> list[list[int]]:
    """``cm[true][pred]`` counts as a list of lists (JSON-ready)."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    preds = np.asarray(preds, dtype=np.int64).reshape(-1)
    if labels.shape != preds.shape:
        raise ValueError(f"labels ({labels.shape[0]}) and predictions ({preds.shape[0]}) differ in length")
    for name, arr in (("label", labels), ("prediction", preds)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} values must be in [0, {num_classes}), got {arr.min()}..{arr.max()}")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm.tolist()


def sensitivity_specificity(
    cm: Sequence[Sequence[int]], positive: int = POSITIVE_CLASS
) -> tuple[float | None, float | None]:
    """(sensitivity, specificity) of ``positive`` against all other classes; None where the denominator is 0."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = int(cm[positive, positive])
    fn = int(cm[positive].sum()) - tp
    fp = int(cm[:, positive].sum()) - tp
    tn = int(cm.sum()) - tp - fn - fp
    sens = tp / (tp + fn) if tp + fn else None
    spec = tn / (tn + fp) if tn + fp else None
    return sens, spec


def auroc(scores: Sequence[float] | np.ndarray, positives: Sequence[bool] | np.ndarray) -> float | None:
    """Area under the ROC curve = P(score of a random positive > score of a random negative), ties counting
    one half (the Mann-Whitney U statistic, computed from average ranks). None when one side is empty."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positives = np.asarray(positives, dtype=bool).reshape(-1)
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # Average rank (1-based) over each run of tied scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    u = ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def classification_metrics(
    labels: Sequence[int] | np.ndarray,
    probs: Sequence[Sequence[float]] | np.ndarray,
    *,
    loss: float | None = None,
    class_names: Sequence[str] = ("NORMAL", "PNEUMONIA"),
    positive: int = POSITIVE_CLASS,
) -> dict[str, Any]:
    """All evaluation numbers of one set. ``probs`` is (N, C) (softmax outputs; any monotone score per class
    gives the same AUROC). ``accuracy`` is a fraction in [0, 1] (the seed printed percent)."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    num_classes = len(class_names)
    probs = np.asarray(probs, dtype=np.float64).reshape(labels.size, num_classes)
    preds = probs.argmax(axis=1) if labels.size else np.zeros(0, np.int64)
    cm = confusion_matrix(labels, preds, num_classes)
    sens, spec = sensitivity_specificity(cm, positive)
    per_class = {name: auroc(probs[:, c], labels == c) for c, name in enumerate(class_names)}
    return {
        "n": int(labels.size),
        "loss": _finite_or_none(loss),
        "accuracy": float((preds == labels).mean()) if labels.size else None,
        "sensitivity": sens,
        "specificity": spec,
        "auroc": per_class[class_names[positive]],
        "auroc_per_class": per_class,
        "confusion_matrix": cm,
        "class_names": list(class_names),
        "positive_class": class_names[positive],
    }


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def format_metrics(m: dict[str, Any]) -> str:
    """One line for people, percentages like the seed's tables; undefined values print as n/a."""

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    loss = "n/a" if m.get("loss") is None else f"{m['loss']:.4f}"
    auc = "n/a" if m.get("auroc") is None else f"{m['auroc']:.4f}"
    return (
        f"n {m['n']}  loss {loss}  acc {pct(m['accuracy'])}  sens {pct(m['sensitivity'])}  "
        f"spec {pct(m['specificity'])}  AUROC {auc}  confusion {m['confusion_matrix']}"
    )
