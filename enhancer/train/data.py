"""Training and evaluation inputs: an ImageFolder or the enhanced HDF5 dataset, with unreadable items counted.

Usage::

    from enhancer.train.data import open_source, stratified_split, collate_skipping
    src = open_source("/data/chest_xray", split="train")          # or an enhanced dataset dir, field="enhanced"
    src = open_source("/data/nih", labels=LabelSource("Data_Entry_2017.csv"))  # multi-label: src.targets (N, 14)
    train_idx, val_idx = stratified_split(src.labels, val_fraction=0.1, seed=0)
    ds = src.dataset(transform, train_idx)                          # items: (x, label, index) or Unreadable
    loader = DataLoader(ds, batch_size=32, collate_fn=collate_skipping)
    for batch in loader: batch.images, batch.labels, batch.failed

A folder root holding ``train/`` (``test/`` for evaluation) is read from that sub-folder, the seed's layout;
any other folder is itself the ImageFolder. With a label file (``LabelSource``: nih, chexpert, mimic, rsna, csv;
``enhancer.data.labels``) the images are found under the folder as the file says; its rejected rows are left out and
listed in ``Source.rejected``. A multi-label source has ``targets`` (N, C) of 1, 0 and -1 (masked) and its items
carry the target row instead of a class id. A directory with ``manifest.json`` is an enhanced dataset, read through
``EnhancedDataset`` with one image field (``enhanced``, ``crop`` or ``image``).

An item that cannot be read (a corrupt JPEG, a vanished file, a damaged HDF5 chunk) becomes an ``Unreadable``
marker instead of an exception: the collate function drops it from the batch and keeps it in ``batch.failed``,
so the training loop counts and reports every one and a single bad file never ends a run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from enhancer.data.decode import classify_decode_error, to_grey
from enhancer.data.errors import DataError  # the data layer's user-input error; the CLI reports it (exit code 2)
from enhancer.data.scan import scan

log = logging.getLogger(__name__)

IMAGE_FIELDS = ("enhanced", "crop", "image")
Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Unreadable:
    """Marker for an item that could not be read: ``index`` into the source, its path and why."""

    index: int
    path: str
    reason: str


@dataclass(frozen=True)
class LabelSource:
    """A label file of the images under the data folder, and how to read it (``enhancer.data.labels.read_labels``)."""

    path: str
    format: str = "auto"
    uncertain: str = "ignore"
    view: str = "all"
    metadata: str | None = None  # MIMIC-CXR-JPG's image list (read_labels)


@dataclass
class ItemBatch:
    images: torch.Tensor | None  # (N, C, H, W) float, None when every item of the batch failed
    labels: torch.Tensor  # (N,) int64 class ids, or (N, K) int64 multi-hot targets (-1: masked)
    indices: torch.Tensor  # (N,) int64 source indices
    failed: list[Unreadable]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def pin_memory(self) -> ItemBatch:
        """The batch in pinned host memory: ``DataLoader(pin_memory=True)`` calls this on custom batch types, and the
        trainer's ``.to(device, non_blocking=True)`` copies are only asynchronous from pinned memory."""
        return ItemBatch(
            images=None if self.images is None else self.images.pin_memory(),
            labels=self.labels.pin_memory(),
            indices=self.indices.pin_memory(),
            failed=self.failed,
        )


def collate_skipping(items: list[Any]) -> ItemBatch:
    """Stack the readable items; keep the unreadable ones aside for counting (never dropped silently)."""
    failed = [it for it in items if isinstance(it, Unreadable)]
    good = [it for it in items if not isinstance(it, Unreadable)]
    multi = bool(good) and isinstance(good[0][1], np.ndarray)
    return ItemBatch(
        images=torch.stack([g[0] for g in good]) if good else None,
        labels=torch.from_numpy(np.stack([g[1] for g in good]).astype(np.int64))
        if multi
        else torch.tensor([g[1] for g in good], dtype=torch.int64),
        indices=torch.tensor([g[2] for g in good], dtype=torch.int64),
        failed=failed,
    )


class FolderDataset(Dataset):
    """Image files decoded with PIL to grey, squash-resized to ``size`` (the seed's ``Resize``), transformed."""

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int],
        indices: Sequence[int],
        size: tuple[int, int],
        transform: Transform,
        targets: np.ndarray | None = None,
    ) -> None:
        self.paths, self.labels, self.indices = paths, labels, list(indices)
        self.size, self.transform, self.targets = size, transform, targets

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int | np.ndarray, int] | Unreadable:
        index = self.indices[i]
        path = self.paths[index]
        try:
            with Image.open(path) as im:
                grey = to_grey(im).resize((self.size[1], self.size[0]), Image.BILINEAR)
        except Exception as exc:
            code, message = classify_decode_error(exc, path)
            return Unreadable(index, path, f"{code}: {message}")
        x = torch.from_numpy(np.array(grey, dtype=np.uint8)).unsqueeze(0)
        return self.transform(x), _target(self.labels, self.targets, index), index


