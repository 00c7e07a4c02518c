"""What a job derives from the maps of several classes per image: crop boxes, crops and enhanced images from the
union of an image's maps or from each map, and the localisation metrics of every map. Pure tensor code.

Usage::

    from enhancer.explain.slots import slot_fields
    out = slot_fields(heat, classes, grey, source, orig_size, wanted={"crop", "enhanced"}, crop=..., enhance=...,
                      each=False, lung=lung_mask, gt=box_masks)
    out["crop"]          # (N, 1, Hc, Wc) from the union; with each=True (N, K, 1, Hc, Wc), one per map
    out["lung_energy"]   # (N, K) one value per map (NaN for an empty slot)

heat (N, K, H, W) in [0, 1] are the upsampled maps (zeros in empty slots), classes (N, K) their class ids (-1: empty).
The union of an image's maps is their pixelwise max (``enhancer.explain.classes.union_maps``). Slots are processed
one at a time, each over the whole batch.
"""

from __future__ import annotations

import torch

from enhancer.explain import cam, localisation
from enhancer.explain.classes import union_maps
from enhancer.settings import CropSettings, EnhanceSettings


def _image_fields(
    heat: torch.Tensor,
    grey: torch.Tensor,
    source: torch.Tensor,
    orig_size: torch.Tensor,
    wanted: set[str],
    crop: CropSettings,
    enhance: EnhanceSettings,
    lung: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """crop_box, crop and enhanced of one map per image, heat (N, H, W): as the single-map job makes them."""
    out: dict[str, torch.Tensor] = {}
    if wanted & {"crop", "crop_box"}:
        boxes = cam.crop_boxes(heat, orig_size, crop)
        if "crop_box" in wanted:
            out["crop_box"] = boxes
        if "crop" in wanted:
            out["crop"] = cam.crop(source, boxes, orig_size, crop.size)
    if "enhanced" in wanted:
        out["enhanced"] = cam.enhance(grey, heat, enhance, lung_mask=lung)
    return out


def _metrics(heat: torch.Tensor, lung: torch.Tensor | None, gt: torch.Tensor | None, iou: float) -> dict:
    """The localisation metrics of one map per image (N, H, W) against the lung mask and the box mask (N, H, W)."""
    out = {}
    if lung is not None:
        out["lung_energy"] = localisation.energy_inside(heat, lung)
        out["lung_hit"] = localisation.pointing_hit(heat, lung)
    if gt is not None:
        out["box_energy"] = localisation.energy_inside(heat, gt)
        out["box_hit"] = localisation.pointing_hit(heat, gt)
        out["box_iou"] = localisation.box_iou(heat, gt, threshold=iou)
    return out


def _stacked(per_slot: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {name: torch.stack([d[name] for d in per_slot], 1) for name in per_slot[0]} if per_slot else {}


def slot_fields(
    heat: torch.Tensor,
    classes: torch.Tensor,
    grey: torch.Tensor,
    source: torch.Tensor,
    orig_size: torch.Tensor,
    *,
    wanted: set[str],
    crop: CropSettings,
    enhance: EnhanceSettings,
    each: bool,
    lung: torch.Tensor | None = None,
    lung_in_enhanced: bool = False,
    gt: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """crop_box, crop and enhanced (those in ``wanted``) from the union of each image's maps, or from every map
    (``each``: a slot axis after the sample axis), and the metrics of every map: lung_* with a lung mask ``lung``
    (N, H, W), box_* with box masks ``gt``, (N, H, W) shared by an image's maps or (N, K, H, W) one per map (boxes
    of each map's finding). ``lung_in_enhanced``: the enhanced images are suppressed outside the lungs too."""
    k = classes.shape[1]
    mask = lung if lung_in_enhanced else None
    if each:
        maps = [heat[:, s] for s in range(k)]
        out = _stacked([_image_fields(m, grey, source, orig_size, wanted, crop, enhance, mask) for m in maps])
    else:
        out = _image_fields(union_maps(heat, classes), grey, source, orig_size, wanted, crop, enhance, mask)
    per_map_gt = gt is not None and gt.ndim == 4
    metrics = [_metrics(heat[:, s], lung, gt[:, s] if per_map_gt else gt, crop.threshold) for s in range(k)]
    return {**out, **_stacked(metrics)}
