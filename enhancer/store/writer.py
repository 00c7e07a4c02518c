"""Shard writer: one HDF5 file per shard, written to ``*.tmp`` and renamed only once complete.

Usage::

    from enhancer.store import AsyncShardWriter, ShardWriter, per_sample_shapes, resolve_fields, shard_status
    fields = resolve_fields("enhanced,heatmap")
    shapes = per_sample_shapes(fields, H=224, W=224, C=3)
    with ShardWriter("out", shard_id=0, num_shards=8, fields=fields, shapes=shapes, attrs=provenance) as w:
        w.write({"index": idx, "label": y, "pred": p, "prob": prob, "path": paths, "orig_size": hw, ...})
        w.add_rejected([(17, "NORMAL/bad.jpeg", "decode", "truncated JPEG")])
    # the same with the HDF5 work in a background thread behind a bounded queue:
    with AsyncShardWriter("out", 0, 8, fields=fields, shapes=shapes) as w:
        w.put(batch)

A rerun skips shards for which ``shard_status(out_dir, n)[i] == "complete"``; a left-over ``.tmp`` (killed job) is
deleted and rewritten when the shard is entered again. A writer holds the shard's claim (``enhancer.store.claims``)
from ``open`` until the shard is renamed or discarded, so a second writer of the same shard is refused, naming the
first; pass ``claim=`` a claim the caller already holds (the enhance job claims its shard before loading the model).
Every sample's crc32, field by field, goes into the group ``checksums`` (``enhancer.store.checksums``).

Per-field codecs (``codecs={"image": "jpeg95"}``, ``compression`` for the rest; see ``enhancer.store.codecs``) are
encoded on ``write_threads`` threads and written in sample order: deflate chunks with HDF5's direct chunk write
(the dataset declares the deflate filter, so every HDF5 reader decodes them), JPEG files into a variable-length
uint8 dataset whose ``codec`` and ``sample_shape`` attributes tell readers how to decode it. Every dataset carries
a ``codec`` attribute.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Self

import h5py
import numpy as np

from enhancer.atomic import move_into_place
from enhancer.store import checksums
from enhancer.store.claims import ShardClaim
from enhancer.store.codecs import Codec, EncodedPlanes, resolve_codecs
from enhancer.store.encoding import BatchEncoder, PendingBatch
from enhancer.store.layout import shard_path, tmp_path_for
from enhancer.store.schema import (
    FIELDS,
    PER_CLASS_ATTR,
    REJECTED_COLUMNS,
    REJECTED_GROUP,
    SCHEMA_VERSION,
    STR,
    StoreError,
    check_per_class,
    check_shape,
    encode_attrs,
    resolve_fields,
    symbolic_shape,
)

log = logging.getLogger(__name__)

_STR_DTYPE = h5py.string_dtype("utf-8")
_REJECTED_CHUNK = 256


class ShardWriteError(StoreError, OSError):
    """An I/O error (disk full, quota, file-size limit) while writing a shard; the shard is not complete.

    An OSError too, so callers that handle OSError keep working; ``errno`` and ``filename`` name the cause and file.
    """

    def __init__(self, message: str, code: int | None = None, filename: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errno = code
        self.filename = filename

    def __str__(self) -> str:
        return self.message


def is_complete(path: str | os.PathLike) -> bool:
    """True when ``path`` is a finished shard: opens, is marked complete and its counts add up."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r", locking=False) as f:
            a = f.attrs
            if not bool(a.get("complete", False)) or int(a.get("schema_version", -1)) != SCHEMA_VERSION:
                return False
            n, n_rej, expected = int(a["n_samples"]), int(a["n_rejected"]), int(a.get("expected", -1))
            for name in json.loads(a["fields"]):
                if name not in f or f[name].shape[0] != n:
                    return False
            if f[REJECTED_GROUP]["index"].shape[0] != n_rej:
                return False
            return expected < 0 or expected == n + n_rej
    except Exception as e:
        log.debug("shard %s is not complete: %s", path, e)
        return False


def shard_status(
    out_dir: str | os.PathLike, num_shards: int
) -> dict[int, Literal["complete", "incomplete", "missing"]]:
    """State of every shard id: complete (skip on rerun), incomplete (left-over .tmp or bad file), missing."""
    status: dict[int, Literal["complete", "incomplete", "missing"]] = {}
    for i in range(num_shards):
        path = shard_path(out_dir, i, num_shards)
        if is_complete(path):
            status[i] = "complete"
        elif path.exists() or tmp_path_for(path).exists():
            status[i] = "incomplete"
        else:
            status[i] = "missing"
    return status


