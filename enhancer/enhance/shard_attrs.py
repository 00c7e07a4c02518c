"""The attributes every shard of an enhanced dataset stores: what explained the images (model, target layer, CAM
method and settings, preprocessing, crop and enhance settings), the inputs (data, label file, boxes, lung model)
and the provenance. ``identity`` holds what all shards of one dataset must share (``check_output_dir``, merge).

Usage::

    from enhancer.enhance.shard_attrs import dataset_attrs, with_class_attrs
    attrs = dataset_attrs(spec, ck, target, settings, n_total, class_names, extra={})
    attrs = with_class_attrs(attrs, spec, plan, found)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from enhancer.data import Scan
from enhancer.enhance.batch_outputs import ClassPlan, OutputSettings
from enhancer.explain import cam, localisation
from enhancer.explain.localisation import BoxTable
from enhancer.explain.methods import METHOD_NOTES
from enhancer.hashing import file_sha256
from enhancer.models.checkpoints import LoadedCheckpoint
from enhancer.models.lungs import LungModel
from enhancer.models.registry import TargetLayer
from enhancer.provenance import provenance
from enhancer.specs import EnhanceSpec
from enhancer.store.codecs import resolve_codecs


def model_attrs(ck: LoadedCheckpoint, target: TargetLayer) -> dict[str, Any]:
    """What explained the images: the model (zoo name, tv:/timm: name or builder), its family, class count, head and
    the target layer with its output shape for one input."""
    return {
        "name": ck.config.arch,
        "family": target.family,
        "num_classes": ck.config.num_classes,
        "head_layer": target.head_layer,
        "target_layer": target.name,
        "target_shape": list(target.shape),
    }


def cam_identity(settings: cam.CamSettings) -> dict[str, Any]:
    """How the maps are computed (method, target, score, reduction, normalisation), which all shards must share; not
    how fast (autocast and memory format on CUDA, Score-/Ablation-CAM copies per forward), which may differ."""
    d = dataclasses.replace(settings, amp=None, channels_last=False).to_dict()
    del d["scorecam_batch"]
    return d


def dataset_attrs(
    spec: EnhanceSpec,
    ck: LoadedCheckpoint,
    target: TargetLayer,
    settings: OutputSettings,
    n_total: int,
    class_names: Sequence[str],
    extra: dict[str, Any],
    lungs: LungModel | None = None,
    boxes: BoxTable | None = None,
) -> dict[str, Any]:
    """Provenance stored in every shard. ``identity`` holds what must agree between the shards of one dataset."""
    measured: dict[str, Any] = {}
    if lungs is not None:
        measured["lung_model"] = {**lungs.describe(), "in_enhanced": settings.lung_mask_in_enhanced}
    if boxes is not None:
        measured["boxes"] = {
            "path": boxes.source,
            "sha256": file_sha256(boxes.source),
            "images": len(boxes),
            "iou_threshold": settings.crop.threshold,
        }
    identity = {
        "data": os.path.abspath(spec.data),
        "n_total": n_total,
        "num_shards": spec.num_shards,
        "checkpoint_sha256": ck.sha256,
        "model": {k: v for k, v in model_attrs(ck, target).items() if k in ("name", "num_classes", "target_layer")},
        "fields": list(settings.fields),
        "codecs": {k: c.name for k, c in resolve_codecs(settings.fields, spec.codec, spec.compression).items()},
        "cam": cam_identity(settings.cam),
        "crop": settings.crop.to_dict(),
        "enhance": settings.enhance.to_dict(),
        "preprocessing": settings.preprocessing.to_dict(),
        **({"localisation": {k: {"sha256": v["sha256"]} for k, v in measured.items()}} if measured else {}),
    }
    return {
        "identity": identity,
        "class_names": list(class_names),
        "checkpoint": os.path.abspath(ck.path),
        "checkpoint_sha256": ck.sha256,
        "architecture": ck.config.arch,
        "head": ck.config.head or "",
        "target_layer": target.name,
        "model": model_attrs(ck, target),
        "gradcam": settings.cam.to_dict(),
        "cam_method": settings.cam.method,
        "cam_method_definition": METHOD_NOTES[settings.cam.method],
        "raw_cam_scale": cam.RAW_CAM_SCALE_NOTE,
        "preprocessing": settings.preprocessing.to_dict(),
        "crop_settings": settings.crop.to_dict(),
        "enhance_settings": settings.enhance.to_dict(),
        "data_root": os.path.abspath(spec.data),
        "n_total": n_total,
        "spec": spec.shard_dict(),
        **({"localisation": {**measured, "definitions": localisation.NOTE}} if measured else {}),
        **provenance(),
        **extra,
    }


def with_class_attrs(attrs: dict[str, Any], spec: EnhanceSpec, plan: ClassPlan | None, found: Scan) -> dict[str, Any]:
    """``dataset_attrs`` plus those of a label file and of maps per class (``class_attrs``), in the identity too."""
    extra = class_attrs(spec, plan, found)
    identity = {**attrs["identity"], **{k: v for k, v in extra.items() if k in ("labels", "explain")}}
    return {**attrs, "identity": identity, **extra}


def class_attrs(spec: EnhanceSpec, plan: ClassPlan | None, found: Scan | None) -> dict[str, Any]:
    """The label file (path, sha256, format, uncertain and view policies, the MIMIC image list joined with it) and
    the per-class maps (``activation``, ``explain``) of a dataset; nothing for a folder explained with one map per
    image."""
    out: dict[str, Any] = {}
    if found is not None and found.label_file is not None:
        out["labels"] = {
            "path": found.label_file,
            "sha256": file_sha256(found.label_file),
            "format": found.label_format,
            "uncertain": spec.uncertain,
            "view": spec.view,
            **(
                {"metadata": {"path": found.label_metadata, "sha256": file_sha256(found.label_metadata)}}
                if found.label_metadata is not None
                else {}
            ),
            "entries": len(found.samples),
            "multi_label": found.multi_label,
        }
    if plan is not None:
        out["activation"] = plan.activation
        out["explain"] = plan.to_dict()
    return out
