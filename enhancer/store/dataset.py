"""PyTorch Dataset over a merged enhanced dataset, and export to an ImageFolder of PNGs.

Usage::

    from enhancer.store import EnhancedDataset, export_imagefolder
    ds = EnhancedDataset("out", fields=("enhanced", "label"))
    loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=8)   # fork or spawn both work
    ds.class_names, ds.labels                                                   # for samplers / reports
    export_imagefolder("out", "out_png", field="enhanced")                     # out_png/<CLASS>/<stem>.png

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
from enhancer.store.reading import FieldReader
from enhancer.store.schema import FIELDS, STR, StoreError

log = logging.getLogger(__name__)

IMAGE_FIELDS = ("enhanced", "image", "heatmap", "crop")


class EnhancedDataset(torch.utils.data.Dataset):
    """Samples as dicts ``{field: tensor}`` (``path`` as str), in manifest order.

    ``transform`` is called with the sample dict and its result is returned, e.g.
    ``lambda s: (s["enhanced"].float() / 255, s["label"].long())``.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        fields: Iterable[str] = ("enhanced", "label"),
        transform: Callable[[dict[str, Any]], Any] | None = None,
        verify_checksums: bool = True,
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
        for name in self.fields:
            value = self._value(pos, row, name)
            if FIELDS[name].dtype == STR:
                sample[name] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            else:
                sample[name] = torch.from_numpy(np.array(value))
        return self.transform(sample) if self.transform is not None else sample

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
            try:
                # locking=False: the shards are immutable once renamed, and lock calls fail on some cluster
                # filesystems (Lustre/NFS without locking).
                f = h5py.File(path, "r", locking=False)
            except OSError as e:
                raise StoreError(f"cannot open {path} ({e}); run verify({str(self.out_dir)!r}) to check it") from e
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
        parts = []
        for s in self.manifest.shards:
            with h5py.File(self.out_dir / s.file, "r", locking=False) as f:
                parts.append(f["label"][:].astype(np.int64))
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def export_imagefolder(out_dir: str | os.PathLike, dest: str | os.PathLike, field: str = "enhanced") -> int:
    """Write ``field`` of every sample as ``dest/<CLASS>/<stem>.png``; returns the number of files written.

    Two inputs with the same stem in one class get the sample index appended (``<stem>__<index>.png``).
    """
    if field not in IMAGE_FIELDS:
        raise StoreError(f"cannot export field {field!r} as PNG; valid choices: {', '.join(IMAGE_FIELDS)}")
    ds = EnhancedDataset(out_dir, fields=(field, "label", "path", "index"))
    names = ds.class_names
    dest = Path(dest)
    used: set[tuple[str, str]] = set()
    try:
        for i in range(len(ds)):
            s = ds[i]
            label = int(s["label"])
            cls = names[label] if 0 <= label < len(names) else str(label)
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
    finally:
        ds.close()
    log.info("exported %d %s images from %s to %s", len(ds), field, out_dir, dest)
    return len(ds)
