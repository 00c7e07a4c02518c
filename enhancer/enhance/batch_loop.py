"""The enhance job's overlapped loop, from the loader to the shard writer: batch k+1 loads on a thread
(``enhancer.data.prefetch``) and batch k-1's results are copied out and written (``enhancer.data.host_copy``, the
shard writer's thread) while batch k computes, with no host synchronisation in the per-batch path
(``process_batch``, ``write_batches``). JPEG-coded fields (``--codec image=jpeg95``) are encoded on the GPU when the
job runs there, so only their bytes cross to the host.

Usage::

    from enhancer.enhance.batch_loop import shard_writer, stream_batches
    writer = shard_writer(spec, ck, target, settings, attrs, expected=len(samples), claim=claim)
    n_decode_rejected, stats = stream_batches(loader, model, target, writer, settings, ok, rejected, ...)
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from enhancer.data import Batch, Loader, Rejection, Sample, Scan
from enhancer.data.host_copy import PendingHostCopy, copy_to_host, device_mark
from enhancer.data.prefetch import Prefetcher, pinned
from enhancer.enhance.batch_outputs import OutputSettings, compute_outputs
from enhancer.enhance.inputs import named_rows
from enhancer.explain.localisation import BoxTable
from enhancer.models.checkpoints import LoadedCheckpoint
from enhancer.models.lungs import LungModel
from enhancer.models.registry import TargetLayer
from enhancer.specs import EnhanceSpec
from enhancer.stopping import batch_boundaries
from enhancer.store import AsyncShardWriter, per_sample_shapes
from enhancer.store.claims import ShardClaim
from enhancer.store.codecs import Codec, EncodedPlanes
from enhancer.store.device_jpeg import DeviceJpegs, encode_jpeg_fields
from enhancer.store.encoding import default_write_threads

log = logging.getLogger(__name__)


@dataclass
class LoopStats:
    """What ``write_batches`` measured: batches, their device time (CUDA events), when the first arrived and when
    the last was handed to the writer (``time.perf_counter``)."""

    batches: int = 0
    device_s: float = 0.0
    first_at: float | None = None
    ended_at: float | None = None


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


def shard_writer(
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


def stream_batches(
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
        writer.add_rejected(_rejection_rows(rejected))
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
        decode_rejected = named_rows(loader.rejected, found)
        writer.add_rejected(_rejection_rows(decode_rejected))
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


def _rejection_rows(rejections: Iterable[Rejection]) -> list[dict[str, Any]]:
    """The writer's rows of rejected inputs (``AsyncShardWriter.add_rejected``), their names as stored."""
    return [
        {"index": r.index, "path": storable_path(r.path), "code": r.code, "message": storable_path(r.message)}
        for r in rejections
    ]
