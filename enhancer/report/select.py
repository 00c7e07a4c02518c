"""Which samples get thumbnails and a gallery card: every wrong prediction first, then a stratified sample.

Usage: ``chosen = select_samples(labels, preds, limit=1000, seed=0)`` (sorted dataset positions).

A reviewer looks at the mistakes first, so wrong predictions always come in while they fit in ``limit``; the rest is
filled with correct predictions sampled in proportion to their true class, so the gallery keeps the dataset's
class balance. When the mistakes alone exceed ``limit`` they are sampled in proportion to their (true, predicted)
pair. The same seed gives the same selection.
"""

from __future__ import annotations

import numpy as np


def stratified(members: np.ndarray, strata: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` of ``members`` (positions), each stratum (same value in ``strata``) in proportion to its size; the
    remaining slots after rounding down go to the largest remainders. Returns the chosen positions, unsorted."""
    if k >= len(members):
        return members
    keys, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    exact = k * counts / counts.sum()
    quota = np.floor(exact).astype(np.int64)
    short = k - int(quota.sum())
    quota[np.argsort(-(exact - quota), kind="stable")[:short]] += 1
    chosen = [rng.permutation(members[inverse == s])[: quota[s]] for s in range(len(keys))]
    return np.concatenate(chosen) if chosen else members[:0]


def select_samples(labels: np.ndarray, preds: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of the samples to show: all of them when ``limit`` <= 0 or >= their number."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    n = len(labels)
    if limit <= 0 or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    positions = np.arange(n)
    wrong = positions[labels != preds]
    if len(wrong) >= limit:
        pairs = labels[wrong] * (int(preds.max()) + 1) + preds[wrong]
        return np.sort(stratified(wrong, pairs, limit, rng))
    correct = positions[labels == preds]
    return np.sort(np.concatenate([wrong, stratified(correct, labels[correct], limit - len(wrong), rng)]))
