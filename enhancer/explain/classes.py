"""Maps per (image, class): which classes of each image get a map (``--explain``), the maps themselves for any
CAM method and model, and the union of an image's maps. Pure tensor code on the input's device.

Usage::

    from enhancer.explain.classes import class_cams, explained_classes, union_maps
    policy = ExplainPolicy.parse("pred")
    choose = lambda logits: explained_classes(logits, policy, threshold=0.5)   # (N, K) class ids, -1: empty slot
    r = class_cams(model, x, split=halves, settings=settings, choose=choose, activation="sigmoid")
    r.cam          # (N, K, h, w) in [0, 1], zeros in empty slots; r.classes (N, K); r.probs (N, C)
    heat_union = union_maps(heat, r.classes)                 # (N, H, W): the pixelwise max of an image's maps

The maps of one batch: with the model's features/head halves (``split``) and a gradient or activation method, the
trunk runs once and the head once on every (image, slot) pair, one backward for all of them; otherwise (a forward
hook at ``layer``, or a perturbation method) one ``compute_cam`` per slot. Either way, map k of image i is the map a
single-class run (``compute_cam`` with ``target`` = that class) gives.

A sigmoid head's probability p_c = sigmoid(z_c) has the log-odds z_c: the ``prob`` score (log-odds,
``enhancer.explain.cam.RAW_CAM_SCALE_NOTE``) of a sigmoid model is its logit, so its maps are computed with
``score="logit"`` (``sigmoid_settings``) and its probabilities are ``sigmoid(logits)``.

Slots: ``all`` fills every class in id order, ``CLASS[,CLASS]`` the listed ones in the given order, ``top:K`` the K
most probable in decreasing probability; ``pred`` and ``label`` fill their classes in id order and leave the other
slots empty (-1), as many slots as classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from enhancer.explain import methods
from enhancer.explain.cam import (
    ACTIVATION_METHODS,
    GRADIENT_METHODS,
    LayerGrads,
    check_inputs,
    class_score,
    head_dtype,
    normalize_maps,
    trunk_context,
)
from enhancer.explain.compute import Halves, compute_cam
from enhancer.settings import CamSettings, ExplainPolicy

ACTIVATIONS = ("softmax", "sigmoid")


def _in_id_order(mask: torch.Tensor) -> torch.Tensor:
    """(N, C) bool -> (N, C) the ids of the true entries in increasing order, then -1."""
    n, c = mask.shape
    ids = torch.arange(c, device=mask.device).expand(n, c)
    ordered = torch.where(mask, ids, c).sort(1).values
    return torch.where(ordered == c, -1, ordered)


def _with_top_fallback(mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``mask``, with the most probable class set where an image has no class (so every image has a map)."""
    top = torch.zeros_like(mask).scatter_(1, logits.argmax(1, keepdim=True), True)
    return torch.where(mask.any(1, keepdim=True), mask, top)


def explained_classes(
    logits: torch.Tensor,
    policy: ExplainPolicy,
    *,
    activation: str = "softmax",
    threshold: float = 0.5,
    targets: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    class_ids: Sequence[int] = (),
) -> torch.Tensor:
    """(N, K) int64 class ids of the maps of each image (-1: an empty slot), on ``logits``' device.

    logits (N, C): the model's outputs; their ``activation`` gives the probabilities ``threshold`` applies to, and
    classes are ranked by logit (the same order as the probabilities, without the ties of saturated ones).
    ``targets`` (N, C) multi-hot (1 positive) for ``label`` in a multi-label dataset, else ``labels`` (N,) class ids
    (negative: unknown). ``class_ids``: the listed classes."""
    n, c = logits.shape
    dev = logits.device
    if policy.kind == "all":
        return torch.arange(c, device=dev).expand(n, c).clone()
    if policy.kind == "classes":
        return torch.as_tensor(list(class_ids), dtype=torch.int64, device=dev).expand(n, -1).clone()
    if policy.kind == "top":
        return logits.topk(policy.slots(c), dim=1).indices
    if policy.kind == "pred":
        return _in_id_order(_with_top_fallback(probabilities(logits, activation) >= threshold, logits))
    if policy.kind == "label":
        if targets is not None:
            mask = targets.to(dev) == 1
        elif labels is not None:
            lab = labels.to(dev).long()
            mask = torch.zeros(n, c, dtype=torch.bool, device=dev).scatter_(1, lab.clamp(min=0)[:, None], True)
            mask &= (lab >= 0)[:, None]
        else:
            raise ValueError("explain = label needs the images' labels or multi-label targets")
        return _in_id_order(_with_top_fallback(mask, logits))
    raise ValueError(f"explain policy {policy.kind!r} has no per-class slots (auto keeps the single-map layout)")


