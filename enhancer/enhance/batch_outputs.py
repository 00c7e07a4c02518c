"""One batch's stored fields, computed on its device: the model's maps (one per image, or one per explained class of
a multi-label model), heatmaps, crops, enhanced images and the localisation metrics.

Usage::

    from enhancer.enhance.batch_outputs import OutputSettings, compute_outputs
    outputs = compute_outputs(model, batch, settings, target=target)  # {"index": ..., "heatmap": ..., ...}

``compute_outputs`` is pure tensor work (no host synchronisation); ``enhancer.enhance.batch_loop`` overlaps it with
loading and writing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from enhancer.data import Batch
from enhancer.explain import cam, localisation
from enhancer.explain.classes import ClassCams, class_cams, explained_classes
from enhancer.explain.compute import compute_cam
from enhancer.explain.slots import slot_fields
from enhancer.models.lungs import LungModel, lung_masks
from enhancer.models.registry import TargetLayer
from enhancer.preprocessing import Preprocessing
from enhancer.settings import ExplainPolicy
from enhancer.store.schema import METRIC_FIELDS


@dataclass(frozen=True)
class ClassPlan:
    """The maps of a job with a map per (image, explained class): the model's output activation, which classes
    (``policy``, ``threshold``, the listed ``class_ids``), ``slots`` maps per image, and whether crops and enhanced
    images come from the ``union`` of an image's maps or from ``each``."""

    activation: str
    policy: ExplainPolicy
    threshold: float
    crop_from: str
    slots: int
    class_ids: tuple[int, ...] = ()

    def per_class(self, fields: Sequence[str]) -> tuple[str, ...]:
        """The fields of ``fields`` stored with a slot axis."""
        each = ("crop", "crop_box", "enhanced") if self.crop_from == "each" else ()
        return tuple(f for f in fields if f in ("cam", "heatmap", *each, *METRIC_FIELDS))

    def to_dict(self) -> dict[str, Any]:
        score = "logit (a sigmoid's log-odds)" if self.activation == "sigmoid" else "as cam.score"
        return {
            "activation": self.activation,
            "explain": self.policy.kind,
            **({"top": self.policy.k} if self.policy.kind == "top" else {}),
            **({"classes": list(self.class_ids)} if self.policy.kind == "classes" else {}),
            "threshold": self.threshold,
            "crop_from": self.crop_from,
            "slots": self.slots,
            "score": score,
        }


@dataclass(frozen=True)
class OutputSettings:
    """What ``compute_outputs`` produces per batch: the selected fields and how they are made."""

    fields: tuple[str, ...]
    cam: cam.CamSettings
    crop: cam.CropSettings
    enhance: cam.EnhanceSettings
    preprocessing: Preprocessing
    lung_mask_in_enhanced: bool = False  # multiply the enhanced image by the lung mask (enhance.mask_floor outside)
    amp: bool = False  # bf16 autocast for the lung U-Net on CUDA
    classes: ClassPlan | None = None  # maps per (image, class); None: one map per image (the seed's layout)