class ShardWriter:
    """Context manager that writes one shard; see the module docstring.

    ``shapes`` gives per-sample shapes of the fields whose size depends on the job (image, cam, heatmap, crop,
    enhanced, prob); ``fields`` selects optional fields (None = all); ``expected`` is the number of inputs of this
    shard (written + rejected), checked on close; ``overwrite`` allows replacing an existing final shard file.
    ``codecs`` maps fields to codec names (``gzip1``, ``jpeg95``, ...), ``compression`` is the codec of the others
    (``auto``: the measured defaults); ``write_threads`` threads encode them.

    ``write(batch)`` is ``append(prepare(batch))``: ``prepare`` validates the batch and hands its encoding to the
    thread pool, ``append`` writes the finished chunks in order, so a caller may prepare batch k + 1 before
    appending batch k (``AsyncShardWriter`` does).

    Sample data is written uncached, so a full disk fails the ``write`` that hits it; HDF5 metadata is cached and
    flushed at most every ``flush_interval_s`` seconds (0 = after every batch) so a metadata write failure also
    stops the job within that time rather than at the end of the shard.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        shard_id: int,
        num_shards: int,
        *,
        shapes: Mapping[str, Sequence[int]] | None = None,
        fields: Iterable[str] | str | None = None,
        codecs: Mapping[str, str] | None = None,
        compression: str = "auto",
        write_threads: int = 1,
        attrs: Mapping[str, Any] | None = None,
        expected: int | None = None,
        overwrite: bool = False,
        flush_interval_s: float = 10.0,
        claim: ShardClaim | None = None,
        per_class: Iterable[str] = (),
    ) -> None:
        self.out_dir = Path(out_dir)
        self.shard_id, self.num_shards = int(shard_id), int(num_shards)
        self.path = shard_path(self.out_dir, self.shard_id, self.num_shards)
        self.tmp_path = tmp_path_for(self.path)
        self.fields = resolve_fields(fields)
        self.per_class = tuple(f for f in self.fields if f in check_per_class(per_class))
        self.shapes = self._resolve_shapes(dict(shapes or {}))
        self.codecs: dict[str, Codec] = resolve_codecs(self.fields, codecs, compression)
        jpeg = [n for n in self.per_class if self.codecs[n].kind == "jpeg"]
        if jpeg:
            raise StoreError(
                f"field(s) {jpeg} hold several maps per sample here (one per explained class), which JPEG cannot "
                "store; choose gzip or none for them (--codec FIELD=gzip1)"
            )
        if write_threads < 1:
            raise StoreError(f"write_threads must be >= 1, got {write_threads}")
        self._encoder = BatchEncoder(self.codecs, write_threads)
        self.attrs, self._json_keys = encode_attrs(attrs)
        if expected is not None and expected < 0:
            raise StoreError(f"expected must be >= 0 or None, got {expected}")
        self.expected = expected
        self.overwrite = overwrite
        self.flush_interval_s = flush_interval_s
        self._last_flush = time.monotonic()
        self.n_samples = 0
        self.n_rejected = 0
        self.finish_s = 0.0  # time close() took: HDF5 close, fsync (the disk catching up), rename
        self._seen: set[int] = set()
        self._file: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}  # looked up once: a lookup by name costs more than a chunk write
        if claim is not None and claim.shard != self.path:
            raise StoreError(f"the claim given is on {claim.shard}, not on this writer's shard {self.path}")
        self._given_claim = claim
        self._own_claim: ShardClaim | None = None
        self._tmp_id: tuple[int, int] | None = None  # (device, inode) of the .tmp this writer created

    def _resolve_shapes(self, shapes: dict[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
        """The per-sample shape of every field: as given (checked against the schema), or the schema's fixed one."""
        unknown = set(shapes) - set(FIELDS)
        if unknown:
            raise StoreError(f"shapes given for unknown field(s) {sorted(unknown)}; valid: {', '.join(FIELDS)}")
        out: dict[str, tuple[int, ...]] = {}
        for name in self.fields:
            symbolic = symbolic_shape(name, name in self.per_class)
            if name in shapes:
                out[name] = check_shape(name, shapes[name], name in self.per_class)
            elif all(isinstance(d, int) for d in symbolic):
                out[name] = tuple(int(d) for d in symbolic)
            else:
                raise StoreError(
                    f"no per-sample shape for field {name!r} (schema {symbolic}); pass shapes={{{name!r}: (...)}} "
                    "or build them with per_sample_shapes()"
                )
        return out

    # -- context manager -------------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(f"{exc_type.__name__}: {exc}")

    def open(self) -> None:
        """Create the ``.tmp`` file and its datasets (``__enter__`` calls this)."""
        if self._file is not None:
            raise StoreError(f"shard writer for {self.path} is already open")
        if self.path.exists() and not self.overwrite:
            raise StoreError(
                f"{self.path} already exists; skip complete shards (shard_status) or pass overwrite=True to rewrite it"
            )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._hold_claim()
        try:
            self._create_file()
        except Exception as exc:
            self.abort(f"the shard file could not be created: {type(exc).__name__}: {exc}")
            raise
        except BaseException as exc:  # a stop (Preempted, Ctrl-C) while the file was being made: name the stop
            self.abort(f"{type(exc).__name__}: {exc}")
            raise
        log.info("writing shard %d/%d to %s", self.shard_id, self.num_shards, self.tmp_path)

    def _create_file(self) -> None:
        """The ``.tmp`` file with its (empty) datasets and attributes, replacing a left-over one."""
        if self.tmp_path.exists():
            log.warning(
                "removing left-over %s from an interrupted run; rewriting shard %d", self.tmp_path, self.shard_id
            )
            self.tmp_path.unlink()
        with self._io("create"):
            # Default libver on purpose: libver='latest' produces files HDF5 1.10/1.14 readers cannot open.
            # No raw-chunk cache: every chunk is one whole sample written once, so caching gains nothing, and
            # cached chunks that fail to reach a full disk fail later inside dataset close, where HDF5 2.0 leaves
            # broken handles that crash the interpreter at exit. Uncached, the failing write() itself raises.
            f = h5py.File(self.tmp_path, "w-", rdcc_nbytes=0)
            self._file = f
            st = os.stat(self.tmp_path)
            self._tmp_id = (st.st_dev, st.st_ino)
            self._datasets = {name: self._create_dataset(f, name) for name in self.fields}
            checksums.create(f, self.fields)
            g = f.create_group(REJECTED_GROUP)
            for col in REJECTED_COLUMNS:
                dtype = np.int64 if col == "index" else _STR_DTYPE
                g.create_dataset(col, shape=(0,), maxshape=(None,), chunks=(_REJECTED_CHUNK,), dtype=dtype)
            a = f.attrs
            a["schema_version"] = SCHEMA_VERSION
            a["complete"] = False
            a["n_samples"] = 0
            a["n_rejected"] = 0
            a["expected"] = -1 if self.expected is None else self.expected
            a["shard_id"] = self.shard_id
            a["num_shards"] = self.num_shards
            a["fields"] = json.dumps(list(self.fields))
            if self.per_class:  # absent from single-map shards, which stay as they were
                a[PER_CLASS_ATTR] = json.dumps(list(self.per_class))
            a["json_attrs"] = json.dumps(self._json_keys)
            for key, value in self.attrs.items():
                a[key] = value

    def _create_dataset(self, f: h5py.File, name: str) -> h5py.Dataset:
        shape = self.shapes[name]
        codec = self.codecs.get(name)
        if codec is None:  # variable-length strings: filters would only compress heap pointers
            return f.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(1,), dtype=_STR_DTYPE)
        if codec.kind == "jpeg":
            ds = f.create_dataset(
                name, shape=(0,), maxshape=(None,), chunks=(1,), dtype=h5py.vlen_dtype(np.dtype(np.uint8))
            )
            ds.attrs["sample_shape"] = np.asarray(shape, dtype=np.int64)
            ds.attrs["sample_dtype"] = FIELDS[name].dtype
        else:
            filters: dict[str, Any] = {}
            if codec.kind == "gzip":
                filters = {"compression": "gzip", "compression_opts": codec.level, "shuffle": codec.shuffle}
            elif codec.kind == "lzf":
                filters = {"compression": "lzf"}
            ds = f.create_dataset(
                name,
                shape=(0, *shape),
                maxshape=(None, *shape),
                chunks=(1, *shape),
                dtype=np.dtype(FIELDS[name].dtype),
                **filters,
            )
        ds.attrs["codec"] = codec.name
        return ds

    # -- writing ---------------------------------------------------------------------------------------------
    def write(self, batch: Mapping[str, Any]) -> int:
        """Append a batch: every selected field, first axis = samples. Returns the number of samples added."""
        return self.append(self.prepare(batch))

    def prepare(self, batch: Mapping[str, Any]) -> PendingBatch:
        """Validate a batch and start encoding it on the thread pool; ``append`` writes it. Batches must be
        appended in the order they were prepared."""
        self._require_open()
        missing = [n for n in self.fields if n not in batch]
        extra = [n for n in batch if n not in self.fields]
        if missing or extra:
            raise StoreError(
                f"batch for {self.tmp_path.name} has wrong fields: missing {missing}, not selected {extra} "
                f"(selected fields: {', '.join(self.fields)})"
            )
        arrays = {name: self._coerce(name, batch[name]) for name in self.fields}
        lengths = {name: len(a) for name, a in arrays.items()}
        n = lengths["index"]
        if any(v != n for v in lengths.values()):
            raise StoreError(f"batch for {self.tmp_path.name} has fields of different lengths: {lengths}")
        if n:
            self._claim(arrays["index"], "written")
        return self._encoder.submit(arrays)

    def append(self, pending: PendingBatch) -> int:
        """Write a prepared batch after the samples already written. Returns the number of samples added."""
        f = self._require_open()
        n, start = pending.n, self.n_samples
        if n == 0:
            return 0
        try:
            with self._io("write"):
                for ds in self._datasets.values():
                    ds.resize(start + n, axis=0)
                for name, arr in pending.raw.items():  # first: the pool keeps encoding meanwhile
                    self._datasets[name][start : start + n] = arr
            for name in pending.encoded:
                self._write_encoded(name, start, pending)
            with self._io("write"):
                for name, crcs in pending.checksums().items():
                    checksums.append(f, name, start, crcs)
                if time.monotonic() - self._last_flush >= self.flush_interval_s:
                    f.flush()
                    self._last_flush = time.monotonic()
        except BaseException:
            pending.cancel()
            raise
        self.n_samples += n
        return n

    def _write_encoded(self, name: str, start: int, pending: PendingBatch) -> None:
        ds = self._datasets[name]
        is_jpeg = self.codecs[name].kind == "jpeg"
        # Deflate runs in HDF5 holding the GIL; these chunks were compressed on the pool instead, where zlib releases
        # it. A chunk that deflate would grow is stored raw with every filter masked off for that chunk.
        skip_all = 0 if is_jpeg else (1 << ds.id.get_create_plist().get_nfilters()) - 1
        zeros = (0,) * (ds.ndim - 1)
        row = start
        for items in pending.results(name):
            with self._io("write"):
                if is_jpeg:
                    _write_vlen_rows(ds, row, items)
                    checksums.append(self._require_open(), name, row, checksums.row_checksums(items))
                else:
                    for k, (payload, filtered) in enumerate(items):
                        ds.id.write_direct_chunk((row + k, *zeros), payload, filter_mask=0 if filtered else skip_all)
            row += len(items)

    def add_rejected(self, rows: Iterable[Sequence[Any] | Mapping[str, Any]]) -> int:
        """Record inputs of this shard that were not written: ``(index, path, code, message)`` tuples or dicts."""
        f = self._require_open()
        cols: dict[str, list] = {c: [] for c in REJECTED_COLUMNS}
        for row in rows:
            values = [row[c] for c in REJECTED_COLUMNS] if isinstance(row, Mapping) else list(row)
            if len(values) != len(REJECTED_COLUMNS):
                raise StoreError(f"rejected row {row!r} must have {len(REJECTED_COLUMNS)} values: {REJECTED_COLUMNS}")
            cols["index"].append(int(values[0]))
            for c, v in zip(REJECTED_COLUMNS[1:], values[1:], strict=True):
                cols[c].append(str(v))
        n = len(cols["index"])
        if n == 0:
            return 0
        index = np.asarray(cols["index"], dtype=np.int64)
        self._claim(index, "rejected")
        start = self.n_rejected
        with self._io("write rejected rows to"):
            g = f[REJECTED_GROUP]
            for c in REJECTED_COLUMNS:
                g[c].resize(start + n, axis=0)
                g[c][start : start + n] = index if c == "index" else np.array(cols[c], dtype=object)
        self.n_rejected += n
        return n

    # -- finishing -------------------------------------------------------------------------------------------
    def close(self) -> Path:
        """Mark complete, flush, fsync and rename ``.tmp`` to the final name. Returns the final path."""
        f = self._require_open()
        self._encoder.close()
        total = self.n_samples + self.n_rejected
        if self.expected is not None and total != self.expected:
            self.abort("count mismatch")
            raise StoreError(
                f"shard {self.shard_id} ({self.path.name}): {self.n_samples} written + {self.n_rejected} rejected = "
                f"{total}, expected {self.expected}; every input must be written or rejected. Rerun the shard."
            )
        started = time.perf_counter()
        try:
            with self._io("finish"):
                f.attrs["n_samples"] = self.n_samples
                f.attrs["n_rejected"] = self.n_rejected
                f.attrs["complete"] = True
                f.flush()
                f.close()
                self._file, self._datasets = None, {}
                self._check_tmp_is_ours()
                move_into_place(self.tmp_path, self.path, sync_dir=True)  # fsync, rename, fsync the directory
        except BaseException:
            self.abort("finish failed")
            raise
        self.finish_s = time.perf_counter() - started
        self._drop_claim()
        log.info("shard %s complete: %d written, %d rejected", self.path.name, self.n_samples, self.n_rejected)
        return self.path

    def abort(self, reason: str = "aborted") -> None:
        """Close without completing and remove the ``.tmp``; the shard stays missing for the rerun."""
        self._encoder.close()
        if self._file is not None:
            try:
                self._file.close()
            except Exception as e:
                log.debug("closing %s after failure: %s", self.tmp_path, e)
            self._file, self._datasets = None, {}
        try:
            if self._tmp_is_ours():
                self.tmp_path.unlink()
        except OSError as e:
            log.warning("could not remove %s (%s); it will be replaced on rerun", self.tmp_path, e)
        self._tmp_id = None
        self._drop_claim()
        log.warning("shard %s not written (%s)", self.path.name, reason)

    # -- helpers ---------------------------------------------------------------------------------------------
    def _hold_claim(self) -> None:
        """The shard's claim: the caller's (which must be held) or one of its own, taken here."""
        if self._given_claim is not None:
            if not self._given_claim.held:
                raise StoreError(f"the claim on {self.path.name} given to the writer is not held; acquire it first")
        elif self._own_claim is None:
            self._own_claim = ShardClaim(self.path).acquire()

    def _drop_claim(self) -> None:
        if self._own_claim is not None:
            self._own_claim.release()
            self._own_claim = None

    def _tmp_is_ours(self) -> bool:
        """Whether the ``.tmp`` is the file this writer created (not removed, not replaced by another process)."""
        try:
            st = os.stat(self.tmp_path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._tmp_id

    def _check_tmp_is_ours(self) -> None:
        if not self._tmp_is_ours():
            raise FileNotFoundError(errno.ENOENT, "the file was removed or replaced", str(self.tmp_path))

    def _require_open(self) -> h5py.File:
        if self._file is None:
            raise StoreError(f"shard writer for {self.path} is not open; use it as a context manager")
        return self._file

    def _claim(self, index: np.ndarray, what: str) -> None:
        # A duplicate inside one shard is a bug in the caller's sharding; catch it before it reaches disk.
        new = set(index.tolist())
        if len(new) != len(index) or not new.isdisjoint(self._seen):
            dup = sorted(self._seen & new) or sorted(i for i in new if (index == i).sum() > 1)
            raise StoreError(
                f"shard {self.path.name}: sample index {dup[:10]} {what} more than once; every input belongs to "
                "exactly one written sample or rejected row"
            )
        self._seen |= new

    def _coerce(self, name: str, value: Any) -> np.ndarray | EncodedPlanes:
        shape = self.shapes[name]
        if isinstance(value, EncodedPlanes):
            codec = self.codecs.get(name)
            if codec is None or value.codec != codec.name or value.shape != shape:
                raise StoreError(
                    f"field {name!r}: got {value.codec} planes of shape {value.shape}, this shard stores "
                    f"{codec.name if codec else 'strings'} of shape {shape}; encode with the shard's codec"
                )
            return value
        if FIELDS[name].dtype == STR:
            items = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in list(value)]
            return np.array(items, dtype=object).reshape(len(items))
        arr = np.asarray(value)
        dtype = np.dtype(FIELDS[name].dtype)
        if arr.shape[1:] != shape:
            raise StoreError(f"field {name!r}: batch shape {arr.shape} != (N, *{shape}) declared for this shard")
        if arr.dtype == dtype:
            return arr
        if dtype.kind in "iu" and arr.dtype.kind in "biu":
            info = np.iinfo(dtype)
            if arr.size and (arr.min() < info.min or arr.max() > info.max):
                raise StoreError(f"field {name!r}: values {arr.min()}..{arr.max()} do not fit {dtype}")
            return arr.astype(dtype)
        if dtype.kind == "f" and arr.dtype.kind in "fiu":
            return arr.astype(dtype)
        raise StoreError(f"field {name!r}: got dtype {arr.dtype}, need {dtype} (convert before writing)")

    def _io(self, action: str):
        return _IOErrors(self, action)


