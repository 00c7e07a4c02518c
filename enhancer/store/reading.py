"""Reading a field of a shard whatever its codec: JPEG planes come back decoded, everything else as HDF5 gives it.

Usage::

    from enhancer.store.reading import read_rows, sample_shape, field_codec
    with h5py.File("out/shard-00000-of-00001.h5", "r") as f:
        x = read_rows(f["image"], slice(0, 8))       # (8, 1, 224, 224) uint8, also when stored as jpeg95
        field_codec(f["image"]), sample_shape(f["image"])

Every reader of the store (``EnhancedDataset``, ``ColumnReader``, ``verify``, ``merge``) goes through here, so a
codec only needs to be known in one place; the readers that keep shards open (``EnhancedDataset``, ``ColumnReader``)
open them with ``open_shard``.
"""

from __future__ import annotations

import os
from typing import Any

import h5py
import numpy as np

from enhancer.store.codecs import jpeg_decode
from enhancer.store.schema import StoreError


def open_shard(path: str | os.PathLike[str], fix: str) -> h5py.File:
    """A complete shard opened read-only for a reader that keeps it open; an unreadable file is a ``StoreError``
    naming it and ``fix``. ``locking=False``: the shards are immutable once renamed, and lock calls fail on some
    cluster filesystems (Lustre/NFS without locking)."""
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as e:
        raise StoreError(f"cannot open {path} ({e}); {fix}") from e


def field_codec(ds: h5py.Dataset) -> str:
    """The codec name of a dataset: its ``codec`` attribute, or for shards written before per-field codecs, the name
    of its HDF5 filter (``gzip4``, ``lzf``, ``none``)."""
    name = ds.attrs.get("codec")
    if name is not None:
        return name.decode() if isinstance(name, bytes) else str(name)
    if ds.compression == "gzip":
        return f"gzip{ds.compression_opts}"
    return ds.compression or "none"


def is_jpeg(ds: h5py.Dataset) -> bool:
    return field_codec(ds).startswith("jpeg")


def sample_shape(ds: h5py.Dataset) -> tuple[int, ...]:
    """Shape of one decoded sample (JPEG datasets record it in ``sample_shape``)."""
    if is_jpeg(ds):
        return tuple(int(s) for s in ds.attrs["sample_shape"])
    return tuple(ds.shape[1:])


def sample_dtype(ds: h5py.Dataset) -> str:
    """dtype of the decoded samples: ``str`` for strings, else the numpy name (``uint8`` for JPEG planes)."""
    if h5py.check_string_dtype(ds.dtype):
        return "str"
    if is_jpeg(ds):
        value = ds.attrs["sample_dtype"]
        return value.decode() if isinstance(value, bytes) else str(value)
    return str(ds.dtype)


class FieldReader:
    """One field of one open shard, its codec looked up once (readers that fetch sample by sample keep one)."""

    def __init__(self, ds: h5py.Dataset) -> None:
        self.ds = ds
        self.jpeg = is_jpeg(ds)
        self.shape = sample_shape(ds)

    def decode(self, raw: Any) -> Any:
        """One row as ``ds[row]`` returns it -> the sample (a JPEG field's bytes decoded)."""
        return jpeg_decode(raw, self.shape) if self.jpeg else raw

    def read(self, selection: Any) -> np.ndarray:
        """``ds[selection]`` (an int, a slice or a sorted list of rows) with JPEG samples decoded."""
        data = self.ds[selection]
        if not self.jpeg:
            return data
        if isinstance(selection, int | np.integer):
            return self.decode(data)
        out = np.empty((len(data), *self.shape), dtype=np.uint8)
        for k, item in enumerate(data):
            out[k] = jpeg_decode(item, self.shape)
        return out


def read_rows(ds: h5py.Dataset, selection: Any) -> np.ndarray:
    """``ds[selection]`` (an int, a slice or a sorted list of rows) with JPEG samples decoded."""
    return FieldReader(ds).read(selection)
