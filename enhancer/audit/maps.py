"""The audit's map function: one injectable callable that explains a batch, defaulting to the enhance job's CAM.

Usage::

    from enhancer.audit.maps import cam_map_fn, compute_maps
    map_fn = cam_map_fn(CamSettings())              # or any (model, x, target) -> (N, h, w) maps >= 0
    map_fn = cam_map_fn(CamSettings(method="gradcam++"), layer="features.norm5")   # any model, any layer
    maps = compute_maps(map_fn, model, x, target)   # (N, H, W) in [0, 1] at x's resolution, batched

A map function takes the model (eval mode), a normalised batch x (N, C, H, W) and the classes to explain (N,) and
returns maps (N, h, w) >= 0 at any resolution; ``compute_maps`` upsamples them bilinearly to the input's size and
scales each to a maximum of 1 (an all-zero map stays zero). Switching the audit to another CAM method is passing
another map function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from enhancer.explain.cam import upsample
from enhancer.explain.compute import compute_cam
from enhancer.settings import CamSettings

MapFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def cam_map_fn(settings: CamSettings = CamSettings(), layer: str | None = None) -> MapFn:
    """The enhance job's CAM (``enhancer.explain.compute.compute_cam``, ``settings.method`` included), explaining the
    given classes (whatever the settings' own target), so that a changed model is asked about the same class as the
    original. ``layer``: the target layer's dotted name, looked up in every model the function gets (the
    randomisation's copies are other modules); None: the model's own features/head halves (a zoo model at its default
    layer, as the job explains it)."""
    fixed = dataclasses.replace(settings, target="label")

    def cam_maps(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if layer is None:
            return compute_cam(model, x, split=model, settings=fixed, labels=target).cam
        return compute_cam(model, x, layer=model.get_submodule(layer), settings=fixed, labels=target).cam

    cam_maps.__name__ = f"{settings.method}_maps"
    return cam_maps


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Each map (N, H, W) divided by its maximum after clamping at 0; maps without positive values become 0."""
    m = maps.float().nan_to_num(0.0).clamp_min(0)
    peak = m.flatten(1).amax(1)[:, None, None]
    return torch.where(peak > 0, m / torch.where(peak > 0, peak, torch.ones_like(peak)), torch.zeros_like(m))


def to_input_size(maps: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Maps (N, h, w) upsampled (bilinear) to ``size`` when they are smaller, then normalised to [0, 1]."""
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = upsample(maps.float(), size)
    return normalise_maps(maps)


def compute_maps(
    map_fn: MapFn, model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, batch_size: int = 32
) -> torch.Tensor:
    """``map_fn`` over x (N, C, H, W) in batches of ``batch_size``: (N, H, W) maps in [0, 1] at x's resolution."""
    parts = [
        to_input_size(map_fn(model, x[i : i + batch_size], target[i : i + batch_size]), x.shape[-2:])
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(parts)
