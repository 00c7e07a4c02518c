"""Per-sample checksums of the stored fields: a changed byte is located to its shard, sample and field.

Usage::

    from enhancer.store.checksums import CHECKSUMS, row_checksums, changed_rows
    crcs = row_checksums(batch["enhanced"])                  # uint32 (N,): one crc32 per sample
    bad = changed_rows(f["enhanced"][:], f[CHECKSUMS]["enhanced"][:])   # rows whose bytes are not those written

Every shard holds a group ``checksums`` with one uint32 dataset per field, row for row: the crc32 (``zlib.crc32``) of
each sample as HDF5 hands it back to a reader, computed by the writer before anything is compressed: a numeric
sample's raw bytes in C order, a string's UTF-8 bytes, a variable-length sample's bytes (e.g. a JPEG file). Any
HDF5 reader can recompute it; ``verify`` and ``EnhancedDataset`` do, and name shard, sample and field.

Why a stored column rather than HDF5's fletcher32 filter:

- The writer compresses chunks itself and hands HDF5 finished ones (``write_direct_chunk``), which bypasses the
  whole filter pipeline, fletcher32 included: the writer would have to reproduce HDF5's checksum byte for byte.
- fletcher32 cannot cover variable-length data (path strings, JPEG-coded image planes): their chunks hold heap
  pointers, not the bytes.
- It checks the compressed chunk, and a mismatch comes back as a generic filter failure of the read; the column
  checks the very bytes a reader gets, whatever the codec (none, gzip, lzf, JPEG), in one comparison per sample.

Cost: one crc32 per sample and field on the writer's thread (zlib's crc32 runs at GB/s and releases the GIL on large
buffers) and 4 bytes per sample and field on disk.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import h5py
import numpy as np

CHECKSUMS = "checksums"  # the group of a shard holding one crc32 column per field
_CHUNK = 1024


def sample_bytes(value: Any) -> bytes | memoryview:
    """The bytes of one stored sample as a reader gets them: str as UTF-8, bytes as they are, arrays raw (C order)."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    return memoryview(np.ascontiguousarray(value)).cast("B")


def row_checksums(values: np.ndarray | Sequence[Any]) -> np.ndarray:
    """crc32 of every sample (first axis) of ``values``: (N,) uint32."""
    # One zlib call per sample: the checksum is per sample by design, and each call covers a whole image plane.
    return np.fromiter((zlib.crc32(sample_bytes(v)) for v in values), dtype=np.uint32, count=len(values))


def changed_rows(
    values: np.ndarray | Sequence[Any], stored: np.ndarray, readable: np.ndarray | None = None
) -> list[int]:
    """Rows whose checksum differs from the ``stored`` one (rows not ``readable`` are left out: they failed already)."""
    differ = row_checksums(values) != np.asarray(stored, dtype=np.uint32)
    if readable is not None:
        differ &= readable
    return np.flatnonzero(differ).tolist()


def create(f: h5py.File, fields: Iterable[str]) -> None:
    """The empty checksum columns of a new shard."""
    g = f.create_group(CHECKSUMS)
    for name in fields:
        g.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(_CHUNK,), dtype=np.uint32)


def append(f: h5py.File, name: str, start: int, crcs: np.ndarray) -> None:
    """Write the checksums of rows ``start:start + len(crcs)`` of field ``name``."""
    ds = f[CHECKSUMS][name]
    ds.resize(start + len(crcs), axis=0)
    ds[start : start + len(crcs)] = crcs


def stored(f: h5py.File, name: str) -> np.ndarray | None:
    """The checksum column of field ``name``; None for shards written before checksums existed."""
    g = f.get(CHECKSUMS)
    return None if g is None or name not in g else g[name][:]
