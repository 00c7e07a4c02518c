"""Shared training and evaluation: the seed recipe, on an ImageFolder or the enhanced HDF5 dataset, with DDP.

Usage::

    enhancer train --data /data/chest_xray --arch resnet101 --init imagenet --out runs/r101        # one process
    enhancer train --data enhanced/ --field enhanced --init runs/r101/best.pt --out runs/r101-enh   # fine-tune
    torchrun --nproc-per-node 4 -m enhancer.cli train --data /data/chest_xray --out runs/ddp        # DDP, 1 box
    srun enhancer train --job jobs/train.toml                       # SLURM (MASTER_ADDR/PORT set in the script)
    enhancer evaluate --data /data/chest_xray --checkpoint ResNet-101_GradCAM_Cropped_v4.pth --json test.json

    from enhancer.train.loop import fit, run_evaluate
    result = fit(TrainSpec(data="...", out="runs/r1"))

The recipe (seed notebook, flaws fixed): RAdam lr 1e-4 weight decay 1e-3, CosineAnnealingLR(T_max=15) stepped per
epoch, global batch 32, up to 20 epochs, early stopping with patience 5 / min_delta 0.001 on the **validation**
loss (a stratified, seeded split of the training data; the test set is never looked at) and the best weights
restored at the end. Unreadable images are counted per epoch, reported and listed in ``unreadable.csv``.

Run directory: ``last.pt`` (everything needed to resume: weights, optimizer, scheduler, epoch, early-stopping
state, history), ``best.pt`` (the best weights: the result), ``metrics.csv`` / ``metrics.jsonl`` (one row per
epoch), ``curves.png``, ``unreadable.csv``, ``summary.json``. A rerun with the same ``out`` resumes from
``last.pt``; each epoch's randomness is seeded from (seed, epoch, rank), so 1 epoch + resume 1 epoch gives the same
weights as 2 epochs. Only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from enhancer.data.loader import resolve_device
from enhancer.models.checkpoints import LoadedCheckpoint, load_checkpoint, output_activation, save_checkpoint
from enhancer.models.zoo import (
    ZOO,
    ModelError,
    SeedResNet,
    build_model,
    count_parameters,
    preprocessing_for,
    set_trainable,
)
from enhancer.preprocessing import Preprocessing, override
from enhancer.provenance import provenance
from enhancer.specs import EvaluateSpec, SpecError, TrainSpec
from enhancer.train import rundir
from enhancer.train.augment import eval_transform, train_transform
from enhancer.train.data import (
    ItemBatch,
    LabelSource,
    Source,
    Unreadable,
    collate_skipping,
    open_source,
    stratified_split,
)
from enhancer.train.distributed import DistContext, all_gather_objects, all_reduce_sum, init_distributed, shutdown
from enhancer.train.metrics import classification_metrics, format_metrics, multilabel_metrics
from enhancer.train.objective import CROSS_ENTROPY, Objective, prevalence_weights

log = logging.getLogger(__name__)


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without the monitored loss improving on the best by more than
    ``min_delta`` (patience 0: never stop early). Epochs are counted from 1."""

    patience: int
    min_delta: float
    best: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False

    def update(self, value: float | None, epoch: int) -> bool:
        """Record one epoch's loss; True when it is the new best."""
        value = math.inf if value is None or not math.isfinite(value) else value
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        self.stopped = self.patience > 0 and self.bad_epochs >= self.patience
        return False


