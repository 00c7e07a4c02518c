"""Any CAM method, for any classifier, on a whole batch on its device: the one entry point the job calls.

Usage::

    from enhancer.explain.compute import compute_cam
    layer = model.get_submodule("features.denseblock4")
    r = compute_cam(model.eval(), x, layer=layer, settings=CamSettings(method="gradcam++"))
    r.cam        # (N, h, w) in [0, 1]; r.raw, r.logits, r.target, ... as ``CamResult``
    r = compute_cam(zoo_model.eval(), x, split=zoo_model)   # the closed form through the model's halves

Any model and layer goes through a forward hook that cuts the graph at the layer (``enhancer.explain.capture``).
Where the model's ``features`` / ``head`` halves at that layer are known (``split``: a zoo model itself, or the
registry's view of a family at its default layer, ``enhancer.models.registry.TargetLayer.split``), the closed form
applies instead: the trunk once, then the head alone (and Ablation-CAM's copies go through the head only). The
methods' maps are ``enhancer.explain.methods``; Score-CAM and Ablation-CAM's forward passes
``enhancer.explain.perturbation``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from enhancer.explain import methods, perturbation
from enhancer.explain.cam import (
    ACTIVATION_METHODS,
    GRADIENT_METHODS,
    CamResult,
    LayerGrads,
    cam_result,
    class_score,
    head_dtype,
    head_gradients,
    trunk_context,
)
from enhancer.explain.capture import cut_forward, layer_gradients, replaced_output_forward
from enhancer.settings import CamSettings


class Halves(Protocol):
    """A model as two halves at its target layer: ``features`` (input -> the layer's output) and ``head`` (that output
    -> logits), with model(x) == head(features(x)); ``training`` is the model's mode."""

    training: bool

    def features(self, x: torch.Tensor) -> torch.Tensor: ...

    def head(self, a: torch.Tensor) -> torch.Tensor: ...


def _gradients(
    model: nn.Module,
    x: torch.Tensor,
    layer: nn.Module | None,
    split: Halves | None,
    settings: CamSettings,
    labels: torch.Tensor | None,
) -> LayerGrads:
    """Activations and, for the gradient methods, gradients: the closed form through ``split`` when given, else the
    forward hook at ``layer``."""
    need = settings.method in GRADIENT_METHODS
    if split is not None:
        return head_gradients(split, x, settings, labels, need_gradients=need)  # type: ignore[arg-type]
    return layer_gradients(model, x, layer, settings, labels, need_gradients=need)


def _score_of(settings: CamSettings, target: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda logits, rows: class_score(head_dtype(logits), target[rows], settings.score)


def _split_forward(split: Halves, settings: CamSettings) -> Callable[[torch.Tensor], torch.Tensor]:
    """``forward(x) -> logits`` through the halves as ``head_gradients`` runs them: trunk in autocast, head float32."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        x, amp = trunk_context(settings, x)
        with amp:
            feats = split.features(x)
        with torch.autocast(x.device.type, enabled=False):
            return split.head(head_dtype(feats))

    return forward


def _perturbation_weights(
    model: nn.Module,
    x: torch.Tensor,
    layer: nn.Module | None,
    split: Halves | None,
    g: LayerGrads,
    settings: CamSettings,
) -> torch.Tensor:
    score_of = _score_of(settings, g.target)
    if settings.method == "scorecam":
        forward = _split_forward(split, settings) if split is not None else cut_forward(model, layer, settings)
        return perturbation.scorecam_weights(forward, x, g.activations, score_of, batch=settings.scorecam_batch)
    if split is not None:

        def head(a: torch.Tensor, _rows: torch.Tensor) -> torch.Tensor:
            with torch.autocast(a.device.type, enabled=False):
                return split.head(a)
    else:
        head = replaced_output_forward(model, x, layer, settings)
    base = class_score(g.logits, g.target, settings.score)
    return perturbation.ablation_weights(head, g.activations, base, score_of, batch=settings.scorecam_batch)


def compute_cam(
    model: nn.Module,
    x: torch.Tensor,
    *,
    layer: nn.Module | None = None,
    split: Halves | None = None,
    settings: CamSettings = CamSettings(),
    labels: torch.Tensor | None = None,
) -> CamResult:
    """``settings.method``'s map at ``layer`` (a module of ``model`` with a 4-d output) for a batch x (N, C, H, W).

    ``split``: the model's features/head halves at that layer, when known (a zoo model itself at its own layer; the
    registry's ``TargetLayer.split``): the closed form, which then needs no ``layer``. Give at least one of them.
    ``model`` must be in eval mode (each map then depends on its own image only). ``labels`` (N,) is needed for
    ``target='label'``. Returns a ``CamResult`` on ``x``'s device: ``raw`` is the method's map after the ReLU at the
    layer's resolution, ``cam`` that map normalised (``settings.normalize``)."""
    if layer is None and split is None:
        raise ValueError("compute_cam needs the target layer (layer=model.get_submodule(NAME)) or the model's halves")
    g = _gradients(model, x, layer, split, settings, labels)
    a = g.activations
    if settings.method in GRADIENT_METHODS:
        raw = methods.gradient_map(settings.method, a, g.gradients, settings.channel_reduce)
    elif settings.method in ACTIVATION_METHODS:
        raw = methods.eigen_projection(a)
    else:
        raw = methods.weighted_map(
            _perturbation_weights(model, x, layer, split, g, settings), a, settings.channel_reduce
        )
    return cam_result(raw, g, settings)