def _target(labels: np.ndarray, targets: np.ndarray | None, index: int) -> int | np.ndarray:
    """An item's class id, or its row of multi-hot targets."""
    return int(labels[index]) if targets is None else targets[index]


class EnhancedFieldDataset(Dataset):
    """One image field of an enhanced dataset (uint8 ``(1, H, W)``) with its label, transformed."""

    def __init__(
        self,
        out_dir: str,
        field: str,
        labels: np.ndarray,
        indices: Sequence[int],
        transform: Transform,
        targets: np.ndarray | None = None,
    ) -> None:
        from enhancer.store import EnhancedDataset

        self.out_dir, self.field, self.labels, self.targets = out_dir, field, labels, targets
        self.indices, self.transform = list(indices), transform
        self.store = EnhancedDataset(out_dir, fields=(field,))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int] | Unreadable:
        index = self.indices[i]
        try:
            x = self.store[index][self.field]
        except Exception as exc:
            return Unreadable(index, f"{self.out_dir}#{index}", f"{type(exc).__name__}: {exc}")
        if x.ndim == 2:
            x = x.unsqueeze(0)
        return self.transform(x), _target(self.labels, self.targets, index), index


@dataclass(frozen=True)
class Source:
    """Where samples come from: ``labels`` and ``paths`` are indexed by source index."""

    kind: str  # "folder" or "enhanced"
    root: str
    labels: np.ndarray  # class ids; of a multi-label source the key its validation split is stratified on
    paths: list[str]  # image files of a folder source; empty for an enhanced dataset (read per item)
    class_names: tuple[str, ...]
    field: str | None = None
    targets: np.ndarray | None = None  # (N, C) int8 multi-hot targets of a multi-label source, -1: masked
    rejected: tuple[Any, ...] = ()  # the label file's rejected entries (enhancer.data.Rejection)
    groups: np.ndarray | None = None  # each sample's patient, where the label file names them (Scan.groups)

    @property
    def multi_label(self) -> bool:
        return self.targets is not None

    def __len__(self) -> int:
        return len(self.labels)

    def dataset(
        self, transform: Transform, indices: Sequence[int] | None = None, size: tuple[int, int] = (224, 224)
    ) -> Dataset:
        """A Dataset over ``indices`` (all samples by default); ``size`` is the model input size."""
        indices = range(len(self)) if indices is None else indices
        if self.kind == "enhanced":
            field = self.field or "enhanced"
            return EnhancedFieldDataset(self.root, field, self.labels, indices, transform, self.targets)
        return FolderDataset(self.paths, self.labels, indices, size, transform, self.targets)

    def describe(self) -> str:
        if self.targets is not None:
            positives = (self.targets == 1).sum(0)
            counts = ", ".join(f"{n} {int(p)}" for n, p in zip(self.class_names, positives, strict=True))
            counts = f"positives: {counts}; {int((self.targets == -1).sum())} masked"
        else:
            counts = ", ".join(f"{n} {int((self.labels == c).sum())}" for c, n in enumerate(self.class_names))
        what = f"enhanced dataset (field {self.field})" if self.kind == "enhanced" else "image folder"
        return f"{self.root}: {what}, {len(self)} samples ({counts})"


def is_enhanced_dir(path: str | os.PathLike[str]) -> bool:
    from enhancer.store.layout import is_merged

    return is_merged(path)


def open_source(
    path: str | os.PathLike[str],
    *,
    split: str | None = "train",
    field: str = "enhanced",
    labels: LabelSource | None = None,
) -> Source:
    """An enhanced dataset directory, an ImageFolder (``path/split`` when that folder exists), or the images under
    ``path`` that the label file ``labels`` lists."""
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: no such dataset; give an ImageFolder root or an enhanced dataset directory")
    if labels is not None:
        return _open_labelled(root, labels)
    if is_enhanced_dir(root):
        return _open_enhanced(root, field)
    if field not in (None, "enhanced", "image"):
        log.info("--field %s applies to enhanced datasets; %s is an image folder, field ignored", field, root)
    if split and (root / split).is_dir():
        root = root / split
    found = scan(str(root))
    if not found.samples:
        raise DataError(f"{root}: no image files found; expected <root>/<CLASS>/<file> (e.g. NORMAL/, PNEUMONIA/)")
    if set(found.class_names) & {"train", "test", "val"}:
        raise DataError(
            f"{root}: its sub-folders look like splits ({', '.join(found.class_names)}), not classes; "
            f"point at the split folder or make sure {root}/{split} exists"
        )
    return Source(
        kind="folder",
        root=str(root),
        labels=np.array([s.label for s in found.samples], dtype=np.int64),
        paths=[s.path for s in found.samples],
        class_names=tuple(found.class_names),
    )