def _write_vlen_rows(ds: h5py.Dataset, row: int, items: Sequence[np.ndarray]) -> None:
    # Through the low-level call: h5py's ds[a:b] = column turns byte arrays of equal length into a 2-D array.
    column = np.empty(len(items), dtype=object)
    for k, item in enumerate(items):
        column[k] = item
    file_space = ds.id.get_space()
    file_space.select_hyperslab((row,), (len(items),))
    ds.id.write(h5py.h5s.create_simple((len(items),)), file_space, column)


class _IOErrors:
    """Turn OSErrors from HDF5 into a ShardWriteError that names the shard file and the fix."""

    def __init__(self, writer: ShardWriter, action: str) -> None:
        self.w, self.action = writer, action

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        # HDF5 reports failed writes as OSError, but a failure surfacing at flush/close (cached chunks written
        # late) comes back as RuntimeError: both mean the bytes did not reach the disk.
        if exc is None or not isinstance(exc, (OSError, RuntimeError)) or isinstance(exc, StoreError):
            return False
        w = self.w
        text = str(exc)
        code = getattr(exc, "errno", None)
        if code is None and (m := re.search(r"errno = (\d+)", text)):
            code = int(m.group(1))
        raise ShardWriteError(
            f"cannot {self.action} shard file {w.tmp_path}: {text}. The shard is NOT complete; "
            f"{_cause(code, text, w)}, then rerun it with --shard-id {w.shard_id} --num-shards {w.num_shards}",
            code,
            str(w.tmp_path),
        ) from exc


