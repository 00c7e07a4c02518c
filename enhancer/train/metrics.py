"""Classification metrics with the seed's conventions, in plain Python/NumPy (no scikit-learn).

Usage::

    from enhancer.train.metrics import classification_metrics, multilabel_metrics
    m = classification_metrics(labels=[0, 1, 1], probs=[[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], loss=0.41)
    m["accuracy"], m["sensitivity"], m["specificity"], m["auroc"], m["confusion_matrix"]
    m = multilabel_metrics(targets=[[1, 0], [0, -1]], probs=[[0.8, 0.3], [0.4, 0.9]], class_names=("a", "b"))
    m["auroc_per_class"], m["ap_per_class"], m["mean_auroc"], m["mean_ap"]

Conventions (the seed notebook's): class 0 = NORMAL, class 1 = PNEUMONIA = the positive class; prediction = argmax.
``confusion_matrix[t][p]`` counts samples of true class ``t`` predicted as ``p``. Sensitivity = TP / (TP + FN),
specificity = TN / (TN + FP). Undefined values are ``None`` rather than a number that looks real: sensitivity
when there is no positive sample, specificity when there is no negative sample, AUROC of a class when all samples
are (or none is) of that class, accuracy and loss of an empty set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
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


def average_precision(scores: Sequence[float] | np.ndarray, positives: Sequence[bool] | np.ndarray) -> float | None:
    """Average precision = sum over the distinct score thresholds, from the highest, of (R_n - R_{n-1}) * P_n: the
    step-wise area under the precision-recall curve, tied scores forming one step (scikit-learn's
    ``average_precision_score``). None without a positive sample."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positives = np.asarray(positives, dtype=bool).reshape(-1)
    n_pos = int(positives.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, hits = scores[order], positives[order]
    last_of_run = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]  # a threshold after each run of ties
    tp = np.cumsum(hits)[last_of_run]
    seen = (np.flatnonzero(last_of_run) + 1).astype(np.float64)
    recall_steps = np.diff(np.r_[0, tp]) / n_pos
    return float((recall_steps * (tp / seen)).sum())


def multilabel_metrics(
    targets: Sequence[Sequence[int]] | np.ndarray,
    probs: Sequence[Sequence[float]] | np.ndarray,
    *,
    class_names: Sequence[str],
    loss: float | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Evaluation numbers of a multi-label set: ``targets`` (N, C) of 1, 0 or -1 (masked: left out of that class's
    numbers), ``probs`` (N, C) independent per-class probabilities (sigmoid outputs). Per class: AUROC, average
    precision, positives and, at ``threshold``, the confusion counts ``[[tn, fp], [fn, tp]]``; their means over the
    classes where they are defined (``mean_auroc``, ``mean_ap``). ``accuracy``, ``sensitivity`` and
    ``specificity`` count every unmasked (sample, class) decision; ``auroc`` is ``mean_auroc``."""
    num_classes = len(class_names)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1, num_classes)
    probs = np.asarray(probs, dtype=np.float64).reshape(targets.shape[0], num_classes)
    if targets.size and not np.isin(targets, (-1, 0, 1)).all():
        raise ValueError(f"multi-label targets must be 1, 0 or -1 (masked), got values {np.unique(targets).tolist()}")
    known = targets >= 0
    decided = probs >= threshold
    aurocs, aps, counts, positives = {}, {}, {}, {}
    for c, name in enumerate(class_names):
        k = known[:, c]
        aurocs[name] = auroc(probs[k, c], targets[k, c] == 1)
        aps[name] = average_precision(probs[k, c], targets[k, c] == 1)
        counts[name] = confusion_matrix(targets[k, c], decided[k, c].astype(np.int64), 2)
        positives[name] = int((targets[k, c] == 1).sum())
    cm = np.asarray(list(counts.values()), dtype=np.int64).reshape(-1, 2, 2).sum(0) if counts else np.zeros((2, 2))
    sens, spec = sensitivity_specificity(cm)
    return {
        "n": int(targets.shape[0]),
        "loss": _finite_or_none(loss),
        "accuracy": float(np.trace(cm) / cm.sum()) if cm.sum() else None,
        "sensitivity": sens,
        "specificity": spec,
        "auroc": _mean_defined(aurocs.values()),
        "mean_auroc": _mean_defined(aurocs.values()),
        "mean_ap": _mean_defined(aps.values()),
        "auroc_per_class": aurocs,
        "ap_per_class": aps,
        "positives_per_class": positives,
        "masked": int((~known).sum()),
        "threshold": threshold,
        "confusion_matrix": counts,
        "class_names": list(class_names),
        "multi_label": True,
    }


def _mean_defined(values: Iterable[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


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
    if m.get("multi_label"):
        ap = "n/a" if m.get("mean_ap") is None else f"{m['mean_ap']:.4f}"
        per_class = "  ".join(
            f"{name} {_short(m['auroc_per_class'][name])}/{_short(m['ap_per_class'][name])}"
            for name in m["class_names"]
        )
        return (
            f"n {m['n']}  loss {loss}  mean AUROC {auc}  mean AP {ap}  at {m['threshold']}: acc {pct(m['accuracy'])} "
            f"sens {pct(m['sensitivity'])} spec {pct(m['specificity'])}  per class AUROC/AP: {per_class}"
        )
    return (
        f"n {m['n']}  loss {loss}  acc {pct(m['accuracy'])}  sens {pct(m['sensitivity'])}  "
        f"spec {pct(m['specificity'])}  AUROC {auc}  confusion {m['confusion_matrix']}"
    )


def _short(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