def _open_labelled(root: Path, labels: LabelSource) -> Source:
    """The samples a label file lists under ``root``; its rejected entries are logged and kept aside."""
    from enhancer.data.labels import read_labels

    found = read_labels(
        labels.path,
        root,
        format=labels.format,
        uncertain=labels.uncertain,
        view=labels.view,
        metadata=labels.metadata,
    )
    bad = {r.index for r in found.rejected}
    keep = [s.index for s in found.samples if s.index not in bad]
    if found.rejected:
        shown = "; ".join(r.message for r in found.rejected[:3])
        log.warning("%s: %d of %d entries rejected: %s", labels.path, len(bad), len(found.samples), shown)
    if not keep:
        raise DataError(f"{labels.path}: no entry has a usable image under {root}; check --data and the label file")
    targets = found.targets[keep] if found.targets is not None else None
    return Source(
        kind="folder",
        root=str(root),
        labels=split_key(targets) if targets is not None else np.array([found.samples[i].label for i in keep]),
        paths=[found.samples[i].path for i in keep],
        class_names=tuple(found.class_names),
        targets=targets,
        rejected=found.rejected,
        groups=np.array([found.groups[i] for i in keep]) if found.groups else None,
    )


def split_key(targets: np.ndarray) -> np.ndarray:
    """The class a multi-label sample is stratified on: its rarest positive class, C when it has none (so that the
    validation split gets some of each finding where there are two or more)."""
    positives = targets == 1
    prevalence = positives.sum(0)
    rarity = np.where(positives, prevalence[None, :], np.iinfo(np.int64).max)
    return np.where(positives.any(1), rarity.argmin(1), targets.shape[1]).astype(np.int64)


def _open_enhanced(root: Path, field: str) -> Source:
    from enhancer.store import EnhancedDataset

    if field not in IMAGE_FIELDS:
        raise DataError(f"field {field!r} cannot train a classifier; choose one of {', '.join(IMAGE_FIELDS)}")
    ds = EnhancedDataset(root, fields=(field,))  # raises StoreError naming the fields it has
    ds.close()
    if not len(ds):
        raise DataError(f"{root}: the enhanced dataset holds no samples")
    if field in ds.per_class:
        raise DataError(
            f"{root}: field {field!r} holds one image per explained class; train on a field with one image per "
            "sample (enhance with --crop-from union, or --field image), or export one class (`enhancer export "
            "--class NAME`)"
        )
    targets = ds.targets
    return Source(
        kind="enhanced",
        root=str(root),
        labels=split_key(targets) if targets is not None else ds.labels.copy(),
        paths=[],
        class_names=tuple(ds.class_names),
        field=field,
        targets=targets,
    )


def stratified_split(
    labels: Sequence[int] | np.ndarray, val_fraction: float, seed: int, groups: Sequence[str] | np.ndarray | None = None
) -> tuple[list[int], list[int]]:
    """(train indices, validation indices), sorted; per class ``round(n * val_fraction)`` go to validation, at
    least one and never all of a class with two or more samples. Same labels and seed, same split.

    ``groups`` (each sample's patient): whole patients go to one side, so that no patient's images are both trained
    on and validated on. A patient counts in the class of their rarest label (so rare classes reach validation), and
    per class patients go to validation until ``round(n * val_fraction)`` of its images are there: at least one
    patient, and never all of a class with two or more. Without groups every sample is its own patient."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    labels = np.asarray(labels, dtype=np.int64)
    if not len(labels):
        raise DataError("the validation split is empty: there are no samples; add data")
    if groups is None:
        unit_of = np.arange(len(labels))  # every sample its own patient
    else:
        unit_of = np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    shifted = labels - labels.min()
    width = int(shifted.max()) + 1
    key = np.bincount(shifted)[shifted] * width + shifted  # rarer class first, then the smaller id
    order = np.argsort(unit_of, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(unit_of[order]) != 0])
    unit_class = np.minimum.reduceat(key[order], starts) % width + labels.min()  # each patient's rarest class
    unit_size = np.bincount(unit_of)
    rng = np.random.default_rng(seed)
    val_units: list[np.ndarray] = []
    for c in np.unique(unit_class):
        members = np.flatnonzero(unit_class == c)
        members = members[rng.permutation(members.size)]
        if members.size < 2:
            continue
        want = round(int(unit_size[members].sum()) * val_fraction)
        reached = int(np.searchsorted(np.cumsum(unit_size[members]), want)) + 1  # patients until `want` images
        val_units.append(members[: min(max(reached, 1), members.size - 1)])
    in_val = np.isin(unit_of, np.concatenate(val_units)) if val_units else np.zeros(len(labels), bool)
    if not in_val.any():
        raise DataError("the validation split is empty: every class has a single sample; add data")
    return np.flatnonzero(~in_val).tolist(), np.flatnonzero(in_val).tolist()
