"""What an enhance spec resolves to before the first batch: the model with its checked target layer, the maps per
class it asks for (``ClassPlan``), the stored fields and the per-batch ``OutputSettings`` for the device, and the
batch size.

Usage::

    from enhancer.enhance.job_settings import load_model, output_settings
    ck, target = load_model(spec)
    settings = output_settings(spec, ck, "cuda")
"""

from __future__ import annotations

import dataclasses

from enhancer.data import Scan
from enhancer.enhance.batch_outputs import ClassPlan, OutputSettings
from enhancer.explain import cam
from enhancer.models.checkpoints import CheckpointError, LoadedCheckpoint, output_activation
from enhancer.models.inspection import open_model
from enhancer.models.registry import TargetLayer
from enhancer.settings import ExplainPolicy
from enhancer.specs import EnhanceSpec, SpecError
from enhancer.store import resolve_fields
from enhancer.store.schema import BOX_FIELDS, EXPLAINED_FIELDS, LUNG_FIELDS, TARGET_FIELDS


def load_model(spec: EnhanceSpec) -> tuple[LoadedCheckpoint, TargetLayer]:
    """The spec's model (``model``/``arch``, ``num_classes``) with its preprocessing (the library's, overridden by
    ``spec.input``) and its checked target layer."""
    if spec.checkpoint is None:
        raise SpecError(
            "no checkpoint given: pass --checkpoint FILE (the original research's .pth files load as they are), "
            "or make a demonstration model with `enhancer demo-model`"
        )
    i = spec.input
    return open_model(
        spec.checkpoint,
        arch=spec.arch,
        model=spec.model,
        num_classes=spec.num_classes,
        target_layer=spec.target_layer,
        size=i.size,
        mean=i.mean,
        std=i.std,
        channels=i.channels,
    )


def output_settings(
    spec: EnhanceSpec,
    ck: LoadedCheckpoint,
    device: str,
    plan: ClassPlan | None = None,
    *,
    multi_label: bool = False,
    boxes: bool | None = None,
) -> OutputSettings:
    """The per-batch settings for ``device``: the trunk in channels_last where that is faster
    (``cam.prefers_channels_last``), bf16 autocast with ``amp`` on CUDA. ``plan``: maps per (image, class)
    (``class_plan``); ``multi_label``: the inputs have multi-hot targets (stored as ``targets``); ``boxes``: whether
    there are boxes (default: --boxes)."""
    cam_settings = spec.cam
    if cam.prefers_channels_last(device):
        cam_settings = dataclasses.replace(cam_settings, channels_last=True)
    if spec.amp and device.startswith("cuda"):
        cam_settings = dataclasses.replace(cam_settings, amp="bf16")
    return OutputSettings(
        fields=measured_fields(spec, multi_label=multi_label, per_class=plan is not None, boxes=boxes),
        cam=cam_settings,
        crop=spec.crop,
        enhance=spec.enhance,
        preprocessing=ck.preprocessing,
        lung_mask_in_enhanced=spec.lung_mask_in_enhanced,
        amp=spec.amp and device.startswith("cuda"),
        classes=plan,
    )


def measured_fields(
    spec: EnhanceSpec, *, multi_label: bool = False, per_class: bool = False, boxes: bool | None = None
) -> tuple[str, ...]:
    """The selected fields plus the measured ones the spec's inputs allow (lung model, boxes), ``targets`` for
    multi-label inputs and ``explained`` for maps per (image, class)."""
    chosen = resolve_fields(spec.fields)
    has_boxes = bool(spec.boxes) if boxes is None else boxes
    for names, given, option in ((LUNG_FIELDS, spec.lung_model, "--lung-model"), (BOX_FIELDS, has_boxes, "--boxes")):
        asked = [f for f in chosen if f in names]
        if asked and not given:
            raise SpecError(f"fields {asked} need {option} FILE; give it or leave them out of --fields")
    extra = (*(LUNG_FIELDS if spec.lung_model else ()), *(BOX_FIELDS if has_boxes else ()))
    extra += (*(TARGET_FIELDS if multi_label else ()), *(EXPLAINED_FIELDS if per_class else ()))
    return resolve_fields((*chosen, *extra))


def class_plan(spec: EnhanceSpec, ck: LoadedCheckpoint, found: Scan) -> ClassPlan | None:
    """The per-class maps the spec asks for (``explain``, ``head``, ``threshold``, ``crop_from``), or None for the
    seed's one map per image: ``explain = auto`` with a softmax model. A sigmoid model (``head``, or recorded in
    the checkpoint by ``enhancer train --loss bce``) explains ``pred`` by default."""
    num_classes = ck.config.num_classes
    if found.label_file is not None and len(found.class_names) != num_classes:
        raise SpecError(
            f"{found.label_file} has {len(found.class_names)} classes ({', '.join(found.class_names[:6])}...) but the "
            f"model has {num_classes} outputs; use a model with one output per class (--num-classes)"
        )
    try:
        activation = output_activation(ck, spec.head)
    except CheckpointError as exc:
        raise SpecError(str(exc)) from None
    policy = ExplainPolicy.parse(spec.explain)
    if policy.kind == "auto":
        if activation == "softmax":
            return None
        policy = ExplainPolicy("pred")
    names = found.class_names if len(found.class_names) == num_classes else ck.class_names
    try:
        ids = policy.class_ids(tuple(names)) if policy.kind == "classes" else ()
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    return ClassPlan(activation, policy, spec.threshold, spec.crop_from, policy.slots(num_classes), ids)


def default_batch_size(device: str) -> int:
    """Images per batch when the spec leaves it open. CPU: 16 (a few batches even on small inputs, so that loading,
    compute and writing overlap; smaller batches also run faster per image there, see benchmarks/RESULTS.md). CUDA:
    256, enough work per launch to keep one GPU busy (the ResNet-101 trunk in bf16 fits a 40 GB GPU)."""
    return 256 if device.startswith("cuda") else 16
