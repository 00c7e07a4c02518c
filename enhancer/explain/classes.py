"""Which classes of each image get a map (``--explain``), and the union of an image's maps: pure tensor code.

Usage::

    from enhancer.explain.classes import explained_classes, union_maps
    policy = ExplainPolicy.parse("pred")
    classes = explained_classes(probs, policy, threshold=0.5)      # (N, K) int64 class ids, -1: empty slot
    heat_union = union_maps(heat, classes)                          # (N, H, W): the pixelwise max of the maps

Slots: ``all`` fills every class in id order, ``CLASS[,CLASS]`` the listed ones in the given order, ``top:K`` the K
most probable in decreasing probability; ``pred`` and ``label`` fill their classes in id order and leave the other
slots empty (-1), as many slots as classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from enhancer.settings import ExplainPolicy


def _in_id_order(mask: torch.Tensor) -> torch.Tensor:
    """(N, C) bool -> (N, C) the ids of the true entries in increasing order, then -1."""
    n, c = mask.shape
    ids = torch.arange(c, device=mask.device).expand(n, c)
    ordered = torch.where(mask, ids, c).sort(1).values
    return torch.where(ordered == c, -1, ordered)


def _with_top_fallback(mask: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """``mask``, with the most probable class set where an image has no class (so every image has a map)."""
    top = torch.zeros_like(mask).scatter_(1, probs.argmax(1, keepdim=True), True)
    return torch.where(mask.any(1, keepdim=True), mask, top)


def explained_classes(
    probs: torch.Tensor,
    policy: ExplainPolicy,
    *,
    threshold: float = 0.5,
    targets: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    class_ids: Sequence[int] = (),
) -> torch.Tensor:
    """(N, K) int64 class ids of the maps of each image (-1: an empty slot), on ``probs``' device.

    probs (N, C): the model's class probabilities. ``targets`` (N, C) multi-hot (1 positive) for ``label`` in a
    multi-label dataset, else ``labels`` (N,) class ids (negative: unknown). ``class_ids``: the listed classes."""
    n, c = probs.shape
    dev = probs.device
    if policy.kind == "all":
        return torch.arange(c, device=dev).expand(n, c).clone()
    if policy.kind == "classes":
        return torch.as_tensor(list(class_ids), dtype=torch.int64, device=dev).expand(n, -1).clone()
    if policy.kind == "top":
        return probs.topk(policy.slots(c), dim=1).indices
    if policy.kind == "pred":
        return _in_id_order(_with_top_fallback(probs >= threshold, probs))
    if policy.kind == "label":
        if targets is not None:
            mask = targets.to(dev) == 1
        elif labels is not None:
            lab = labels.to(dev).long()
            mask = torch.zeros(n, c, dtype=torch.bool, device=dev).scatter_(1, lab.clamp(min=0)[:, None], True)
            mask &= (lab >= 0)[:, None]
        else:
            raise ValueError("explain = label needs the images' labels or multi-label targets")
        return _in_id_order(_with_top_fallback(mask, probs))
    raise ValueError(f"explain policy {policy.kind!r} has no per-class slots (auto keeps the single-map layout)")


def union_maps(maps: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The union of each image's maps: the pixelwise max over its filled slots. maps (N, K, H, W) in [0, 1],
    classes (N, K) (-1: empty slot, left out) -> (N, H, W)."""
    filled = (classes >= 0)[:, :, None, None]
    return torch.where(filled, maps, torch.zeros_like(maps)).amax(1)
