"""PyTorch Dataset over a merged enhanced dataset, and export to an ImageFolder of PNGs.

Usage::

    from enhancer.store import EnhancedDataset, export_imagefolder
    ds = EnhancedDataset("out", fields=("enhanced", "label"))
    loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=8)   # fork or spawn both work
    ds.class_names, ds.labels                                                   # for samplers / reports
    export_imagefolder("out", "out_png", field="enhanced")                     # out_png/<CLASS>/<stem>.png
    # a dataset of per-class maps (multi-label): multi-hot targets, and the maps of one class
    ds = EnhancedDataset("out", fields=("heatmap", "targets"), class_name="Effusion")
    ds[0]["heatmap"]        # (H, W): the map of Effusion; ds[0]["has_map"]: whether the image has one

Samples are located through ``manifest.json`` offsets (never HDF5 virtual datasets, which read a missing source as
fill values). HDF5 files are opened lazily in the process that reads them and never pickled, so DataLoader workers
each get their own handles. Every sample read is checked against the crc32 stored when it was written
(``enhancer.store.checksums``; ``verify_checksums=False`` skips it): a damaged sample raises ``StoreError`` naming
the shard, the sample and the field, as does one that cannot be read at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image

from enhancer.atomic import atomic_write
from enhancer.store import checksums
from enhancer.store.manifest import Manifest
from enhancer.store.reading import FieldReader, open_shard
from enhancer.store.schema import FIELDS, STR, StoreError

log = logging.getLogger(__name__)

IMAGE_FIELDS = ("enhanced", "image", "heatmap", "crop")


class EnhancedDataset(torch.utils.data.Dataset):
    """Samples as dicts ``{field: tensor}`` (``path`` as str), in manifest order.

    ``transform`` is called with the sample dict and its result is returned, e.g.
    ``lambda s: (s["enhanced"].float() / 255, s["label"].long())``.

    A dataset of per-class maps (``per_class`` fields, multi-label) gives each of them as (K, ...), one map per
    explained class (``explained`` names the classes). ``class_name`` (a class name or id) selects that class's map
    instead, and adds ``has_map`` (bool): False where the image has no map of the class (its map is then zeros).
    ``targets`` (multi-hot, -1 masked) is a field like the others; ``ds.targets`` holds all of them.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        fields: Iterable[str] = ("enhanced", "label"),
        transform: Callable[[dict[str, Any]], Any] | None = None,
        verify_checksums: bool = True,
        class_name: str | int | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.manifest = Manifest.load(self.out_dir)
        self.fields = tuple(fields)
        bad = [f for f in self.fields if f not in self.manifest.fields]
        if bad:
            raise StoreError(
                f"field(s) {bad} not in {self.out_dir}; this dataset has: {', '.join(self.manifest.fields)}"
            )
        self.transform = transform
        self.verify_checksums = verify_checksums
        self._offsets = self.manifest.offsets
        self._files: dict[int, h5py.File] = {}
        self._crcs: dict[tuple[int, str], np.ndarray | None] = {}  # stored checksum columns, per process
        self._readers: dict[tuple[int, str], FieldReader] = {}
        self._pid: int | None = None
        self.labels = self._read_labels()
        self.targets = self.read_column("targets") if "targets" in self.manifest.fields else None
        self.per_class = tuple(n for n, info in self.manifest.fields.items() if info.get("per_class"))
        self.class_id = self._class_id(class_name)

    def _class_id(self, class_name: str | int | None) -> int | None:
        """The id of the selected class (None: no selection); errors name the classes and the fix."""
        if class_name is None:
            return None
        if not self.per_class:
            raise StoreError(
                f"{self.out_dir} holds one map per image, not one per class; drop the class selection (--class)"
            )
        names = self.class_names
        if str(class_name) in names:
            return names.index(str(class_name))
        if str(class_name).isdigit() and int(class_name) < len(names):
            return int(class_name)
        raise StoreError(f"no class {class_name!r} in {self.out_dir}; its classes: {', '.join(names)}")

    @property
    def class_names(self) -> list[str]:
        if self.manifest.class_names is not None:
            return list(self.manifest.class_names)
        return [str(i) for i in range(int(self.labels.max()) + 1 if len(self.labels) else 0)]

    def __len__(self) -> int:
        return self.manifest.n_written

    def locate(self, index: int) -> tuple[int, int]:
        """Global sample index -> (position in manifest.shards, row in that shard)."""
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        pos = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return pos, index - int(self._offsets[pos])

    def __getitem__(self, index: int) -> Any:
        pos, row = self.locate(int(index))
        sample: dict[str, Any] = {}
        slot = self._slot(pos, row) if self.class_id is not None else None
        for name in self.fields:
            value = self._value(pos, row, name)
            if FIELDS[name].dtype == STR:
                sample[name] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
                continue
            if slot is not None and name in self.per_class:
                value = value[slot] if slot >= 0 else np.zeros_like(value[0])
            sample[name] = torch.from_numpy(np.array(value))
        if slot is not None:
            sample["has_map"] = torch.tensor(slot >= 0)
        return self.transform(sample) if self.transform is not None else sample

    def _slot(self, pos: int, row: int) -> int:
        """The map slot of the selected class in a sample (-1: the sample has no map of it)."""
        hits = np.flatnonzero(np.asarray(self._value(pos, row, "explained")) == self.class_id)
        return int(hits[0]) if len(hits) else -1

    def close(self) -> None:
        """Close the HDF5 handles of this process (they reopen on the next access)."""
        if self._pid == os.getpid():
            for f in self._files.values():
                f.close()
        self._files, self._readers, self._crcs = {}, {}, {}

    def __getstate__(self) -> dict[str, Any]:
        # Open h5py handles cannot be pickled (spawn workers) and must not be shared across processes.
        state = self.__dict__.copy()
        state["_files"], state["_readers"], state["_crcs"] = {}, {}, {}
        state["_pid"] = None
        return state

    def __del__(self) -> None:
        # At interpreter shutdown h5py may already be gone; nothing useful can be done about it then.
        with contextlib.suppress(Exception):
            self.close()

    def _file(self, pos: int) -> h5py.File:
        pid = os.getpid()
        if self._pid != pid:
            # Forked from a process that had files open: its handles belong to the parent, start afresh.
            self._files, self._readers, self._crcs = {}, {}, {}
            self._pid = pid
        f = self._files.get(pos)
        if f is None:
            path = self.out_dir / self.manifest.shards[pos].file
            f = open_shard(path, f"run verify({str(self.out_dir)!r}) to check it")
            self._files[pos] = f
        return f

    def _value(self, pos: int, row: int, name: str) -> Any:
        """Row ``row`` of field ``name`` in shard ``pos``, checked against its stored checksum."""
        reader = self._reader(pos, name)
        try:
            raw = reader.ds[row]  # as stored: what the checksum covers (a JPEG field's JPEG bytes)
        except Exception as e:  # a chunk that fails its filter (a damaged compressed sample)
            raise self._damaged(pos, row, name, f"unreadable ({e})") from e
        if self.verify_checksums:
            key = (pos, name)
            if key not in self._crcs:
                self._crcs[key] = checksums.stored(reader.ds.file, name)
            crcs = self._crcs[key]
            if crcs is not None and zlib.crc32(checksums.sample_bytes(raw)) != crcs[row]:
                raise self._damaged(pos, row, name, "checksum mismatch, the stored bytes changed after writing")
        try:
            return reader.decode(raw)  # JPEG planes are decoded here, transparently
        except Exception as e:
            raise self._damaged(pos, row, name, f"undecodable ({e})") from e

    def _damaged(self, pos: int, row: int, name: str, what: str) -> StoreError:
        shard = self.manifest.shards[pos]
        return StoreError(
            f"{self.out_dir / shard.file} sample {row} (dataset item {int(self._offsets[pos]) + row}), field {name!r}: "
            f"{what}; `enhancer verify {self.out_dir} --repair-list` lists the shards to rerun (here shard "
            f"{shard.shard_id})"
        )

    def _reader(self, pos: int, name: str) -> FieldReader:
        f = self._file(pos)  # first: it resets the readers in a forked worker
        reader = self._readers.get((pos, name))
        if reader is None:
            reader = self._readers[(pos, name)] = FieldReader(f[name])
        return reader

    def _read_labels(self) -> np.ndarray:
        return self.read_column("label").astype(np.int64)

    def read_column(self, name: str) -> np.ndarray:
        """A small field of every sample, in manifest order (``label``, ``targets``)."""
        parts = []
        for s in self.manifest.shards:
            with h5py.File(self.out_dir / s.file, "r", locking=False) as f:
                parts.append(f[name][:])
        shape = tuple(self.manifest.fields[name]["shape"][1:])
        return np.concatenate(parts) if parts else np.zeros((0, *shape), np.dtype(FIELDS[name].dtype))


