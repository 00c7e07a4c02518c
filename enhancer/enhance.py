"""The enhance job: scan -> validate -> shard -> loader -> model -> Grad-CAM -> crops, enhanced images -> HDF5 shard.

Usage::

    from enhancer.enhance import run_enhance
    from enhancer.specs import EnhanceSpec
    summary = run_enhance(EnhanceSpec(data="val/", out="enhanced/", checkpoint="ResNet-101_GradCAM_Cropped_v4.pth"))
    # + lung masks and localisation metrics (lung_energy, lung_hit; box_* with an annotated box CSV):
    run_enhance(EnhanceSpec(..., lung_model="UNet_LungSegmentation.pt", boxes="stage_2_train_labels.csv"))

One call writes one shard (``spec.shard_id`` of ``spec.num_shards``); ``enhancer merge`` joins them. Everything per
batch stays on the model's device; only finished arrays cross to the host. The stages overlap: batch k+1 loads on a
thread (``enhancer.data.prefetch``) and batch k-1's results are copied out and written (``enhancer.data.host_copy``,
the shard writer's thread) while batch k computes, with no host synchronisation in the per-batch path
(``process_batch``, ``write_batches``). JPEG-coded fields (``--codec image=jpeg95``) are encoded on the GPU when the
job runs there, so only their bytes cross to the host. The shard is written under its claim
(``enhancer.store.claims``); a stop signal lets the batch in flight finish, then discards the shard
(``enhancer.stopping``). A complete shard is skipped on a rerun; an interrupted one is rewritten.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from enhancer.data import Batch, Loader, Rejection, Sample, Scan, make_loader, scan, shard, validate
from enhancer.data.host_copy import PendingHostCopy, copy_to_host, device_mark
from enhancer.data.labels import read_labels
from enhancer.data.loader import resolve_device, resolve_loader
from enhancer.data.prefetch import Prefetcher, pinned
from enhancer.explain import cam, localisation
from enhancer.explain.classes import ClassCams, class_cams, explained_classes
from enhancer.explain.compiled import CompiledTrunk
from enhancer.explain.compute import compute_cam
from enhancer.explain.folding import FoldedTrunk
from enhancer.explain.localisation import BoxTable, read_boxes
from enhancer.explain.methods import METHOD_NOTES
from enhancer.explain.slots import slot_fields
from enhancer.hashing import file_sha256
from enhancer.models.checkpoints import CheckpointError, LoadedCheckpoint, output_activation
from enhancer.models.inspection import open_model
from enhancer.models.lungs import LungModel, LungModelError, load_lung_model, lung_masks
from enhancer.models.registry import TargetLayer
from enhancer.preprocessing import Preprocessing
from enhancer.provenance import provenance
from enhancer.settings import ExplainPolicy
from enhancer.specs import EnhanceSpec, SpecError
from enhancer.stopping import batch_boundaries
from enhancer.store import AsyncShardWriter, Manifest, is_complete, merge, per_sample_shapes, resolve_fields, shard_path
from enhancer.store.claims import ShardClaim
from enhancer.store.codecs import Codec, EncodedPlanes, resolve_codecs
from enhancer.store.device_jpeg import DeviceJpegs, encode_jpeg_fields
from enhancer.store.encoding import default_write_threads
from enhancer.store.layout import SHARD_GLOB, check_output_dir, read_shard_attrs
from enhancer.store.schema import (
    BOX_FIELDS,
    EXPLAINED_FIELDS,
    LUNG_FIELDS,
    METRIC_FIELDS,
    TARGET_FIELDS,
)

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class EnhanceSummary:
    shard: str
    skipped: bool  # the shard was already complete
    n_in: int
    n_written: int
    n_rejected: int
    seconds: float
    loader: str
    device: str
    writer_blocked_s: float = 0.0
    startup_s: float = 0.0  # from the start to the first batch loaded: model, scan, validation, loader
    loop_s: float = 0.0  # from the first batch loaded to the last one handed to the writer
    device_busy_s: float = 0.0  # CUDA time of the batches (events around each); 0 on the CPU

    @property
    def images_per_s(self) -> float:
        return self.n_written / self.seconds if self.seconds > 0 else 0.0

    @property
    def device_busy_fraction(self) -> float | None:
        """Share of the loop the GPU spent on batches (None off CUDA): near 1 when the host keeps up."""
        return self.device_busy_s / self.loop_s if self.device.startswith("cuda") and self.loop_s > 0 else None

    def line(self) -> str:
        if self.skipped:
            return f"{self.shard}: already complete ({self.n_written} written, {self.n_rejected} rejected), skipped"
        busy = self.device_busy_fraction
        return (
            f"{self.shard}: {self.n_written} written, {self.n_rejected} rejected of {self.n_in} in "
            f"{self.seconds:.1f} s ({self.images_per_s:.1f} images/s, {self.loader} on {self.device}"
            f"{'' if busy is None else f', GPU busy {busy:.0%}'}; start-up {self.startup_s:.1f} s; "
            f"waited {self.writer_blocked_s:.1f} s for the writer)"
        )


@dataclass
class LoopStats:
    """What ``write_batches`` measured: batches, their device time (CUDA events), when the first arrived and when
    the last was handed to the writer (``time.perf_counter``)."""

    batches: int = 0
    device_s: float = 0.0
    first_at: float | None = None
    ended_at: float | None = None


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
    """Every stored field of one batch, computed on the batch's device (only the selected optional fields).

    ``target``: the CAM layer (``resolve_target``); None: a zoo model at its own split; ``targets`` kept as given.
    ``lungs``: a lung segmenter on the model's device: lung_mask, lung_energy, lung_hit. ``boxes`` (N, K, 4) xyxy in
    original pixels, NaN-padded (``BoxTable.batch``), as ``gt_boxes``: box_*. Per class: ``compute_class_outputs``."""
    if settings.classes is not None:
        return compute_class_outputs(model, batch, settings, lungs, gt_boxes, target, targets)
    device = batch.image.device
    # host bookkeeping goes to the device with non_blocking copies (pinned by the prefetcher: asynchronous on CUDA)
    result = explain(model, target, batch.image, settings.cam, batch.label)
    size = tuple(batch.image.shape[-2:])
    heat = cam.upsample(result.cam, size)
    grey = to_unit_grey(batch.image, settings.preprocessing)
    orig_size = batch.orig_size.to(device, non_blocking=True)
    out = {
        "index": batch.index,
        "label": batch.label,
        "pred": result.pred,
        "prob": result.probs,
        "orig_size": batch.orig_size,
        **({"targets": targets} if targets is not None else {}),
    }
    wanted = set(settings.fields)
    if "image" in wanted:
        out["image"] = to_uint8(grey)
    if "cam" in wanted:
        out["cam"] = result.raw
    if "heatmap" in wanted:
        out["heatmap"] = to_uint8(heat)
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


def compute_class_outputs(
    model: nn.Module,
    batch: Batch,
    settings: OutputSettings,
    lungs: LungModel | None = None,
    gt_boxes: torch.Tensor | None = None,
    target: TargetLayer | None = None,
    targets: torch.Tensor | None = None,
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
    out = {"index": batch.index, "label": batch.label, "pred": r.pred, "prob": r.probs, "orig_size": batch.orig_size}
    out["explained"] = r.classes.to(torch.int16)
    if targets is not None:
        out["targets"] = targets
    wanted = set(settings.fields)
    if "image" in wanted:
        out["image"] = to_uint8(grey)
    if "cam" in wanted:
        out["cam"] = r.raw
    if "heatmap" in wanted:
        out["heatmap"] = to_uint8(heat)
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


def batch_preparer(
    paths: Mapping[int, str],
    sources: Mapping[int, str],
    boxes: BoxTable | None,
    *,
    targets: torch.Tensor | None = None,
    box_classes: Sequence[str] = (),
) -> Callable[[Batch], dict[str, Any]]:
    """The per-batch host work done while the previous batch computes (``Prefetcher(prepare=...)``): the stored file
    names, with a box table the batch's annotated boxes (per class of ``box_classes`` when given:
    ``BoxTable.class_batch``), with ``targets`` (all samples' multi-hot targets) the batch's; both pinned for an
    asynchronous copy in."""

    def prepare(batch: Batch) -> dict[str, Any]:
        rows = batch.index.numpy().tolist()
        extra: dict[str, Any] = {"path": [paths[i] for i in rows]}
        if boxes is not None:
            files = [sources[i] for i in rows]
            found = boxes.class_batch(files, box_classes) if box_classes else boxes.batch(files)
            extra["gt_boxes"] = pinned(found)
        if targets is not None:
            extra["targets"] = pinned(targets[batch.index])
        return extra

    return prepare


def process_batch(
    model: nn.Module,
    batch: Batch,
    extra: Mapping[str, Any],
    settings: OutputSettings,
    *,
    lungs: LungModel | None = None,
    target: TargetLayer | None = None,
    codecs: Mapping[str, Codec] | None = None,
) -> PendingHostCopy:
    """One batch: every stored field computed on the device, then its copies out started. Nothing here waits for
    the device (no ``.item()``, ``.tolist()``, ``bool(tensor)`` or blocking copy), so the host queues this batch's
    work and returns while the device is still busy with it. ``codecs``: the writer's (``AsyncShardWriter.codecs``);
    JPEG-coded fields on CUDA are encoded there (``copy_out``). That step is the exception: torchvision's nvJPEG
    encoder waits on its own stream for every plane's length, so a JPEG codec costs host time per batch on CUDA."""
    started = device_mark(batch.image.device)
    outputs = compute_outputs(
        model, batch, settings, lungs=lungs, gt_boxes=extra.get("gt_boxes"), target=target, targets=extra.get("targets")
    )
    return copy_out(encode_jpeg_fields(outputs, codecs or {}), extra["path"], started=started)


def copy_out(
    outputs: Mapping[str, torch.Tensor | DeviceJpegs], paths: list[str], *, started: torch.cuda.Event | None = None
) -> PendingHostCopy:
    """Start the copies out of one batch's fields (``copy_to_host``). A field already encoded on the device
    (``DeviceJpegs``: nvJPEG on CUDA, ``encode_jpeg_fields``) crosses as its JPEG bytes, one flat copy, and comes
    back as the ``EncodedPlanes`` the writer stores as they are (``_host_arrays``)."""
    jpegs = {name: v for name, v in outputs.items() if isinstance(v, DeviceJpegs)}
    tensors = {name: v.flat if isinstance(v, DeviceJpegs) else v for name, v in outputs.items()}
    return copy_to_host(tensors, {"path": paths}, started=started, finish=functools.partial(_host_arrays, jpegs=jpegs))


def _host_arrays(arrays: dict[str, Any], *, jpegs: Mapping[str, DeviceJpegs]) -> dict[str, Any]:
    """One batch's host arrays for the writer: the bytes of each device-encoded JPEG field split into its samples'
    files (views of the one copy, no re-encoding); every other array passes through."""
    for name, encoded in jpegs.items():
        arrays[name] = EncodedPlanes.from_flat(arrays[name], encoded.lengths, encoded.codec, encoded.shape)
    return arrays


def write_batches(
    batches: Iterable[tuple[Batch, Mapping[str, Any]]],
    compute: Callable[[Batch, Mapping[str, Any]], PendingHostCopy],
    writer: AsyncShardWriter,
    on_batch: Callable[[int], None] | None = None,
    *,
    started: float | None = None,
    stop_point: Callable[[], None] | None = None,
) -> LoopStats:
    """Compute every batch and hand its host arrays to the writer one batch late: batch k's copies out are waited
    for only once batch k+1's work is queued, so the device always has work while the host waits. ``started``: the
    job's start (``time.perf_counter``), to log the start-up time when the first batch arrives. ``stop_point``
    (``enhancer.stopping.batch_boundaries``) is called after each batch: a held stop signal is raised there, once
    the batch in flight is computed and queued, and the shard being written is discarded."""
    stats = LoopStats()
    pending: PendingHostCopy | None = None
    for batch, extra in batches:
        if stats.first_at is None:
            stats.first_at = time.perf_counter()
            if started is not None:
                log.info("first batch loaded %.2f s after the start (model, scan, loader)", stats.first_at - started)
        copy = compute(batch, extra)
        if pending is not None:
            _hand_over(pending, writer, stats)
        pending = copy
        stats.batches += 1
        if on_batch is not None:
            on_batch(len(batch))
        if stop_point is not None:
            stop_point()
    if pending is not None:
        _hand_over(pending, writer, stats)
    stats.ended_at = time.perf_counter()
    return stats


def _hand_over(pending: PendingHostCopy, writer: AsyncShardWriter, stats: LoopStats) -> None:
    writer.put(pending.wait())
    stats.device_s += pending.device_seconds


def storable_path(path: str) -> str:
    """A file name as valid UTF-8 for HDF5: undecodable bytes (kept by os.fsdecode as surrogates) become
    ``\\xNN`` escapes, so the stored name still identifies the file."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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


def scan_inputs(spec: EnhanceSpec) -> Scan:
    """The job's inputs: the label file's entries (``spec.labels``, images under ``spec.data``), else the folder or
    ``path,label`` CSV ``spec.data``."""
    if spec.labels is None:
        return scan(spec.data)
    return read_labels(spec.labels, spec.data, format=spec.label_format, uncertain=spec.uncertain, view=spec.view)


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
        "spec": spec.to_dict(),
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
    """The label file (path, sha256, format, uncertain and view policies) and the per-class maps (``activation``,
    ``explain``) of a dataset; nothing for a folder explained with one map per image."""
    out: dict[str, Any] = {}
    if found is not None and found.label_file is not None:
        out["labels"] = {
            "path": found.label_file,
            "sha256": file_sha256(found.label_file),
            "format": found.label_format,
            "uncertain": spec.uncertain,
            "view": spec.view,
            "entries": len(found.samples),
            "multi_label": found.multi_label,
        }
    if plan is not None:
        out["activation"] = plan.activation
        out["explain"] = plan.to_dict()
    return out


def run_enhance(
    spec: EnhanceSpec,
    *,
    progress: bool = True,
    extra_attrs: dict[str, Any] | None = None,
    claim: ShardClaim | None = None,
) -> EnhanceSummary:
    """Write shard ``spec.shard_id`` of the enhanced dataset of ``spec.data`` into ``spec.out``.

    ``extra_attrs`` are stored with the provenance (the command line passes the SLURM job ids here, under
    ``"slurm"``; they are recorded with the shard's claim too). ``claim``: the shard's claim when the caller holds it
    already (the command line takes it before importing torch, so that a second job on the shard is refused at
    once); without one it is taken here (``enhancer.store.claims``), and a job holding it makes this one fail."""
    extra_attrs = extra_attrs or {}
    if claim is not None:
        return _run_claimed(spec, claim, progress=progress, extra_attrs=extra_attrs)
    final = shard_path(spec.out, spec.shard_id, spec.num_shards)
    with ShardClaim(final, job=extra_attrs.get("slurm"), force=spec.force_claim) as held:
        return _run_claimed(spec, held, progress=progress, extra_attrs=extra_attrs)


def _run_claimed(
    spec: EnhanceSpec, claim: ShardClaim, *, progress: bool, extra_attrs: dict[str, Any]
) -> EnhanceSummary:
    """``run_enhance`` under the shard's claim."""
    started = time.perf_counter()
    final = claim.shard
    ck, target = load_model(spec)
    found = scan_inputs(spec)
    device = resolve_device(spec.device)
    boxes = _load_boxes(spec, found)
    plan = class_plan(spec, ck, found)
    settings = output_settings(spec, ck, device, plan, multi_label=found.multi_label, boxes=boxes is not None)
    lungs = _load_lungs(spec)
    attrs = dataset_attrs(spec, ck, target, settings, len(found.samples), found.class_names, extra_attrs, lungs, boxes)
    attrs = with_class_attrs(attrs, spec, plan, found)
    check_output_dir(spec.out, attrs["identity"])
    mine = shard(list(found.samples), spec.shard_id, spec.num_shards)
    if is_complete(final):
        return _already_complete(final, len(mine), device)
    ok, rejected = _check_inputs(spec, mine, device, found)
    batch_size = spec.batch_size or default_batch_size(device)
    model, target = _on_device(
        ck.model, target, lungs, settings, device, compile_batch=batch_size if spec.compile else None
    )
    loader = make_loader(
        ok,
        ck.preprocessing,
        batch_size=batch_size,
        loader=spec.loader,
        device=device,
        num_threads=spec.num_threads,
        source_size=spec.source_size,
        max_pixels=spec.max_pixels,
        timeout_s=spec.decode_timeout_s or None,
    )
    writer = _shard_writer(spec, ck, target, settings, attrs, expected=len(mine), claim=claim)
    n_decode_rejected, stats = _stream(
        loader,
        model,
        target,
        writer,
        settings,
        ok,
        rejected,
        lungs=lungs,
        boxes=boxes,
        progress=progress,
        desc=final.name,
        started=started,
        found=found,
    )
    summary = _summary(final, len(mine), writer, len(rejected) + n_decode_rejected, loader.name, device, started, stats)
    log.info("%s", summary.line())
    return summary


def validation_level(spec: EnhanceSpec, samples: Sequence[Sample], device: str) -> str:
    """``spec.validate``, with ``auto`` resolved: ``full`` (every file decoded by PIL first) when DALI or nvJPEG will
    decode, because both can crash the whole process on a corrupt file that PIL refuses cleanly (DALI 2.4: a JPEG
    with a zeroed Huffman table in a batch of 32 or more; found by tests/fuzz); ``header`` when PIL decodes anyway,
    in the torch loader on the CPU, which rejects such files one by one."""
    if spec.validate != "auto":
        return spec.validate
    pil_decodes = resolve_loader(spec.loader, samples) == "torch" and not device.startswith("cuda")
    return "header" if pil_decodes else "full"


def _check_inputs(
    spec: EnhanceSpec, samples: Sequence[Sample], device: str, found: Scan
) -> tuple[list[Sample], list[Rejection]]:
    """The shard's samples validated; the label file's own rejections (missing image, bad label, other view) are not
    opened, and every rejection of a label file's entry names its row."""
    refused = {r.index: r for r in found.rejected}
    ok, rejected = _validate(spec, [s for s in samples if s.index not in refused], device)
    return ok, [refused[s.index] for s in samples if s.index in refused] + _named_rows(rejected, found)


def _named_rows(rejections: Iterable[Rejection], found: Scan | None) -> list[Rejection]:
    """Rejections of a label file's entries with their row in the message (``Data_Entry_2017.csv row 7: ...``)."""
    if found is None or found.label_file is None:
        return list(rejections)
    return [dataclasses.replace(r, message=f"{found.row_of(r.index)}: {r.message}") for r in rejections]


def _validate(spec: EnhanceSpec, samples: Sequence[Sample], device: str) -> tuple[list[Sample], list[Rejection]]:
    level = validation_level(spec, samples, device)
    return validate(
        samples,
        level=level,
        workers=max(1, spec.num_threads),
        max_pixels=spec.max_pixels,
        timeout_s=spec.decode_timeout_s or None,
    )


def _summary(
    final: Path,
    n_in: int,
    writer: AsyncShardWriter,
    n_rejected: int,
    loader: str,
    device: str,
    started: float,
    stats: LoopStats,
) -> EnhanceSummary:
    ended = time.perf_counter()
    first = stats.first_at if stats.first_at is not None else ended
    return EnhanceSummary(
        str(final),
        False,
        n_in,
        writer.n_samples,
        n_rejected,
        ended - started,
        loader,
        device,
        writer.blocked_s,
        startup_s=first - started,
        loop_s=(stats.ended_at or ended) - first,
        device_busy_s=stats.device_s,
    )


def _already_complete(final: Path, n_in: int, device: str) -> EnhanceSummary:
    """The summary of a shard a previous run completed (a rerun skips it)."""
    done = read_shard_attrs(final)
    n_written, n_rejected = int(done.get("n_samples", 0)), int(done.get("n_rejected", 0))
    return EnhanceSummary(str(final), True, n_in, n_written, n_rejected, 0.0, "-", device)


def default_batch_size(device: str) -> int:
    """Images per batch when the spec leaves it open. CPU: 16 (a few batches even on small inputs, so that loading,
    compute and writing overlap; smaller batches also run faster per image there, see benchmarks/RESULTS.md). CUDA:
    256, enough work per launch to keep one GPU busy (the ResNet-101 trunk in bf16 fits a 40 GB GPU)."""
    return 256 if device.startswith("cuda") else 16


def _on_device(
    model: nn.Module,
    target: TargetLayer,
    lungs: LungModel | None,
    settings: OutputSettings,
    device: str,
    *,
    compile_batch: int | None = None,
) -> tuple[nn.Module, TargetLayer]:
    """The classifier (and the lung model) on ``device`` in eval mode, channels_last when the settings ask, the
    target's trunk with its BatchNorm folded (``FoldedTrunk``); with ``compile_batch`` that trunk compiled for batches
    of that size (``CompiledTrunk``)."""
    model = model.to(device).eval()
    if lungs is not None:
        lungs.to(device)
    memory_format = torch.channels_last if settings.cam.channels_last else torch.contiguous_format
    if settings.cam.channels_last:
        model = model.to(memory_format=memory_format)
    if target.split is not None:
        target = dataclasses.replace(target, split=FoldedTrunk(target.split, memory_format=memory_format))
    if compile_batch:
        target = dataclasses.replace(target, split=CompiledTrunk(target.split, batch_size=compile_batch))
    return model, target


def _shard_writer(
    spec: EnhanceSpec,
    ck: LoadedCheckpoint,
    target: TargetLayer,
    settings: OutputSettings,
    attrs: dict[str, Any],
    *,
    expected: int,
    claim: ShardClaim,
) -> AsyncShardWriter:
    """The background writer of this job's shard, its per-sample shapes taken from the target layer and the settings
    (``K``: the map slots per image, on the fields with a slot axis)."""
    h, w = target.shape[-2:]
    H, W = ck.preprocessing.size
    plan = settings.classes
    per_class = plan.per_class(settings.fields) if plan is not None else ()
    shapes = per_sample_shapes(
        settings.fields,
        per_class,
        H=H,
        W=W,
        h=h,
        w=w,
        Hc=spec.crop.size[0],
        Wc=spec.crop.size[1],
        C=ck.config.num_classes,
        K=plan.slots if plan is not None else 1,
    )
    return AsyncShardWriter(
        Path(spec.out),
        spec.shard_id,
        spec.num_shards,
        maxsize=spec.queue_size,
        copy=False,
        shapes=shapes,
        fields=settings.fields,
        codecs=spec.codec,
        compression=spec.compression,
        write_threads=spec.write_threads or default_write_threads(spec.num_threads),
        attrs=attrs,
        expected=expected,
        overwrite=True,
        claim=claim,
        per_class=per_class,
    )


def _stream(
    loader: Loader,
    model: nn.Module,
    target: TargetLayer,
    writer: AsyncShardWriter,
    settings: OutputSettings,
    ok: Sequence[Sample],
    rejected: Sequence[Rejection],
    *,
    lungs: LungModel | None,
    boxes: BoxTable | None,
    progress: bool,
    desc: str,
    started: float,
    found: Scan | None = None,
) -> tuple[int, LoopStats]:
    """Every batch through the model into the writer, then the shard completed with all rejected inputs; returns how
    many the loader rejected (files that failed to decode) and the loop's figures. Batch k+1 loads (``Prefetcher``)
    and batch k-1 is written while batch k computes. A stop signal lets the batch in flight finish, then discards
    the shard (``enhancer.stopping``). ``found``: the scan, for a label file's targets and row numbers."""
    paths = {s.index: storable_path(s.path) for s in ok}
    sources = {s.index: s.path for s in ok}
    prepare = batch_preparer(paths, sources, boxes, **_label_extras(settings, boxes, found))
    prefetcher = Prefetcher(loader, depth=2, prepare=prepare)
    bar = tqdm(total=len(ok), unit="img", disable=not progress, desc=desc, smoothing=0.1)
    codecs = writer.codecs
    with writer, prefetcher, bar, batch_boundaries() as stop_point:
        writer.add_rejected(_rows(rejected))
        stats = write_batches(
            prefetcher,
            lambda batch, extra: process_batch(
                model, batch, extra, settings, lungs=lungs, target=target, codecs=codecs
            ),
            writer,
            bar.update,
            started=started,
            stop_point=stop_point,
        )
        decode_rejected = _named_rows(loader.rejected, found)
        writer.add_rejected(_rows(decode_rejected))
    return len(decode_rejected), stats


def _label_extras(settings: OutputSettings, boxes: BoxTable | None, found: Scan | None) -> dict[str, Any]:
    """What ``batch_preparer`` adds for a label file: every sample's multi-hot targets, and the class names whose
    boxes each map is measured against (maps per class with a box file naming each box's finding, NIH)."""
    if found is None:
        return {}
    per_finding = settings.classes is not None and boxes is not None and boxes.per_finding
    return {
        "targets": torch.from_numpy(found.targets) if found.targets is not None else None,
        "box_classes": tuple(found.class_names) if per_finding else (),
    }


def _load_lungs(spec: EnhanceSpec) -> LungModel | None:
    if spec.lung_model is None:
        return None
    try:
        return load_lung_model(spec.lung_model)
    except LungModelError as exc:
        raise SpecError(f"lung_model: {exc}") from None


def _load_boxes(spec: EnhanceSpec, found: Scan | None = None) -> BoxTable | None:
    """``spec.boxes``; an RSNA label file gives its boxes too."""
    source = spec.boxes
    if source is None and found is not None and found.label_format == "rsna":
        source = found.label_file
    if source is None:
        return None
    try:
        return read_boxes(source)
    except ValueError as exc:
        raise SpecError(f"boxes: {exc}") from None


def _rows(rejections: Iterable[Rejection]) -> list[dict[str, Any]]:
    return [
        {"index": r.index, "path": storable_path(r.path), "code": r.code, "message": storable_path(r.message)}
        for r in rejections
    ]


def merge_enhanced(out_dir: str | os.PathLike[str]) -> Manifest:
    """Merge the shards of ``out_dir``, checking that written + rejected samples cover the scanned dataset exactly
    (every index in ``range(n_total)`` once; ``n_total`` is recorded by the job in every shard)."""
    shards = sorted(Path(out_dir).glob(SHARD_GLOB))
    n_total = read_shard_attrs(shards[0]).get("n_total") if shards else None
    return merge(out_dir, expected_indices=range(n_total) if n_total is not None else None)