def _cause(code: int | None, text: str, w: ShardWriter) -> str:
    """What to do about a failed write, from its cause: a full disk or quota, or a ``.tmp`` another process
    removed (two jobs on one shard), else the generic checks."""
    if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or any(
        s in text for s in ("No space left", "File too large", "quota")
    ):
        return (
            "the disk is full or a quota/file-size limit was hit: free disk space / raise the quota or file-size "
            f"limit in {w.out_dir}"
        )
    if w._tmp_id is not None and not w._tmp_is_ours():
        return (
            f"another process removed or replaced it (a second job writing shard {w.shard_id}, or a clean-up of "
            f"{w.out_dir}); let one job write each shard"
        )
    return f"check the space, quota and permissions of {w.out_dir}"


_STOP = object()
_IDLE = object()


def _cancel(pending: deque[PendingBatch]) -> None:
    for p in pending:
        p.cancel()
    pending.clear()


def _copied(name: str, value: Any) -> Any:
    """A private copy of one field of a batch (the caller may reuse its buffers once ``put`` returns)."""
    if isinstance(value, EncodedPlanes):
        return value  # made for this batch, never reused
    if FIELDS.get(name) and FIELDS[name].dtype == STR:
        return list(value)
    return np.array(value)


class AsyncShardWriter:
    """A ShardWriter whose HDF5 work runs in a background thread behind a bounded queue.

    The thread validates each batch and hands its encoding to the writer's thread pool (``write_threads``), then
    writes the previous batch while this one encodes; zlib and libjpeg release the GIL, so the caller's Python
    keeps running (lzf runs inside HDF5 and holds the GIL while it compresses). ``put`` copies the batch
    (``copy=False`` to hand over ownership instead) and returns once it is queued; it blocks only while ``maxsize``
    batches are waiting. An error in the thread is re-raised by the next ``put``/``add_rejected``/``close``.
    ``blocked_s`` is the time callers spent waiting on a full queue: when it grows, the disk (or compression) is the
    bottleneck.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        shard_id: int,
        num_shards: int,
        *,
        maxsize: int = 4,
        copy: bool = True,
        **writer_kwargs: Any,
    ) -> None:
        if maxsize < 1:
            raise StoreError(f"maxsize must be >= 1, got {maxsize}")
        self.writer = ShardWriter(out_dir, shard_id, num_shards, **writer_kwargs)
        self.path = self.writer.path
        self.copy = copy
        self.blocked_s = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._error: BaseException | None = None
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self.writer.open()
        # Daemon: if the caller dies without closing, the process may exit and the .tmp stays incomplete.
        self._thread = threading.Thread(target=self._run, name=f"shard-writer-{self.writer.shard_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException as e:  # e.g. a stop signal while the queue drains: the shard is not complete
                self._stop(drain=False)
                self.writer.abort(f"{type(e).__name__}: {e}")
                raise
        else:
            self._stop(drain=False)
            self.writer.abort(f"{exc_type.__name__}: {exc}")

    def put(self, batch: Mapping[str, Any]) -> None:
        """Queue a batch for ``ShardWriter.write``."""
        if self.copy:
            batch = {k: _copied(k, v) for k, v in batch.items()}
        self._enqueue(("write", batch))

    def add_rejected(self, rows: Iterable[Sequence[Any] | Mapping[str, Any]]) -> None:
        """Queue rejected rows (kept in order with the batches)."""
        self._enqueue(("reject", list(rows)))

    def close(self) -> Path:
        """Wait for the queue, then complete the shard; re-raises any error from the thread."""
        self._stop(drain=True)
        if self._error is not None:
            self.writer.abort(f"writer thread failed: {self._error}")
            raise self._error
        return self.writer.close()

    @property
    def n_samples(self) -> int:
        return self.writer.n_samples

    @property
    def codecs(self) -> dict[str, Codec]:
        """The codec of every field (``enhancer.store.device_jpeg.encode_jpeg_fields`` takes them)."""
        return self.writer.codecs

    def _enqueue(self, item: tuple[str, Any]) -> None:
        self._raise_pending()
        if self._thread is None:
            raise StoreError(f"async writer for {self.path} is not open; use it as a context manager")
        t0 = time.perf_counter()
        while True:
            try:
                self._queue.put(item, timeout=0.1)
                break
            except queue.Full:
                # The thread may have died with the queue full: check instead of blocking forever.
                self._raise_pending()
        self.blocked_s += time.perf_counter() - t0

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        # At most two batches in flight: batch k is written while batch k + 1 encodes on the pool; with nothing new
        # in the queue, the encoded batch is written at once.
        pending: deque[PendingBatch] = deque()
        while True:
            try:
                item = self._queue.get(block=not pending)
            except queue.Empty:
                item = _IDLE
            if item is _STOP:
                break
            if self._error is not None or self._abort.is_set():
                continue  # keep draining so a blocked put can finish, but write nothing more
            try:
                self._handle(item, pending)
            except BaseException as e:
                self._error = e
                _cancel(pending)
        if self._error is None and not self._abort.is_set():
            try:
                self._write_pending(pending, keep=0)
            except BaseException as e:
                self._error = e
        _cancel(pending)

    def _handle(self, item: Any, pending: deque[PendingBatch]) -> None:
        if item is _IDLE:
            self._write_pending(pending, keep=0)
            return
        kind, payload = item
        if kind == "write":
            pending.append(self.writer.prepare(payload))
            self._write_pending(pending, keep=1)
        else:
            self._write_pending(pending, keep=0)
            self.writer.add_rejected(payload)

    def _write_pending(self, pending: deque[PendingBatch], keep: int) -> None:
        while len(pending) > keep:
            self.writer.append(pending.popleft())

    def _stop(self, drain: bool) -> None:
        if self._thread is None:
            return
        if not drain:
            self._abort.set()
        self._queue.put(_STOP)
        self._thread.join()
        self._thread = None
