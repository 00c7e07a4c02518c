"""Encoding a batch's fields on a pool of threads, so that compression scales with the cores the job leaves free.

Usage::

    encoder = BatchEncoder(codecs, threads=4)       # codecs from enhancer.store.codecs.resolve_codecs
    pending = encoder.submit(arrays)                # returns at once; the pool deflates / JPEG-encodes
    for name, rows in pending.results(name): ...    # in sample order, waiting only for what is not done yet
    encoder.close()

Each field of a batch is cut into contiguous slices, a few per thread, and every slice is one task; the writer
consumes the slices in order, so chunks land in the file in sample order however the threads finish. zlib and
libjpeg release the GIL while they work, so the threads really run beside the writer's HDF5 calls and the caller's
compute.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from enhancer.store.checksums import row_checksums
from enhancer.store.codecs import Codec, EncodedPlanes, deflate_chunks, jpeg_encode

_SLICES_PER_THREAD = 2  # enough to balance uneven slices, few enough that task overhead stays negligible


def default_write_threads(loader_threads: int) -> int:
    """The cores this process may use (its CPU affinity, which SLURM sets) minus the loader's threads; >= 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - max(0, loader_threads))


@dataclass
class PendingBatch:
    """A batch handed to the pool: raw arrays for fields stored as they are, slice futures for encoded ones."""

    n: int
    raw: dict[str, Any] = field(default_factory=dict)
    encoded: dict[str, list[Future] | EncodedPlanes] = field(default_factory=dict)
    crcs: dict[str, Future] = field(default_factory=dict)  # per-sample checksums of the fields not coded as JPEG

    def checksums(self) -> dict[str, np.ndarray]:
        """The crc32 of every sample of the fields stored as arrays or strings (``enhancer.store.checksums``); a
        JPEG field's are taken from its JPEG bytes as they are written."""
        return {name: future.result() for name, future in self.crcs.items()}

    def results(self, name: str) -> Iterator[list[Any]]:
        """Encoded samples of field ``name`` slice by slice, in sample order: ``bytes`` (None: store raw) for
        deflate, uint8 arrays for JPEG. Re-raises an encoder's error."""
        parts = self.encoded[name]
        if isinstance(parts, EncodedPlanes):
            yield list(parts.data)
            return
        for future in parts:
            yield future.result()

    def cancel(self) -> None:
        for parts in self.encoded.values():
            for future in parts if isinstance(parts, list) else ():
                future.cancel()
        for future in self.crcs.values():
            future.cancel()


def encode_slice(arr: np.ndarray, codec: Codec) -> list[Any]:
    """One task: encode the samples of ``arr`` with ``codec`` (gzip or jpeg)."""
    if codec.kind == "gzip":
        return deflate_chunks(arr, codec)
    if codec.kind == "jpeg":
        return jpeg_encode(arr, codec.level)
    raise ValueError(f"codec {codec.name} is written by HDF5 itself, not encoded on the pool")


class BatchEncoder:
    """A thread pool that encodes the gzip and jpeg fields of batches; see the module docstring."""

    def __init__(self, codecs: Mapping[str, Codec], threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"write threads must be >= 1, got {threads}")
        self.codecs = dict(codecs)
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, arrays: Mapping[str, Any]) -> PendingBatch:
        """Queue the encoding of ``arrays`` (validated host arrays, one per field; ``EncodedPlanes`` for JPEG
        fields encoded elsewhere) and return at once."""
        n = len(arrays["index"])
        pending = PendingBatch(n)
        for name, value in arrays.items():
            codec = self.codecs.get(name)
            if codec is None or codec.kind not in ("gzip", "jpeg") or n == 0:
                pending.raw[name] = value
            elif isinstance(value, EncodedPlanes):
                pending.encoded[name] = value
            else:
                step = max(1, math.ceil(n / (self.threads * _SLICES_PER_THREAD)))
                pool = self._require_pool()
                pending.encoded[name] = [
                    pool.submit(encode_slice, value[i : i + step], codec) for i in range(0, n, step)
                ]
        if n:  # the checksums on the pool too: crc32 releases the GIL, and the raw planes are the bulk of a batch
            pool = self._require_pool()
            for name, value in arrays.items():
                codec = self.codecs.get(name)
                if codec is None or codec.kind != "jpeg":
                    pending.crcs[name] = pool.submit(row_checksums, value)
        return pending

    def close(self) -> None:
        """Stop the threads (waiting for running tasks); ``submit`` starts them again."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _require_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="shard-encode")
        return self._pool
