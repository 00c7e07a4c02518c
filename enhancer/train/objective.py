"""What a model is trained and evaluated for: one class per image (softmax, cross-entropy: the seed's) or one
independent yes/no per class (sigmoid, binary cross-entropy: the multi-label datasets).

Usage::

    from enhancer.train.objective import Objective, prevalence_weights
    obj = Objective("bce", pos_weight=prevalence_weights(source.targets[train_idx]))
    loss = obj.loss(logits, targets)          # masked targets (-1) count nowhere
    probs = obj.probs(logits)                 # softmax or sigmoid
    correct, decisions = obj.correct(logits, targets)

Masked BCE: the mean of the per-(sample, class) losses over the known targets only, so an uncertain label with
``--uncertain ignore`` neither pulls a class up nor down. Prevalence weights: a positive of class c weighs
``n_negative_c / n_positive_c`` (``BCEWithLogitsLoss``'s ``pos_weight``), which balances each class's positives and
negatives in the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

KINDS = ("ce", "bce")
ACTIVATION = {"ce": "softmax", "bce": "sigmoid"}  # recorded in the checkpoint's meta: what enhance and evaluate use


@dataclass(frozen=True)
class Objective:
    """The loss and its matching output activation: ``ce`` (softmax) or ``bce`` (sigmoid)."""

    kind: str = "ce"
    pos_weight: torch.Tensor | None = None  # bce: (C,) weight of each class's positives

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"loss {self.kind!r} is not known; choose one of {', '.join(KINDS)}")

    @property
    def activation(self) -> str:
        return ACTIVATION[self.kind]

    def loss_terms(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the loss terms, number of terms) of a batch: one term per sample (ce) or per known target (bce)."""
        logits = logits.float()
        if self.kind == "ce":
            count = torch.full((), float(len(y)), dtype=torch.float64, device=logits.device)  # no host copy
            return F.cross_entropy(logits, y, reduction="sum"), count
        known = (y >= 0).float()
        weight = None if self.pos_weight is None else self.pos_weight.to(logits.device, torch.float32)
        terms = F.binary_cross_entropy_with_logits(logits, y.clamp(min=0).float(), pos_weight=weight, reduction="none")
        return (terms * known).sum(), known.sum()

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss (0 for a batch without a known target)."""
        if self.kind == "ce":
            return F.cross_entropy(logits.float(), y)  # the seed's, exactly
        total, count = self.loss_terms(logits, y)
        return total / count.clamp(min=1)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(1) if self.kind == "ce" else logits.float().sigmoid()

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(right decisions, decisions): argmax == label per sample (ce), logit > 0 == target per known target (bce)."""
        if self.kind == "ce":
            return (logits.argmax(1) == y).sum(), torch.full((), len(y), dtype=torch.int64, device=logits.device)
        known = y >= 0
        return ((logits > 0) == (y == 1))[known].sum(), known.sum()


CROSS_ENTROPY = Objective("ce")  # the seed's


def prevalence_weights(targets: np.ndarray) -> torch.Tensor:
    """(C,) ``n_negative / n_positive`` per class over the known targets; 1 for a class without positives or
    negatives (nothing to balance)."""
    positives = (targets == 1).sum(0).astype(np.float64)
    negatives = (targets == 0).sum(0).astype(np.float64)
    ratio = np.divide(negatives, positives, out=np.ones_like(positives), where=(positives > 0) & (negatives > 0))
    return torch.from_numpy(ratio.astype(np.float32))
