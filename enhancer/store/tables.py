"""Whole columns of a merged enhanced dataset as numpy arrays, and its rejected rows: for reports and statistics.

Usage::

    from enhancer.store.tables import ColumnReader, read_columns, read_rejected
    cols = read_columns("out", ("label", "pred", "prob"))           # every sample, manifest order
    with ColumnReader("out") as r:
        batch = r.read(("image", "heatmap"), indices=[5, 17, 2])     # these samples, in this order
    rows = read_rejected("out")                                      # [{"index", "path", "code", "message"}, ...]

``EnhancedDataset`` reads one sample at a time for training; this reads many rows per HDF5 call (a whole field, or
the requested rows of each shard in one sorted selection), which is what summaries over 100,000 samples need.
Strings come back as numpy object arrays of ``str``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import h5py
import numpy as np

from enhancer.store.layout import REJECTED
from enhancer.store.manifest import Manifest
from enhancer.store.reading import open_shard, read_rows
from enhancer.store.schema import FIELDS, REJECTED_COLUMNS, STR, StoreError


class ColumnReader:
    """Reads fields of a merged dataset through its manifest; shard files stay open until ``close``."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.out_dir = Path(out_dir)
        self.manifest = Manifest.load(self.out_dir)
        self._offsets = self.manifest.offsets
        self._files: dict[int, h5py.File] = {}

    def __len__(self) -> int:
        return self.manifest.n_written

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def read(self, fields: Iterable[str], indices: Sequence[int] | np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``{field: array}`` for every sample (``indices=None``) or for the global sample ``indices``, in that
        order (repeats allowed)."""
        fields = tuple(fields)
        bad = [f for f in fields if f not in self.manifest.fields]
        if bad:
            raise StoreError(
                f"field(s) {bad} not in {self.out_dir}; this dataset has: {', '.join(self.manifest.fields)}"
            )
        if indices is None:
            return {name: self._whole(name) for name in fields}
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"sample indices must be in 0..{n - 1}; got {idx.min()}..{idx.max()}")
        unique, inverse = np.unique(idx, return_inverse=True)
        shard_of = np.searchsorted(self._offsets, unique, side="right") - 1
        out: dict[str, np.ndarray] = {}
        for name in fields:
            parts = [
                self._rows(name, int(pos), unique[shard_of == pos] - self._offsets[pos]) for pos in np.unique(shard_of)
            ]
            joined = np.concatenate(parts) if parts else self._empty(name)
            out[name] = joined[inverse]
        return out

    def _file(self, pos: int) -> h5py.File:
        f = self._files.get(pos)
        if f is None:
            path = self.out_dir / self.manifest.shards[pos].file
            f = open_shard(path, f"run `enhancer verify {self.out_dir}` to check it")
            self._files[pos] = f
        return f

    def _read(self, name: str, pos: int, selection: slice | list[int]) -> np.ndarray:
        ds = self._file(pos)[name]
        if FIELDS[name].dtype == STR:
            return np.asarray(ds.asstr()[selection], dtype=object)
        return np.asarray(read_rows(ds, selection))  # JPEG planes decoded

    def _rows(self, name: str, pos: int, rows: np.ndarray) -> np.ndarray:
        # One sorted fancy selection per shard: h5py reads the chunks in file order.
        return self._read(name, pos, rows.tolist())

    def _whole(self, name: str) -> np.ndarray:
        parts = [self._read(name, pos, slice(None)) for pos in range(len(self.manifest.shards))]
        return np.concatenate(parts) if parts else self._empty(name)

    def _empty(self, name: str) -> np.ndarray:
        shape = self.manifest.fields[name]["shape"][1:]
        dtype = object if FIELDS[name].dtype == STR else np.dtype(FIELDS[name].dtype)
        return np.zeros((0, *shape), dtype=dtype)


def read_columns(
    out_dir: str | os.PathLike[str], fields: Iterable[str], indices: Sequence[int] | np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """``ColumnReader(out_dir).read(fields, indices)`` with the files closed afterwards."""
    with ColumnReader(out_dir) as reader:
        return reader.read(fields, indices)


def read_rejected(out_dir: str | os.PathLike[str]) -> list[dict[str, str | int]]:
    """The rows of ``rejected.csv`` (index, path, code, message) in file order; the merge writes them sorted."""
    path = Path(out_dir) / REJECTED
    if not path.is_file():
        raise StoreError(f"{path} not found: {out_dir} is not a merged enhanced dataset; run merge on it first")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != REJECTED_COLUMNS:
            raise StoreError(
                f"{path} has columns {reader.fieldnames}, expected {list(REJECTED_COLUMNS)}; rerun merge to rewrite it"
            )
        return [{**row, "index": int(row["index"])} for row in reader]