def union_maps(maps: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The union of each image's maps: the pixelwise max over its filled slots. maps (N, K, H, W) in [0, 1],
    classes (N, K) (-1: empty slot, left out) -> (N, H, W)."""
    filled = (classes >= 0)[:, :, None, None]
    return torch.where(filled, maps, torch.zeros_like(maps)).amax(1)


@dataclass
class ClassCams:
    """The maps of a batch for its explained classes, on the input's device.

    raw, cam (N, K, h, w) float32: the method's map after the ReLU, and normalised to [0, 1]; zeros in empty slots.
    classes (N, K) int64: the class of each slot, -1 empty. logits, probs (N, C) float32 (softmax or sigmoid);
    pred (N,) int64: the argmax of probs."""

    raw: torch.Tensor
    cam: torch.Tensor
    classes: torch.Tensor
    logits: torch.Tensor
    probs: torch.Tensor
    pred: torch.Tensor


def sigmoid_settings(settings: CamSettings, activation: str) -> CamSettings:
    """The settings the maps of a model with this output ``activation`` are computed with: a sigmoid model's
    ``prob`` score is its logit (the log-odds of sigmoid(z) is z)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not valid; choose one of {', '.join(ACTIVATIONS)}")
    return dataclasses.replace(settings, score="logit") if activation == "sigmoid" else settings


def probabilities(logits: torch.Tensor, activation: str) -> torch.Tensor:
    return logits.float().sigmoid() if activation == "sigmoid" else logits.float().softmax(1)


def _pairs_closed_form(
    split: Halves, x: torch.Tensor, settings: CamSettings, choose: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[LayerGrads, torch.Tensor, torch.Tensor]:
    """Through the halves: the trunk once, the classes chosen from the logits, then the head on every (image, slot)
    pair (activations repeated K times) and one backward of their summed scores. Returns the pairs' activations and
    gradients (N * K rows, image-major), the classes (N, K) and the logits (N, C)."""
    check_inputs(split, x)  # type: ignore[arg-type]
    x, amp = trunk_context(settings, x)
    with torch.no_grad(), amp:
        feats = split.features(x)
    need = settings.method in GRADIENT_METHODS
    with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        a = head_dtype(feats.detach())
        with torch.no_grad():
            logits = split.head(a)
        classes = choose(logits)
        k = classes.shape[1]
        pairs = a.repeat_interleave(k, 0)
        if a.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous():
            pairs = pairs.contiguous(memory_format=torch.channels_last)  # the head's kernels as for one class
        pairs.requires_grad_(need)
        pair_logits = split.head(pairs)
        target = classes.reshape(-1).clamp(min=0)
        grads = None
        if need:
            (grads,) = torch.autograd.grad(class_score(pair_logits, target, settings.score).sum(), pairs)
    g = LayerGrads(pairs.detach(), grads, pair_logits.detach(), target, pair_logits.detach().argmax(1))
    return g, classes, logits.float()


def _pairs_per_slot(
    model: nn.Module,
    x: torch.Tensor,
    layer: nn.Module | None,
    split: Halves | None,
    settings: CamSettings,
    choose: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Any model, layer and method: the logits of a forward pass, then one ``compute_cam`` per slot with the slot's
    classes as the target. Returns (raw (N, K, h, w), classes (N, K), logits (N, C))."""
    check_inputs(model, x)
    with torch.no_grad():
        logits = head_dtype(model(x)).float()
    classes = choose(logits)
    label_settings = dataclasses.replace(settings, target="label")
    raws = [
        compute_cam(model, x, layer=layer, split=split, settings=label_settings, labels=classes[:, k].clamp(min=0)).raw
        for k in range(classes.shape[1])
    ]
    return torch.stack(raws, 1), classes, logits


def class_cams(
    model: nn.Module,
    x: torch.Tensor,
    *,
    layer: nn.Module | None = None,
    split: Halves | None = None,
    settings: CamSettings = CamSettings(),
    choose: Callable[[torch.Tensor], torch.Tensor],
    activation: str = "softmax",
) -> ClassCams:
    """The maps of every (image, explained class) of a batch x (N, C, H, W): ``choose(logits)`` gives each image's
    classes (N, K) (``explained_classes``; -1 for an empty slot). ``layer`` / ``split`` as for ``compute_cam``;
    ``activation``: the model's output (``softmax`` or ``sigmoid``, whose maps use ``sigmoid_settings``)."""
    if layer is None and split is None:
        raise ValueError("class_cams needs the target layer (layer=model.get_submodule(NAME)) or the model's halves")
    settings = sigmoid_settings(settings, activation)
    n = x.shape[0]
    if split is not None and settings.method in (*GRADIENT_METHODS, *ACTIVATION_METHODS):
        g, classes, logits = _pairs_closed_form(split, x, settings, choose)
        if settings.method in GRADIENT_METHODS:
            raw = methods.gradient_map(settings.method, g.activations, g.gradients, settings.channel_reduce)
        else:
            raw = methods.eigen_projection(g.activations)
        raw = raw.relu().float().view(n, classes.shape[1], *raw.shape[1:])
    else:
        raw, classes, logits = _pairs_per_slot(model, x, layer, split, settings, choose)
    raw = torch.where((classes >= 0)[:, :, None, None], raw, torch.zeros_like(raw))
    cam, _, _ = normalize_maps(raw.flatten(0, 1), settings.normalize)
    probs = probabilities(logits, activation)
    # pred: the argmax of the probabilities as stored (saturated sigmoids tie at 1.0 where their logits do not)
    return ClassCams(raw, cam.view_as(raw), classes, logits, probs, probs.argmax(1))