TARGET_FOLDERS = {1: "positive", 0: "negative", -1: "uncertain"}  # export of one class of a multi-label dataset


def export_imagefolder(
    out_dir: str | os.PathLike, dest: str | os.PathLike, field: str = "enhanced", class_name: str | None = None
) -> int:
    """Write ``field`` of every sample as ``dest/<CLASS>/<stem>.png``; returns the number of files written.

    Two inputs with the same stem in one class get the sample index appended (``<stem>__<index>.png``).
    ``class_name`` selects one class of a dataset of per-class maps: its map of ``field`` (images without one are
    left out); in a multi-label dataset the folders are then ``positive``, ``negative`` and ``uncertain``, the
    sample's target for that class.
    """
    if field not in IMAGE_FIELDS:
        raise StoreError(f"cannot export field {field!r} as PNG; valid choices: {', '.join(IMAGE_FIELDS)}")
    probe = EnhancedDataset(out_dir, fields=("label",), class_name=class_name)
    extra = ("targets",) if probe.targets is not None and class_name is not None else ()
    ds = EnhancedDataset(out_dir, fields=(field, "label", "path", "index", *extra), class_name=class_name)
    probe.close()
    dest = Path(dest)
    used: set[tuple[str, str]] = set()
    written = 0
    try:
        for i in range(len(ds)):
            s = ds[i]
            if not bool(s.get("has_map", True)):
                continue
            cls = _folder(s, ds)
            stem = Path(s["path"]).stem or f"sample{int(s['index'])}"
            if (cls, stem) in used:
                stem = f"{stem}__{int(s['index'])}"
            used.add((cls, stem))
            arr = s[field].numpy()
            if arr.ndim == 3:
                arr = arr[0]
            target = dest / cls / f"{stem}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(target, "wb") as f:
                Image.fromarray(np.ascontiguousarray(arr)).save(f, format="PNG")
            written += 1
    finally:
        ds.close()
    log.info("exported %d %s images from %s to %s", written, field, out_dir, dest)
    return written


def _folder(sample: dict[str, Any], ds: EnhancedDataset) -> str:
    """The folder of a sample: its class name, or for one class of a multi-label dataset its target for it."""
    if "targets" in sample and ds.class_id is not None:
        return TARGET_FOLDERS[int(sample["targets"][ds.class_id])]
    label, names = int(sample["label"]), ds.class_names
    return names[label] if 0 <= label < len(names) else str(label)