@dataclass
class FitResult:
    run_dir: str
    epochs_run: int  # epochs completed in total (including those of resumed runs)
    best_epoch: int
    stopped_early: bool
    history: list[dict[str, Any]]
    model: nn.Module  # the best weights, on the CPU, eval mode
    unreadable: list[Unreadable] = field(default_factory=list)
    is_main: bool = True

    def line(self) -> str:
        best = self.history[self.best_epoch - 1] if self.best_epoch else {}
        how = "stopped early" if self.stopped_early else "finished"
        return (
            f"{self.run_dir}: {how} after {self.epochs_run} epoch(s); best epoch {self.best_epoch} "
            f"(val loss {_num(best.get('val_loss'))}, val acc {_num(best.get('val_acc'))}) -> "
            f"{Path(self.run_dir) / rundir.BEST}; {len({u.path for u in self.unreadable})} unreadable image(s)"
        )


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def trainable_groups(base: Sequence[str], schedule: Sequence[str], every: int, epoch: int) -> tuple[str, ...]:
    """Groups trained in (0-based) ``epoch``: ``base`` plus one more of ``schedule`` every ``every`` epochs."""
    added = list(schedule[: epoch // every]) if every else []
    return tuple(dict.fromkeys([*base, *added]))


def initial_model(spec: TrainSpec, num_classes: int = 2) -> tuple[nn.Module, Preprocessing, str]:
    """The model a fresh run starts from: a checkpoint (seed files load as they are), ImageNet or random; a fresh
    model gets ``num_classes`` outputs (the data's classes)."""
    if spec.init not in ("auto", "imagenet", "random"):
        ck = load_checkpoint(spec.init, arch=spec.arch, head=spec.head)
        preprocessing = ck.preprocessing
        if spec.input_size and spec.input_size != ck.config.input_size:
            if ck.config.arch == "tinyvgg":
                raise ModelError(
                    f"{spec.init}: tinyvgg was built for input {ck.config.input_size}, its classifier "
                    f"cannot take {spec.input_size}; drop input_size"
                )
            preprocessing = dataclasses.replace(preprocessing, size=(spec.input_size, spec.input_size))
            ck.model.config = dataclasses.replace(ck.config, input_size=spec.input_size)
        return ck.model, preprocessing, f"{spec.init} ({ck.source_format} format, sha256 {ck.sha256[:16]})"
    arch = spec.arch or "resnet101"
    if arch not in ZOO:
        raise ModelError(f"unknown architecture {arch!r}; valid: {', '.join(ZOO)}")
    mode = spec.init if spec.init != "auto" else ("imagenet" if ZOO[arch].imagenet_weights else "random")
    size = spec.input_size or 224
    model = build_model(arch, head=spec.head, input_size=size, init=mode, num_classes=num_classes)
    return model, preprocessing_for(arch, size), mode


def _prepare(model: nn.Module, groups: Sequence[str]) -> None:
    set_trainable(model, groups)
    if isinstance(model, SeedResNet):
        # The torchvision 3-channel conv1 stays in the state_dict but never runs; DDP would wait for its gradient.
        model.resnet.conv1.requires_grad_(False)


def _wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # ctx.device, not the local rank: with one visible GPU per task the local rank is no valid device ordinal
    return DistributedDataParallel(model, device_ids=[torch.device(ctx.device)] if ctx.backend == "nccl" else None)


def _loader(
    dataset: Dataset, *, batch_size: int, num_workers: int, seed: int, device: str, sampler: Any = None
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_skipping,
        pin_memory=device.startswith("cuda"),
        generator=torch.Generator().manual_seed(seed),  # worker seeds: augmentations reproducible with workers
        drop_last=False,  # every sample is used; DistributedSampler pads ranks to equal length
    )


def _inputs(batch: ItemBatch, device: str, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = batch.images.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, batch.labels.to(device, non_blocking=True)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    device: str,
    ctx: DistContext,
    amp: bool = False,
    channels_last: bool = False,
    input_shape: tuple[int, int, int] = (1, 224, 224),
    objective: Objective = CROSS_ENTROPY,
) -> dict[str, Any]:
    """One pass over ``loader``: the objective's mean loss per batch (cross-entropy; masked BCE for multi-label),
    one optimizer step per batch. Returns the loss and accuracy (per sample; per known target for BCE) over all
    ranks and the unreadable items (every rank's)."""
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    decisions = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    failed: list[Unreadable] = []
    for batch in loader:
        failed += batch.failed
        if batch.images is None:
            if not ctx.distributed:
                continue
            # Every item of this rank's batch failed: the other ranks still step, so take part with a dummy input
            # whose loss counts zero (DDP needs the same number of backward passes on every rank).
            x, y, weight = (
                torch.zeros((1, *input_shape), device=device),
                _dummy_target(objective, model, device),
                0.0,
            )
        else:
            (x, y), weight = _inputs(batch, device, channels_last), 1.0
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = objective.loss(logits, y) * weight
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if weight:
            loss_sum += loss.detach().double() * len(y)
            right, decided = objective.correct(logits.detach(), y)
            correct += right
            decisions += decided
            n += len(y)
    total_loss, total_correct, total_n, total_decisions = all_reduce_sum(
        ctx, [loss_sum.item(), float(correct.item()), float(n), float(decisions.item())]
    )
    failed = [f for part in all_gather_objects(ctx, failed) for f in part]
    return {
        "loss": total_loss / total_n if total_n else None,
        "accuracy": total_correct / total_decisions if total_decisions else None,
        "n": int(total_n),
        "failed": failed,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: str,
    ctx: DistContext | None = None,
    class_names: Sequence[str] = ("NORMAL", "PNEUMONIA"),
    amp: bool = False,
    channels_last: bool = False,
    objective: Objective = CROSS_ENTROPY,
    threshold: float = 0.5,
) -> tuple[dict[str, Any], list[Unreadable]]:
    """Metrics of ``model`` on ``loader`` (each rank passes its own part; results combine over ranks):
    loss (mean cross-entropy), accuracy, sensitivity, specificity, AUROC, confusion matrix; for a BCE objective the
    multi-label ones (``multilabel_metrics``: per-class AUROC and average precision, their means, counts at
    ``threshold``; loss = mean BCE over the known targets). Also returns the unreadable items."""
    ctx = ctx or DistContext()
    model.eval()
    # Accumulated on the device: one copy to the host after the last batch, not a wait for the device per batch.
    labels: list[torch.Tensor] = []
    probs: list[torch.Tensor] = []
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    loss_terms = torch.zeros((), dtype=torch.float64, device=device)
    failed: list[Unreadable] = []
    for batch in loader:
        failed += batch.failed
        if batch.images is None:
            continue
        x, y = _inputs(batch, device, channels_last)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model(x).float()
        total, count = objective.loss_terms(logits, y)
        loss_sum += total.double()
        loss_terms += count
        labels.append(y)
        probs.append(objective.probs(logits))
    empty = torch.zeros((0, len(class_names)) if objective.kind == "bce" else 0, dtype=torch.int64)
    mine = (
        torch.cat(labels).cpu() if labels else empty,
        torch.cat(probs).cpu() if probs else torch.zeros(0, len(class_names)),
        loss_sum.item(),
        failed,
        loss_terms.item(),
    )
    parts = all_gather_objects(ctx, mine)
    all_labels = torch.cat([p[0] for p in parts]).numpy()
    all_probs = torch.cat([p[1] for p in parts]).numpy()
    n = len(all_labels) if objective.kind == "ce" else sum(p[4] for p in parts)
    total_loss = sum(p[2] for p in parts) / n if n else None
    if objective.kind == "bce":
        metrics = multilabel_metrics(
            all_labels, all_probs, loss=total_loss, class_names=class_names, threshold=threshold
        )
    else:
        metrics = classification_metrics(all_labels, all_probs, loss=total_loss, class_names=class_names)
    return metrics, [f for p in parts for f in p[3]]


def _dummy_target(objective: Objective, model: nn.Module, device: str) -> torch.Tensor:
    """The target of a stand-in input that counts zero: class 0 (ce), every target masked (bce)."""
    if objective.kind == "ce":
        return torch.zeros(1, dtype=torch.int64, device=device)
    num_classes = getattr(model, "module", model).config.num_classes
    return torch.full((1, num_classes), -1, dtype=torch.int64, device=device)


def _resume_decision(spec: TrainSpec, last: Path) -> bool:
    if spec.resume is True and not last.exists():
        raise SpecError(f"resume = true but {last} does not exist; drop --resume to start a new run there")
    if spec.resume is False and last.exists():
        raise SpecError(
            f"{last.parent} already holds a run ({rundir.LAST}); choose another --out, or resume it (drop --no-resume)"
        )
    return last.exists()


def fit(
    spec: TrainSpec, *, on_epoch: Callable[[dict[str, Any]], None] | None = None, ctx: DistContext | None = None
) -> FitResult:
    """Train as ``spec`` says (resuming ``spec.out/last.pt`` when it exists) and return the best model.

    Without ``ctx`` the process group comes from the launcher's environment (torchrun, srun) and is left again at
    the end. ``on_epoch`` is called on rank 0 with each epoch's record."""
    own = ctx is None
    ctx = ctx or init_distributed(spec.device)
    try:
        return _fit(spec, ctx, on_epoch)
    finally:
        if own:
            shutdown(ctx)  # _fit's DDP model is gone by now: the order that avoids gloo's abort at exit


@dataclass
class _Run:
    """One training run in progress on this rank: the model and its optimizer, the data, what the epochs recorded."""

    spec: TrainSpec
    ctx: DistContext
    dir: Path
    source: Source
    model: nn.Module
    preprocessing: Preprocessing
    init_desc: str
    train_ds: Dataset
    val_ds: Dataset
    n_train: int
    n_val: int
    split_by: str  # "patient" or "image" (validation_split_by)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    stopper: EarlyStopping
    amp: bool
    channels_last: bool
    objective: Objective = CROSS_ENTROPY
    start: int = 0  # epochs already done (resumed runs)
    history: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[tuple[int, Unreadable]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.preprocessing.size)


def _fit(spec: TrainSpec, ctx: DistContext, on_epoch: Callable[[dict[str, Any]], None] | None) -> FitResult:
    r = _start_run(spec, ctx)
    base = spec.unfreeze or ZOO[r.model.config.arch].default_trainable
    if ctx.is_main:
        r.dir.mkdir(parents=True, exist_ok=True)
        log.info("training on %s: %d train / %d validation samples", r.source.describe(), r.n_train, r.n_val)
    groups: tuple[str, ...] | None = None
    net = r.model
    for epoch in range(r.start, spec.epochs):
        if r.stopper.stopped:
            break
        started = time.perf_counter()
        wanted = trainable_groups(base, spec.unfreeze_schedule, spec.unfreeze_every, epoch)
        if wanted != groups:
            net = r.model  # drop the old DDP wrapper first: it holds the old set of trainable parameters
            _prepare(r.model, wanted)
            net, groups = _wrap(r.model, ctx), wanted
        lr = r.optimizer.param_groups[0]["lr"]
        stats, metrics, val_failed = _train_and_validate(r, net, epoch)
        failed = stats["failed"] + val_failed
        r.unreadable += [(epoch + 1, u) for u in failed]
        improved = r.stopper.update(metrics["loss"], epoch + 1)
        record = _epoch_record(r, epoch, lr, stats, metrics, len(failed), groups, improved, started)
        r.history.append(record)
        if improved:
            r.best_state = {k: v.detach().to("cpu", copy=True) for k, v in r.model.state_dict().items()}
        if ctx.is_main:
            _report_unreadable(epoch, failed, r.dir)
            _save_epoch(r, metrics, improved, groups)
            if on_epoch is not None:
                on_epoch({**record, "unreadable": [u.path for u in failed]})
    del net  # the DDP wrapper must be gone before the process group is destroyed
    return _finish(r)


def _start_run(spec: TrainSpec, ctx: DistContext) -> _Run:
    """The run's model, data and optimizer: fresh, or restored from ``last.pt`` when resuming."""
    run = Path(spec.out)
    last = run / rundir.LAST
    resuming = _resume_decision(spec, last)
    if spec.batch_size % ctx.world_size:
        raise SpecError(f"batch_size {spec.batch_size} (global) must divide evenly over {ctx.world_size} ranks")
    source = open_source(spec.data, split="train", field=spec.field, labels=label_source(spec))
    torch.manual_seed(spec.seed)  # a fresh random init is reproducible too
    ck = None
    if resuming:
        ck = load_checkpoint(last)
        model, preprocessing, init_desc = ck.model, ck.preprocessing, ck.meta.get("init", "")
        _warn_changed(ck.meta.get("spec", {}), spec)
    else:
        model, preprocessing, init_desc = initial_model(spec, num_classes=len(source.class_names))
    _check_classes(model, source)
    train_idx, val_idx, split_by = _validation_split(spec, source, ck.meta if ck is not None else None)
    source, objective = training_objective(spec, source, train_idx)
    size = tuple(preprocessing.size)
    transform = (
        train_transform(preprocessing, crop_fraction=spec.crop_fraction)
        if spec.augment
        else eval_transform(preprocessing)
    )
    train_ds = source.dataset(transform, train_idx, size=size)
    val_ds = source.dataset(eval_transform(preprocessing), val_idx[ctx.rank :: ctx.world_size], size=size)
    cuda = ctx.device.startswith("cuda")
    amp, channels_last = spec.amp and cuda, spec.amp and cuda
    model = model.to(ctx.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Every parameter is in the optimizer from the start: frozen ones get no gradient and are skipped by it, so
    # unfreezing later needs no new optimizer and the state stays aligned on resume.
    optimizer = torch.optim.RAdam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.t_max)
    r = _Run(
        spec=spec,
        ctx=ctx,
        dir=run,
        source=source,
        model=model,
        preprocessing=preprocessing,
        init_desc=init_desc,
        train_ds=train_ds,
        val_ds=val_ds,
        n_train=len(train_idx),
        n_val=len(val_idx),
        split_by=split_by,
        optimizer=optimizer,
        scheduler=scheduler,
        stopper=EarlyStopping(spec.patience, spec.min_delta),
        amp=amp,
        channels_last=channels_last,
        objective=objective,
    )
    if ck is not None:
        _restore(r, ck)
    return r


def label_source(spec: TrainSpec | EvaluateSpec) -> LabelSource | None:
    """The spec's label file (None: the data folder's own classes)."""
    if spec.labels is None:
        return None
    return LabelSource(
        spec.labels, format=spec.label_format, uncertain=spec.uncertain, view=spec.view, metadata=spec.label_metadata
    )


def training_objective(spec: TrainSpec, source: Source, train_idx: Sequence[int]) -> tuple[Source, Objective]:
    """Cross-entropy (the seed's) or masked BCE: ``spec.loss``, auto = BCE exactly when the data is multi-label.
    BCE on single-label data trains one-vs-rest on its one-hot labels (the source returned carries them)."""
    kind = spec.loss if spec.loss != "auto" else ("bce" if source.multi_label else "ce")
    if kind == "ce" and source.multi_label:
        raise SpecError(
            f"{spec.labels}: multi-label targets cannot train with loss = ce (one class per image); use --loss bce"
        )
    if kind == "ce":
        return source, Objective("ce")
    if not source.multi_label:
        source = dataclasses.replace(source, targets=np.eye(len(source.class_names), dtype=np.int8)[source.labels])
    assert source.targets is not None
    weights = prevalence_weights(source.targets[list(train_idx)]) if spec.class_weights == "prevalence" else None
    return source, Objective("bce", pos_weight=weights)


def _restore(r: _Run, ck: LoadedCheckpoint) -> None:
    """Optimizer, scheduler, early stopping, history and best weights of the run ``ck`` (its ``last.pt``) saved."""
    state = ck.meta["train_state"]
    r.optimizer.load_state_dict(ck.raw["optimizer_state_dict"])
    r.scheduler.load_state_dict(ck.raw["scheduler_state_dict"])
    r.stopper = EarlyStopping(**state["early_stopping"])
    r.stopper.patience, r.stopper.min_delta = r.spec.patience, r.spec.min_delta
    r.history = list(ck.meta.get("history", []))
    r.unreadable = [(e, Unreadable(**u)) for e, u in state.get("unreadable", [])]
    best_path = r.dir / rundir.BEST
    if best_path.exists():
        r.best_state = load_checkpoint(best_path).model.state_dict()
    log.info("resuming %s after epoch %d", r.dir, state["epoch"])
    r.start = int(state.get("epoch", 0))


def _train_and_validate(r: _Run, net: nn.Module, epoch: int) -> tuple[dict[str, Any], dict[str, Any], list[Unreadable]]:
    """One epoch of training (``net``: the model, DDP-wrapped when distributed) and the validation pass after it."""
    spec, ctx = r.spec, r.ctx
    # Seeded per (seed, epoch, rank): dropout and augmentation do not depend on what ran before, which makes
    # a resumed run equal to an uninterrupted one.
    torch.manual_seed(spec.seed * 1_000_003 + epoch * 1_009 + ctx.rank)
    sampler = DistributedSampler(
        r.train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=spec.seed, drop_last=False
    )
    sampler.set_epoch(epoch)
    train_loader = _loader(
        r.train_ds,
        batch_size=spec.batch_size // ctx.world_size,
        sampler=sampler,
        num_workers=spec.num_workers,
        seed=spec.seed + epoch,
        device=ctx.device,
    )
    stats = train_one_epoch(
        net,
        train_loader,
        r.optimizer,
        device=ctx.device,
        ctx=ctx,
        amp=r.amp,
        channels_last=r.channels_last,
        input_shape=(r.preprocessing.in_chans, *r.size),
        objective=r.objective,
    )
    val_loader = _loader(
        r.val_ds, batch_size=spec.batch_size, num_workers=spec.num_workers, seed=spec.seed, device=ctx.device
    )
    metrics, val_failed = evaluate(
        r.model,
        val_loader,
        device=ctx.device,
        ctx=ctx,
        class_names=r.source.class_names,
        amp=r.amp,
        channels_last=r.channels_last,
        objective=r.objective,
    )
    r.scheduler.step()
    return stats, metrics, val_failed


def _epoch_record(
    r: _Run,
    epoch: int,
    lr: float,
    stats: dict[str, Any],
    metrics: dict[str, Any],
    n_unreadable: int,
    groups: tuple[str, ...],
    improved: bool,
    started: float,
) -> dict[str, Any]:
    """The epoch's row of the history (metrics.csv / metrics.jsonl, the checkpoints' meta)."""
    return {
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss": stats["loss"],
        "train_acc": stats["accuracy"],
        "val_loss": metrics["loss"],
        "val_acc": metrics["accuracy"],
        "val_sensitivity": metrics["sensitivity"],
        "val_specificity": metrics["specificity"],
        "val_auroc": metrics["auroc"],
        "n_train": stats["n"],
        "n_val": metrics["n"],
        "n_unreadable": n_unreadable,
        "trainable": "+".join(groups),
        "trainable_params": count_parameters(r.model)[1],
        "seconds": round(time.perf_counter() - started, 3),
        "best": improved,
        "val_confusion_matrix": metrics["confusion_matrix"],
        **(
            {"val_mean_ap": metrics["mean_ap"], "val_auroc_per_class": metrics["auroc_per_class"]}
            if r.objective.kind == "bce"
            else {}
        ),
    }


def _report_unreadable(epoch: int, failed: list[Unreadable], run: Path) -> None:
    if failed:
        shown = ", ".join(u.path for u in failed[:5]) + (" ..." if len(failed) > 5 else "")
        log.warning(
            "epoch %d: %d unreadable image(s) skipped: %s (all listed in %s)",
            epoch + 1,
            len(failed),
            shown,
            run / rundir.UNREADABLE,
        )


def _save_epoch(r: _Run, metrics: dict[str, Any], improved: bool, groups: tuple[str, ...]) -> None:
    """Rank 0 after each epoch: best.pt when it improved, last.pt (everything to resume), the epoch files."""
    meta = _meta(r.spec, r.history, metrics, r.init_desc, r.source, r.n_train, r.n_val)
    meta["data"]["split"] = r.split_by
    meta["activation"] = r.objective.activation  # what enhance and evaluate apply to the logits
    class_names = r.source.class_names
    if improved:
        save_checkpoint(r.dir / rundir.BEST, r.model, preprocessing=r.preprocessing, class_names=class_names, meta=meta)
    train_state = {
        "epoch": r.history[-1]["epoch"],
        "early_stopping": dataclasses.asdict(r.stopper),
        "trainable": list(groups),
        "unreadable": [(e, dataclasses.asdict(u)) for e, u in r.unreadable],
    }
    save_checkpoint(
        r.dir / rundir.LAST,
        r.model,
        preprocessing=r.preprocessing,
        class_names=class_names,
        meta={**meta, "train_state": train_state},
        optimizer_state=r.optimizer.state_dict(),
        scheduler_state=r.scheduler.state_dict(),
    )
    rundir.write_epoch_files(r.dir, r.history, r.unreadable, r.stopper.best_epoch)


def _finish(r: _Run) -> FitResult:
    """The best weights back in the model (early stopping or not), on the CPU; rank 0 writes summary.json."""
    model = r.model
    if r.best_state is not None:
        model.load_state_dict(r.best_state)
    model = model.to("cpu").eval()
    result = FitResult(
        str(r.dir),
        len(r.history),
        r.stopper.best_epoch,
        r.stopper.stopped,
        r.history,
        model,
        [u for _, u in r.unreadable],
        r.ctx.is_main,
    )
    if r.ctx.is_main:
        summary = {
            "run_dir": str(r.dir),
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "best": r.history[result.best_epoch - 1] if result.best_epoch else None,
            "n_unreadable": len(r.unreadable),
            "spec": r.spec.to_dict(),
            **provenance(),
        }
        rundir.write_summary(r.dir, summary)
        log.info("%s", result.line())
    return result


def _meta(
    spec: TrainSpec,
    history: list[dict[str, Any]],
    metrics: dict[str, Any],
    init: str,
    source: Source,
    n_train: int,
    n_val: int,
) -> dict[str, Any]:
    return {
        "epoch": history[-1]["epoch"],
        "history": history,
        "metrics": {"validation": metrics},
        "spec": spec.to_dict(),
        "init": init,
        "data": {"root": source.root, "kind": source.kind, "field": source.field, "n_train": n_train, "n_val": n_val},
        **provenance(),
    }


def _validation_split(
    spec: TrainSpec, source: Source, resumed_meta: dict[str, Any] | None
) -> tuple[list[int], list[int], str]:
    """(train indices, validation indices, ``validation_split_by``) of the run's data."""
    split_by = validation_split_by(source, resumed_meta)
    groups = source.groups if split_by == "patient" else None
    train_idx, val_idx = stratified_split(source.labels, spec.val_fraction, spec.seed, groups=groups)
    if groups is not None:
        log.info(
            "validation split by patient: %d patients in training, %d in validation",
            len(set(groups[train_idx].tolist())),
            len(set(groups[val_idx].tolist())),
        )
    return train_idx, val_idx, split_by


def validation_split_by(source: Source, resumed_meta: dict[str, Any] | None) -> str:
    """``"patient"`` when the label file names each image's patient (NIH, CheXpert, MIMIC: no patient's images on
    both sides of the split), else ``"image"``. A resumed run keeps the split it started with (runs saved before
    the split knew patients record none: by image)."""
    if source.groups is None:
        return "image"
    if resumed_meta is not None:
        return resumed_meta.get("data", {}).get("split", "image")
    return "patient"


def _check_classes(model: nn.Module, source: Source) -> None:
    n = model.config.num_classes
    if n != len(source.class_names):
        raise ModelError(
            f"the model has {n} outputs but {source.root} has {len(source.class_names)} classes "
            f"({', '.join(source.class_names)}); train a model with num_classes matching the data"
        )


def _warn_changed(saved: dict[str, Any], spec: TrainSpec) -> None:
    ignore = {"epochs", "resume", "num_workers", "device", "patience", "min_delta"}
    changed = sorted(k for k, v in spec.to_dict().items() if k not in ignore and k in saved and saved[k] != v)
    if changed:
        log.warning("resuming with changed settings %s; the run continues with the new values", changed)


def _evaluation_objective(activation: str, source: Source, spec: EvaluateSpec) -> tuple[Source, Objective]:
    """The objective of the model's outputs: softmax (single-label data only) or sigmoid (the multi-label numbers;
    single-label data as one-hot targets)."""
    if activation == "softmax":
        if source.multi_label:
            raise SpecError(
                f"{spec.labels}: multi-label targets need a model with one sigmoid per class; the checkpoint "
                "records none, so pass --head sigmoid if it has one"
            )
        return source, CROSS_ENTROPY
    if not source.multi_label:
        source = dataclasses.replace(source, targets=np.eye(len(source.class_names), dtype=np.int8)[source.labels])
    return source, Objective("bce")


def run_evaluate(spec: EvaluateSpec) -> dict[str, Any]:
    """Evaluate a checkpoint (any format the loader accepts) on a dataset; write ``spec.json`` when set."""
    ck = load_checkpoint(spec.checkpoint, arch=spec.arch, model=spec.model, num_classes=spec.num_classes)
    i = spec.input
    try:
        preprocessing = override(ck.preprocessing, size=i.size, mean=i.mean, std=i.std, channels=i.channels)
    except ValueError as exc:
        raise SpecError(f"input: {exc}") from None
    ck = dataclasses.replace(ck, preprocessing=preprocessing)
    source = open_source(spec.data, split="test", field=spec.field, labels=label_source(spec))
    _check_classes(ck.model, source)
    source, objective = _evaluation_objective(output_activation(ck, spec.head), source, spec)
    if tuple(source.class_names) != tuple(ck.class_names):
        log.warning(
            "class names differ: checkpoint %s, data %s; labels are matched by index",
            ck.class_names,
            source.class_names,
        )
    device = resolve_device(spec.device)
    model = ck.model.to(device).eval()
    ds = source.dataset(eval_transform(ck.preprocessing), size=tuple(ck.preprocessing.size))
    loader = _loader(ds, batch_size=spec.batch_size, num_workers=spec.num_workers, seed=0, device=device)
    started = time.perf_counter()
    metrics, failed = evaluate(
        model, loader, device=device, class_names=source.class_names, objective=objective, threshold=spec.threshold
    )
    report = {
        "checkpoint": os.path.abspath(ck.path),
        "checkpoint_sha256": ck.sha256,
        "checkpoint_format": ck.source_format,
        "architecture": ck.config.arch,
        "activation": objective.activation,
        "data": source.describe(),
        "metrics": metrics,
        "unreadable": [dataclasses.asdict(u) for u in failed],
        "seconds": round(time.perf_counter() - started, 3),
        **provenance(),
    }
    if failed:
        log.warning("%d unreadable image(s) not evaluated: %s", len(failed), ", ".join(u.path for u in failed[:5]))
    if spec.json:
        Path(spec.json).parent.mkdir(parents=True, exist_ok=True)
        Path(spec.json).write_text(json.dumps(report, indent=2) + "\n")
    log.info("%s", format_metrics(metrics))
    return report