def to_unit_grey(image: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """Undo the normalisation of a model input (N, C, H, W) -> its first channel (N, 1, H, W) in [0, 1]."""
    mean, std = preprocessing.mean[0], preprocessing.std[0]
    return (image[:, :1].float() * std + mean).clamp(0, 1)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> uint8, rounding to the nearest level."""
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def explain(
    model: nn.Module, target: TargetLayer | None, x: torch.Tensor, settings: cam.CamSettings, labels: torch.Tensor
) -> cam.CamResult:
    """The CAM of one batch at ``target`` (``resolve_target``; None: ``model`` is a zoo model, explained at its own
    features/head split) for any model and layer: ``compute_cam`` with the layer's module, and the model's
    features/head halves there when the registry knows them (``target.split``: zoo models, a family's default
    layer), which take the closed form."""
    if target is None:
        return compute_cam(model, x, split=model, settings=settings, labels=labels)
    return compute_cam(model, x, layer=target.module, split=target.split, settings=settings, labels=labels)


def compute_outputs(
    model: nn.Module,
    batch: Batch,
    settings: OutputSettings,
    *,
    lungs: LungModel | None = None,
    gt_boxes: torch.Tensor | None = None,
    target: TargetLayer | None = None,
    targets: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Every stored field of one batch, computed on the batch's device (only the selected optional fields), in the
    layout of the class plan: one map per image when ``settings.classes`` is None (the seed's layout), else a map
    per (image, explained class) with a slot axis (``_class_map_outputs``).

    ``target``: the CAM layer (``resolve_target``); None: a zoo model at its own split; ``targets`` kept as given.
    ``lungs``: a lung segmenter on the model's device: lung_mask, lung_energy, lung_hit. ``gt_boxes``: the annotated
    boxes, xyxy in original pixels, NaN-padded, for box_*: (N, B, 4) (``BoxTable.batch``), or with maps per class
    (N, C, B, 4), each class's own (``BoxTable.class_batch``)."""
    compute = _one_map_outputs if settings.classes is None else _class_map_outputs
    return compute(model, batch, settings, lungs=lungs, gt_boxes=gt_boxes, target=target, targets=targets)


def _batch_fields(
    batch: Batch,
    pred: torch.Tensor,
    probs: torch.Tensor,
    targets: torch.Tensor | None,
    explained: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The fields every batch stores: index, label, prediction, probabilities, original size (and the explained
    classes of maps per class, the multi-hot targets of a label file)."""
    out = {"index": batch.index, "label": batch.label, "pred": pred, "prob": probs, "orig_size": batch.orig_size}
    if explained is not None:
        out["explained"] = explained
    if targets is not None:
        out["targets"] = targets
    return out


def _map_fields(wanted: set[str], grey: torch.Tensor, raw: torch.Tensor, heat: torch.Tensor) -> dict[str, torch.Tensor]:
    """The selected ones of the model-resolution image, the raw maps and the heatmaps."""
    out = {}
    if "image" in wanted:
        out["image"] = to_uint8(grey)
    if "cam" in wanted:
        out["cam"] = raw
    if "heatmap" in wanted:
        out["heatmap"] = to_uint8(heat)
    return out


def _one_map_outputs(
    model: nn.Module,
    batch: Batch,
    settings: OutputSettings,
    *,
    lungs: LungModel | None,
    gt_boxes: torch.Tensor | None,
    target: TargetLayer | None,
    targets: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """``compute_outputs`` with one map per image, of the class ``settings.cam.target`` picks."""
    device = batch.image.device
    # host bookkeeping goes to the device with non_blocking copies (pinned by the prefetcher: asynchronous on CUDA)
    result = explain(model, target, batch.image, settings.cam, batch.label)
    size = tuple(batch.image.shape[-2:])
    heat = cam.upsample(result.cam, size)
    grey = to_unit_grey(batch.image, settings.preprocessing)
    orig_size = batch.orig_size.to(device, non_blocking=True)
    wanted = set(settings.fields)
    out = _batch_fields(batch, result.pred, result.probs, targets) | _map_fields(wanted, grey, result.raw, heat)
    if wanted & {"crop", "crop_box"}:
        boxes = cam.crop_boxes(heat, orig_size, settings.crop)
        if "crop_box" in wanted:
            out["crop_box"] = boxes
        if "crop" in wanted:
            out["crop"] = cam.crop(batch.source, boxes, orig_size, settings.crop.size)
    lung = None
    if lungs is not None:
        lung = lung_masks(lungs, batch.source, size, amp=settings.amp)
        out["lung_mask"] = lung.to(torch.uint8)
        out["lung_energy"] = localisation.energy_inside(heat, lung)
        out["lung_hit"] = localisation.pointing_hit(heat, lung)
    if gt_boxes is not None:
        gt = localisation.boxes_mask(gt_boxes.to(device, non_blocking=True), orig_size, size)
        out["box_energy"] = localisation.energy_inside(heat, gt)
        out["box_hit"] = localisation.pointing_hit(heat, gt)
        out["box_iou"] = localisation.box_iou(heat, gt, threshold=settings.crop.threshold)
    if "enhanced" in wanted:
        mask = lung if settings.lung_mask_in_enhanced else None
        out["enhanced"] = cam.enhance(grey, heat, settings.enhance, lung_mask=mask)
    return out


def explain_classes(
    model: nn.Module,
    target: TargetLayer | None,
    batch: Batch,
    settings: OutputSettings,
    targets: torch.Tensor | None,
) -> ClassCams:
    """The maps of one batch for the classes ``settings.classes`` chooses per image (the image's ``targets`` or
    label for ``explain = label``), at ``target`` as ``explain`` does."""
    plan = settings.classes
    assert plan is not None
    device = batch.image.device
    on_device = targets.to(device, non_blocking=True) if targets is not None else None
    labels = batch.label.to(device, non_blocking=True)

    def choose(logits: torch.Tensor) -> torch.Tensor:
        return explained_classes(
            logits,
            plan.policy,
            activation=plan.activation,
            threshold=plan.threshold,
            targets=on_device,
            labels=labels,
            class_ids=plan.class_ids,
        )

    layer, split = (None, model) if target is None else (target.module, target.split)
    return class_cams(
        model, batch.image, layer=layer, split=split, settings=settings.cam, choose=choose, activation=plan.activation
    )


def _class_map_outputs(
    model: nn.Module,
    batch: Batch,
    settings: OutputSettings,
    *,
    lungs: LungModel | None,
    gt_boxes: torch.Tensor | None,
    target: TargetLayer | None,
    targets: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """``compute_outputs`` with a map per (image, explained class): ``explained`` (N, K) holds the class of each
    slot, cam / heatmap / the metrics get a slot axis, crops and enhanced images come from the union of an image's
    maps or from each (``ClassPlan.crop_from``). ``gt_boxes``: (N, B, 4) shared by an image's maps, or (N, C, B, 4)
    per class (``BoxTable.class_batch``), each map measured against its class's boxes."""
    plan = settings.classes
    assert plan is not None
    device = batch.image.device
    r = explain_classes(model, target, batch, settings, targets)
    n, k = r.classes.shape
    size = tuple(batch.image.shape[-2:])
    heat = cam.upsample(r.cam.flatten(0, 1), size).view(n, k, *size)
    grey = to_unit_grey(batch.image, settings.preprocessing)
    orig_size = batch.orig_size.to(device)
    wanted = set(settings.fields)
    out = _batch_fields(batch, r.pred, r.probs, targets, explained=r.classes.to(torch.int16))
    out |= _map_fields(wanted, grey, r.raw, heat)
    lung = lung_masks(lungs, batch.source, size, amp=settings.amp) if lungs is not None else None
    if lung is not None:
        out["lung_mask"] = lung.to(torch.uint8)
    gt = _slot_box_masks(gt_boxes.to(device), r.classes, orig_size, size) if gt_boxes is not None else None
    out |= slot_fields(
        heat,
        r.classes,
        grey,
        batch.source,
        orig_size,
        wanted=wanted,
        crop=settings.crop,
        enhance=settings.enhance,
        each=plan.crop_from == "each",
        lung=lung,
        lung_in_enhanced=settings.lung_mask_in_enhanced,
        gt=gt,
    )
    return out


def _slot_box_masks(
    boxes: torch.Tensor, classes: torch.Tensor, orig_size: torch.Tensor, size: tuple[int, ...]
) -> torch.Tensor:
    """Box masks at model resolution: (N, H, W) for boxes (N, B, 4) shared by an image's maps; (N, K, H, W), the
    boxes of each slot's class, for boxes per class (N, C, B, 4)."""
    if boxes.ndim == 3:
        return localisation.boxes_mask(boxes, orig_size, size)
    rows = torch.arange(boxes.shape[0], device=boxes.device)
    per_slot = [boxes[rows, classes[:, s].clamp(min=0)] for s in range(classes.shape[1])]
    return torch.stack([localisation.boxes_mask(b, orig_size, size) for b in per_slot], 1)
