"""The enhance job: scan -> shard -> validate (while the model loads) -> loader -> model -> Grad-CAM -> crops, enhanced
images -> HDF5 shard.

Usage::

    from enhancer.enhance import run_enhance
    from enhancer.specs import EnhanceSpec
    summary = run_enhance(EnhanceSpec(data="val/", out="enhanced/", checkpoint="ResNet-101_GradCAM_Cropped_v4.pth"))
    # + lung masks and localisation metrics (lung_energy, lung_hit; box_* with an annotated box CSV):
    run_enhance(EnhanceSpec(..., lung_model="UNet_LungSegmentation.pt", boxes="stage_2_train_labels.csv"))

One call writes one shard (``spec.shard_id`` of ``spec.num_shards``); ``enhancer merge`` joins them. Everything per
batch stays on the model's device; only finished arrays cross to the host, and loading, computing and writing
overlap (``enhancer.enhance.batch_loop``). The shard is written under its claim (``enhancer.store.claims``); a stop
signal lets the batch in flight finish, then discards the shard (``enhancer.stopping``). A complete shard is skipped
on a rerun; an interrupted one is rewritten.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from enhancer.data import make_loader, shard
from enhancer.data.loader import resolve_device
from enhancer.enhance.batch_loop import shard_writer, stream_batches
from enhancer.enhance.batch_outputs import OutputSettings
from enhancer.enhance.inputs import checked_in_background, load_boxes, load_lungs, scan_inputs
from enhancer.enhance.job_settings import class_plan, default_batch_size, load_model, output_settings
from enhancer.enhance.shard_attrs import dataset_attrs, with_class_attrs
from enhancer.enhance.summary import EnhanceSummary, already_complete, job_summary
from enhancer.explain.compiled import CompiledTrunk
from enhancer.explain.folding import FoldedTrunk
from enhancer.models.lungs import LungModel
from enhancer.models.registry import TargetLayer
from enhancer.specs import EnhanceSpec
from enhancer.store import Manifest, is_complete, merge, shard_path
from enhancer.store.claims import ShardClaim
from enhancer.store.layout import SHARD_GLOB, check_output_dir, read_shard_attrs

log = logging.getLogger(__name__)


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
    found = scan_inputs(spec)
    device = resolve_device(spec.device)
    mine = shard(list(found.samples), spec.shard_id, spec.num_shards)
    with checked_in_background(spec, mine, device, found) as checked:  # while the model loads and folds
        ck, target = load_model(spec)
        boxes = load_boxes(spec, found)
        plan = class_plan(spec, ck, found)
        settings = output_settings(spec, ck, device, plan, multi_label=found.multi_label, boxes=boxes is not None)
        lungs = load_lungs(spec)
        attrs = dataset_attrs(
            spec, ck, target, settings, len(found.samples), found.class_names, extra_attrs, lungs, boxes
        )
        attrs = with_class_attrs(attrs, spec, plan, found)
        check_output_dir(spec.out, attrs["identity"])
        if is_complete(final):
            return already_complete(final, len(mine), device)
        batch_size = spec.batch_size or default_batch_size(device)
        model, target = _on_device(
            ck.model, target, lungs, settings, device, compile_batch=batch_size if spec.compile else None
        )
        ok, rejected = checked()
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
    writer = shard_writer(spec, ck, target, settings, attrs, expected=len(mine), claim=claim)
    n_decode_rejected, stats = stream_batches(
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
    summary = job_summary(
        final, len(mine), writer, len(rejected) + n_decode_rejected, loader.name, device, started, stats
    )
    log.info("%s", summary.line())
    return summary


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
        # compiled, torch.compile fuses the trunk's activations itself: it gets the unfused graph
        folded = FoldedTrunk(target.split, memory_format=memory_format, fuse=not compile_batch)
        target = dataclasses.replace(target, split=folded)
    if compile_batch:
        target = dataclasses.replace(target, split=CompiledTrunk(target.split, batch_size=compile_batch))
    return model, target


def merge_enhanced(out_dir: str | os.PathLike[str]) -> Manifest:
    """Merge the shards of ``out_dir``, checking that written + rejected samples cover the scanned dataset exactly
    (every index in ``range(n_total)`` once; ``n_total`` is recorded by the job in every shard)."""
    shards = sorted(Path(out_dir).glob(SHARD_GLOB))
    n_total = read_shard_attrs(shards[0]).get("n_total") if shards else None
    return merge(out_dir, expected_indices=range(n_total) if n_total is not None else None)
