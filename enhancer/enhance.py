"""The enhance job: scan -> validate -> shard -> loader -> model -> Grad-CAM -> crops, enhanced images -> HDF5 shard.

Usage::

    from enhancer.enhance import run_enhance
    from enhancer.specs import EnhanceSpec
    summary = run_enhance(EnhanceSpec(data="val/", out="enhanced/", checkpoint="ResNet-101_GradCAM_Cropped_v4.pth"))

One call writes one shard (``spec.shard_id`` of ``spec.num_shards``); ``enhancer merge`` joins them. Everything per
batch stays on the model's device; only finished arrays cross to the host, and the HDF5 writing runs in a
background thread behind a bounded queue. A complete shard is skipped on a rerun; an interrupted one is rewritten.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from enhancer import cam
from enhancer.checkpoints import LoadedCheckpoint, load_checkpoint
from enhancer.data import Batch, Rejection, Sample, make_loader, scan, shard, validate
from enhancer.data.loader import resolve_device
from enhancer.preprocessing import Preprocessing
from enhancer.provenance import provenance
from enhancer.specs import EnhanceSpec, SpecError
from enhancer.store import AsyncShardWriter, Manifest, is_complete, merge, per_sample_shapes, resolve_fields, shard_path
from enhancer.store.layout import check_output_dir, read_shard_attrs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputSettings:
    """What ``compute_outputs`` produces per batch: the selected fields and how they are made."""

    fields: tuple[str, ...]
    cam: cam.CamSettings
    crop: cam.CropSettings
    enhance: cam.EnhanceSettings
    preprocessing: Preprocessing


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

    @property
    def images_per_s(self) -> float:
        return self.n_written / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        if self.skipped:
            return f"{self.shard}: already complete ({self.n_written} written, {self.n_rejected} rejected), skipped"
        return (
            f"{self.shard}: {self.n_written} written, {self.n_rejected} rejected of {self.n_in} in "
            f"{self.seconds:.1f} s ({self.images_per_s:.1f} images/s, {self.loader} on {self.device}; "
            f"waited {self.writer_blocked_s:.1f} s for the writer)"
        )


def to_unit_grey(image: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """Undo the normalisation of a model input (N, C, H, W) -> its first channel (N, 1, H, W) in [0, 1]."""
    mean, std = preprocessing.mean[0], preprocessing.std[0]
    return (image[:, :1].float() * std + mean).clamp(0, 1)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> uint8, rounding to the nearest level."""
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def compute_outputs(model: nn.Module, batch: Batch, settings: OutputSettings) -> dict[str, torch.Tensor]:
    """Every stored field of one batch, computed on the batch's device (only the selected optional fields)."""
    device = batch.image.device
    result = cam.grad_cam(model, batch.image, settings.cam, labels=batch.label.to(device))
    size = tuple(batch.image.shape[-2:])
    heat = cam.upsample(result.cam, size)
    grey = to_unit_grey(batch.image, settings.preprocessing)
    orig_size = batch.orig_size.to(device)
    out = {
        "index": batch.index,
        "label": batch.label,
        "pred": result.pred,
        "prob": result.probs,
        "orig_size": batch.orig_size,
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
    if "enhanced" in wanted:
        out["enhanced"] = cam.enhance(grey, heat, settings.enhance)
    return out


def _host_arrays(outputs: dict[str, torch.Tensor], paths: list[str]) -> dict[str, Any]:
    arrays: dict[str, Any] = {k: v.detach().cpu().numpy() for k, v in outputs.items()}
    arrays["path"] = paths
    return arrays


def storable_path(path: str) -> str:
    """A file name as valid UTF-8 for HDF5: undecodable bytes (kept by os.fsdecode as surrogates) become
    ``\\xNN`` escapes, so the stored name still identifies the file."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def load_model(spec: EnhanceSpec) -> LoadedCheckpoint:
    if spec.checkpoint is None:
        raise SpecError(
            "no checkpoint given: pass --checkpoint FILE (the original research's .pth files load as they are), "
            "or make a demonstration model with `enhancer demo-model`"
        )
    return load_checkpoint(spec.checkpoint, arch=spec.arch)


def output_settings(spec: EnhanceSpec, ck: LoadedCheckpoint, device: str) -> OutputSettings:
    cam_settings = spec.cam
    if spec.amp and device.startswith("cuda"):
        cam_settings = dataclasses.replace(cam_settings, amp="bf16", channels_last=True)
    return OutputSettings(
        fields=resolve_fields(spec.fields),
        cam=cam_settings,
        crop=spec.crop,
        enhance=spec.enhance,
        preprocessing=ck.preprocessing,
    )


def feature_size(model: nn.Module, preprocessing: Preprocessing, device: str) -> tuple[int, int]:
    """(h, w) of the Grad-CAM target layer at the model's input size."""
    x = torch.zeros(1, preprocessing.in_chans, *preprocessing.size, device=device)
    with torch.no_grad():
        return tuple(model.features(x).shape[-2:])


def dataset_attrs(spec: EnhanceSpec, ck: LoadedCheckpoint, settings: OutputSettings, n_total: int,
                  class_names: Sequence[str], extra: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Provenance stored in every shard. ``identity`` holds what must agree between the shards of one dataset."""
    identity = {
        "data": os.path.abspath(spec.data),
        "n_total": n_total,
        "num_shards": spec.num_shards,
        "checkpoint_sha256": ck.sha256,
        "fields": list(settings.fields),
        "cam": dataclasses.replace(settings.cam, amp=None, channels_last=False).to_dict(),
        "crop": settings.crop.to_dict(),
        "enhance": settings.enhance.to_dict(),
        "preprocessing": settings.preprocessing.to_dict(),
    }
    return {
        "identity": identity,
        "class_names": list(class_names),
        "checkpoint": os.path.abspath(ck.path),
        "checkpoint_sha256": ck.sha256,
        "architecture": ck.config.arch,
        "head": ck.config.head or "",
        "target_layer": ck.model.target_layer,
        "gradcam": settings.cam.to_dict(),
        "raw_cam_scale": cam.RAW_CAM_SCALE_NOTE,
        "preprocessing": settings.preprocessing.to_dict(),
        "crop_settings": settings.crop.to_dict(),
        "enhance_settings": settings.enhance.to_dict(),
        "data_root": os.path.abspath(spec.data),
        "n_total": n_total,
        "spec": spec.to_dict(),
        **provenance(),
        **extra,
    }


def run_enhance(spec: EnhanceSpec, *, progress: bool = True, extra_attrs: dict[str, Any] | None = None) -> EnhanceSummary:
    """Write shard ``spec.shard_id`` of the enhanced dataset of ``spec.data`` into ``spec.out``.

    ``extra_attrs`` are stored with the provenance (the command line passes the SLURM job ids here)."""
    started = time.perf_counter()
    out_dir = Path(spec.out)
    final = shard_path(out_dir, spec.shard_id, spec.num_shards)
    ck = load_model(spec)
    found = scan(spec.data)
    device = resolve_device(spec.device)
    settings = output_settings(spec, ck, device)
    attrs = dataset_attrs(spec, ck, settings, len(found.samples), found.class_names, extra_attrs or {})
    check_output_dir(out_dir, attrs["identity"])
    mine = shard(list(found.samples), spec.shard_id, spec.num_shards)
    if is_complete(final):
        done = read_shard_attrs(final)
        return EnhanceSummary(str(final), True, len(mine), int(done.get("n_samples", 0)),
                              int(done.get("n_rejected", 0)), 0.0, "-", device)  # fmt: skip
    ok, rejected = validate(mine, level=spec.validate, workers=max(1, spec.num_threads))
    model = ck.model.to(device).eval()
    if settings.cam.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = make_loader(ok, ck.preprocessing, batch_size=spec.batch_size, loader=spec.loader, device=device,
                         num_threads=spec.num_threads, source_size=spec.source_size)  # fmt: skip
    h, w = feature_size(model, ck.preprocessing, device)
    H, W = ck.preprocessing.size
    shapes = per_sample_shapes(settings.fields, H=H, W=W, h=h, w=w, Hc=spec.crop.size[0], Wc=spec.crop.size[1],
                               C=ck.config.num_classes)  # fmt: skip
    paths = {s.index: storable_path(s.path) for s in ok}
    writer = AsyncShardWriter(out_dir, spec.shard_id, spec.num_shards, maxsize=spec.queue_size, copy=False,
                              shapes=shapes, fields=settings.fields, compression=spec.compression, attrs=attrs,
                              expected=len(mine), overwrite=True)  # fmt: skip
    with writer, tqdm(total=len(ok), unit="img", disable=not progress, desc=final.name, smoothing=0.1) as bar:
        writer.add_rejected(_rows(rejected))
        for batch in loader:
            outputs = compute_outputs(model, batch, settings)
            writer.put(_host_arrays(outputs, [paths[int(i)] for i in batch.index]))
            bar.update(len(batch))
        decode_rejected = list(loader.rejected)
        writer.add_rejected(_rows(decode_rejected))
    n_rejected = len(rejected) + len(decode_rejected)
    summary = EnhanceSummary(str(final), False, len(mine), writer.n_samples, n_rejected,
                             time.perf_counter() - started, loader.name, device, writer.blocked_s)  # fmt: skip
    log.info("%s", summary.line())
    return summary


def _rows(rejections: Iterable[Rejection]) -> list[dict[str, Any]]:
    return [
        {"index": r.index, "path": storable_path(r.path), "code": r.code, "message": storable_path(r.message)}
        for r in rejections
    ]


def samples_of(spec: EnhanceSpec) -> list[Sample]:
    """The samples shard ``spec.shard_id`` is responsible for (the same deterministic split the job uses)."""
    return shard(list(scan(spec.data).samples), spec.shard_id, spec.num_shards)

def merge_enhanced(out_dir: str | os.PathLike[str]) -> Manifest:
    """Merge the shards of ``out_dir``, checking that written + rejected samples cover the scanned dataset exactly
    (every index in ``range(n_total)`` once; ``n_total`` is recorded by the job in every shard)."""
    shards = sorted(Path(out_dir).glob("shard-*-of-*.h5"))
    n_total = read_shard_attrs(shards[0]).get("n_total") if shards else None
    return merge(out_dir, expected_indices=range(n_total) if n_total is not None else None)
