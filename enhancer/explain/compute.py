"""Any CAM method, for any classifier, on a whole batch on its device: the one entry point the job calls.

Usage::

    from enhancer.explain.compute import compute_cam
    layer = model.get_submodule("features.norm5")
    r = compute_cam(model.eval(), x, layer=layer, settings=CamSettings(method="gradcam++"))
    r.cam        # (N, h, w) in [0, 1]; r.raw, r.logits, r.target, ... as ``CamResult``

Zoo models (``features`` / ``head`` halves, ``target_layer`` naming the module whose output ``features`` returns)
take the closed form when ``layer`` is that module: the trunk once, then the head alone (and Ablation-CAM's copies go
through the head only). Every other model and layer goes through a forward hook that cuts the graph at the layer
(``enhancer.explain.capture``). The methods' maps are ``enhancer.explain.methods``; Score-CAM and Ablation-CAM's
forward passes ``enhancer.explain.perturbation``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from enhancer.explain import methods, perturbation
from enhancer.explain.cam import (
    ACTIVATION_METHODS,
    GRADIENT_METHODS,
    CamResult,
    CamSettings,
    LayerGrads,
    cam_result,
    class_score,
    head_dtype,
    head_gradients,
    trunk_context,
)
from enhancer.explain.capture import cut_forward, layer_gradients, replaced_output_forward


def zoo_layer(model: nn.Module) -> nn.Module | None:
    """The module whose output is ``model.features(x)`` for models with both halves, else None."""
    name = getattr(model, "target_layer", None)
    if not isinstance(name, str) or not (hasattr(model, "features") and hasattr(model, "head")):
        return None
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _gradients(
    model: nn.Module, x: torch.Tensor, layer: nn.Module, settings: CamSettings, labels: torch.Tensor | None
) -> tuple[LayerGrads, bool]:
    """(activations and, for the gradient methods, gradients; whether the features/head closed form applied)."""
    need = settings.method in GRADIENT_METHODS
    if layer is zoo_layer(model):
        return head_gradients(model, x, settings, labels, need_gradients=need), True
    return layer_gradients(model, x, layer, settings, labels, need_gradients=need), False


def _score_of(settings: CamSettings, target: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda logits, rows: class_score(head_dtype(logits), target[rows], settings.score)


def _zoo_forward(model: nn.Module, settings: CamSettings) -> Callable[[torch.Tensor], torch.Tensor]:
    """``forward(x) -> logits`` of a zoo model as ``head_gradients`` runs it: trunk in autocast, head in float32."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        x, amp = trunk_context(settings, x)
        with amp:
            feats = model.features(x)
        with torch.autocast(x.device.type, enabled=False):
            return model.head(head_dtype(feats))

    return forward


def _perturbation_weights(
    model: nn.Module, x: torch.Tensor, layer: nn.Module, g: LayerGrads, settings: CamSettings, closed_form: bool
) -> torch.Tensor:
    score_of = _score_of(settings, g.target)
    if settings.method == "scorecam":
        forward = _zoo_forward(model, settings) if closed_form else cut_forward(model, layer, settings)
        return perturbation.scorecam_weights(forward, x, g.activations, score_of, batch=settings.scorecam_batch)
    if closed_form:

        def head(a: torch.Tensor, _rows: torch.Tensor) -> torch.Tensor:
            with torch.autocast(a.device.type, enabled=False):
                return model.head(a)
    else:
        head = replaced_output_forward(model, x, layer, settings)
    base = class_score(g.logits, g.target, settings.score)
    return perturbation.ablation_weights(head, g.activations, base, score_of, batch=settings.scorecam_batch)


def compute_cam(
    model: nn.Module,
    x: torch.Tensor,
    *,
    layer: nn.Module,
    settings: CamSettings = CamSettings(),
    labels: torch.Tensor | None = None,
) -> CamResult:
    """``settings.method``'s map at ``layer`` (a module of ``model`` with a 4-d output) for a batch x (N, C, H, W).

    ``model`` must be in eval mode (each map then depends on its own image only). ``labels`` (N,) is needed for
    ``target='label'``. Returns a ``CamResult`` on ``x``'s device: ``raw`` is the method's map after the ReLU at the
    layer's resolution, ``cam`` that map normalised (``settings.normalize``)."""
    g, closed_form = _gradients(model, x, layer, settings, labels)
    a = g.activations
    if settings.method in GRADIENT_METHODS:
        raw = methods.gradient_map(settings.method, a, g.gradients, settings.channel_reduce)
    elif settings.method in ACTIVATION_METHODS:
        raw = methods.eigen_projection(a)
    else:
        weights = _perturbation_weights(model, x, layer, g, settings, closed_form)
        raw = methods.weighted_map(weights, a, settings.channel_reduce)
    return cam_result(raw, g, settings)
