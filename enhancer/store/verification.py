"""Deep check of a merged enhanced dataset: checksums, every chunk readable, per-sample invariants.

Usage::

    from enhancer.store import verify
    report = verify("out")
    if not report.ok:
        print("\\n".join(report.problems))

Reads every sample of every field once (in blocks; a block that fails is re-read row by row to name the sample)
and compares each sample's crc32 with the one stored when it was written (``enhancer.store.checksums``), so a
changed byte is named by shard, sample and field; it costs one full read of the dataset plus one sha256 pass.
``report.rerun`` holds the shard ids whose files are damaged, missing or incomplete: rerun them and merge again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from enhancer.hashing import file_sha256
from enhancer.store import checksums
from enhancer.store.layout import parse_shard_name
from enhancer.store.manifest import Manifest, detect_num_shards
from enhancer.store.reading import FieldReader, sample_dtype, sample_shape
from enhancer.store.schema import FIELDS, REJECTED_GROUP, STR, StoreError
from enhancer.store.writer import is_complete

log = logging.getLogger(__name__)

_BLOCK = 64
_PROB_TOL = 1e-3
_MAX_PER_CHECK = 5  # problems listed per shard and check; more are summarised by a count

_Problem = Callable[[str, str], None]  # problem(check, text): one finding of a named check


@dataclass
class VerifyReport:
    """Result of ``verify``: ``ok`` when ``problems`` is empty."""

    out_dir: str
    problems: list[str] = field(default_factory=list)
    n_shards: int = 0
    n_samples: int = 0
    rerun: set[int] = field(default_factory=set)  # ids of the shards to write again

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_failed(self) -> None:
        if self.problems:
            raise StoreError(f"{self.out_dir} failed verification:\n- " + "\n- ".join(self.problems))


def verify(out_dir: str | os.PathLike) -> VerifyReport:
    """Check manifest, shard checksums, readability of every sample and the data invariants."""
    out_dir = Path(out_dir)
    report = VerifyReport(str(out_dir))
    try:
        m = Manifest.load(out_dir)
        detect_num_shards(out_dir, m.num_shards)
    except (StoreError, json.JSONDecodeError, TypeError, KeyError) as e:
        report.problems.append(str(e))
        return report
    report.n_shards = m.num_shards
    listed = {s.file for s in m.shards}
    for p in sorted(out_dir.iterdir()):
        if parse_shard_name(p.name) and p.name not in listed:
            report.problems.append(f"{p.name} is not in the manifest: a left-over from another run; remove it")
    if len(m.shards) != m.num_shards:
        report.problems.append(f"manifest lists {len(m.shards)} shards but num_shards is {m.num_shards}")
    seen: list[np.ndarray] = []
    for s in m.shards:
        path = out_dir / s.file
        n_problems = len(report.problems)
        if not path.is_file():
            report.problems.append(f"{s.file} is listed in the manifest but missing; rerun shard {s.shard_id}")
            report.rerun.add(s.shard_id)
            continue
        digest = file_sha256(path)
        if digest != s.sha256:
            report.problems.append(
                f"{s.file}: sha256 {digest[:12]}... does not match the manifest ({s.sha256[:12]}...): the file changed "
                f"after merge; restore it or rerun shard {s.shard_id} and merge again"
            )
        if not is_complete(path):
            report.problems.append(f"{s.file} is not a complete shard; rerun shard {s.shard_id} and merge again")
        try:
            idx = _check_shard(path, s.n_samples, m, report.problems)
        except Exception as e:
            report.problems.append(f"{s.file}: cannot be read ({type(e).__name__}: {e}); rerun shard {s.shard_id}")
            idx = None
        if len(report.problems) > n_problems:
            report.rerun.add(s.shard_id)
        if idx is not None:
            seen.append(idx)
        report.n_samples += s.n_samples
    if seen:
        all_idx = np.concatenate(seen)
        uniq, counts = np.unique(all_idx, return_counts=True)
        if (counts > 1).any():
            report.problems.append(f"sample indices not unique: {uniq[counts > 1][:20].tolist()}")
        if len(all_idx) != m.n_written:
            report.problems.append(f"manifest says {m.n_written} samples, shards hold {len(all_idx)}")
    log.info(
        "verified %s: %d shards, %d samples, %d problems",
        out_dir,
        report.n_shards,
        report.n_samples,
        len(report.problems),
    )
    return report


def _check_shard(path: Path, n_expected: int, m: Manifest, problems: list[str]) -> np.ndarray | None:
    name = path.name
    found: dict[str, list[str]] = {}

    def problem(check: str, text: str) -> None:
        found.setdefault(check, []).append(text)

    with h5py.File(path, "r", locking=False) as f:
        _check_datasets(f, name, n_expected, m, problem)
        if found.get("missing") or found.get("length"):
            _flush(found, problems)
            return None
        read = {fname: _read_all(f[fname]) for fname in m.fields}
        data = {fname: column.values for fname, column in read.items()}
        _check_samples(f, name, read, problem)
        g = f[REJECTED_GROUP]
        for col in g:
            for r, e in _read_all(g[col]).failed.items():
                problem("read", f"{name}: {REJECTED_GROUP}/{col} row {r} unreadable ({e})")
    _check_predictions(data, n_expected, name, m, problem)
    _check_geometry(data, n_expected, name, problem)
    _check_measured(data, n_expected, name, problem)
    idx = data["index"]
    uniq, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        problem("index", f"{name}: duplicate sample indices {uniq[counts > 1][:10].tolist()}")
    _flush(found, problems)
    return idx


def _check_datasets(f: h5py.File, name: str, n_expected: int, m: Manifest, problem: _Problem) -> None:
    """Every manifest field is present with the schema's dtype, the manifest's row count and per-sample shape."""
    for fname, info in m.fields.items():
        if fname not in f:
            problem("missing", f"{name}: field {fname!r} missing")
            continue
        ds = f[fname]
        want = "str" if FIELDS[fname].dtype == STR else FIELDS[fname].dtype
        got = sample_dtype(ds)  # JPEG planes: the decoded dtype
        if got != want:
            problem("dtype", f"{name}: field {fname!r} has dtype {got}, schema says {want}")
        if len(ds) != n_expected:
            problem("length", f"{name}: field {fname!r} has {len(ds)} rows, manifest says {n_expected}")
        if list(sample_shape(ds)) != list(info["shape"][1:]):
            problem("shape", f"{name}: field {fname!r} has shape {ds.shape}, manifest says {info['shape']}")


def _check_predictions(data: dict[str, np.ndarray], n: int, name: str, m: Manifest, problem: _Problem) -> None:
    """prob rows sum to 1, pred is their argmax, label and pred are class ids."""
    rows = np.arange(n)
    prob = data["prob"]
    sums = prob.sum(axis=1) if n else np.zeros(0)
    for r in rows[~(np.abs(sums - 1) <= _PROB_TOL)]:
        problem("prob", f"{name} row {r}: prob sums to {sums[r]:.6f}, not 1")
    if n:
        argmax = prob.argmax(axis=1)
        for r in rows[(data["pred"] != argmax) & np.isfinite(sums)]:
            problem("pred", f"{name} row {r}: pred {data['pred'][r]} != argmax(prob) {argmax[r]}")
    n_classes = len(m.class_names) if m.class_names else prob.shape[1]
    for key in ("label", "pred"):
        for r in rows[(data[key] < 0) | (data[key] >= n_classes)]:
            problem(key + "-range", f"{name} row {r}: {key} {data[key][r]} outside 0..{n_classes - 1}")


def _check_geometry(data: dict[str, np.ndarray], n: int, name: str, problem: _Problem) -> None:
    """orig_size is positive; crop_box lies inside the original image."""
    rows = np.arange(n)
    size = data["orig_size"]
    for r in rows[(size <= 0).any(axis=1)] if n else []:
        problem("orig_size", f"{name} row {r}: orig_size {size[r].tolist()} not positive")
    if "crop_box" in data and n:
        b = data["crop_box"]
        h, w = size[:, 0], size[:, 1]
        bad = (
            (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 0] >= b[:, 2]) | (b[:, 1] >= b[:, 3]) | (b[:, 2] > w) | (b[:, 3] > h)
        )
        for r in rows[bad]:
            problem(
                "crop_box",
                f"{name} row {r}: crop_box {b[r].tolist()} not inside orig_size (h, w) "
                f"{size[r].tolist()} with x0 < x1, y0 < y1",
            )


def _check_measured(data: dict[str, np.ndarray], n: int, name: str, problem: _Problem) -> None:
    """cam is finite; localisation metrics are NaN or in [0, 1]; hits are -1, 0 or 1; the lung mask is 0/1."""
    rows = np.arange(n)
    if "cam" in data and n:
        for r in rows[~np.isfinite(data["cam"].reshape(n, -1)).all(axis=1)]:
            problem("cam", f"{name} row {r}: cam contains NaN or inf")
    for key in ("lung_energy", "box_energy", "box_iou"):
        if key in data and n:
            v = data[key]
            for r in rows[~(np.isnan(v) | ((v >= 0) & (v <= 1)))]:
                problem(key, f"{name} row {r}: {key} {v[r]} is neither NaN (undefined) nor in [0, 1]")
    for key in ("lung_hit", "box_hit"):
        if key in data and n:
            for r in rows[~np.isin(data[key], (-1, 0, 1))]:
                problem(key, f"{name} row {r}: {key} {data[key][r]} is not -1 (undefined), 0 or 1")
    if "lung_mask" in data and n:
        for r in rows[(data["lung_mask"].reshape(n, -1) > 1).any(axis=1)]:
            problem("lung_mask", f"{name} row {r}: lung_mask has values other than 0 and 1")


def _check_samples(f: h5py.File, name: str, read: dict[str, _Read], problem: _Problem) -> None:
    """Name every sample that cannot be read or whose bytes differ from those written, with its field."""
    index = read["index"]

    def where(r: int) -> str:
        return f"{name} sample {r} (index {'?' if r in index.failed else index.values[r]}), field"

    for fname, column in read.items():
        for r, e in column.failed.items():
            problem("read", f"{where(r)} {fname!r}: unreadable ({e})")
        crcs = checksums.stored(f, fname)  # of the rows as stored: a JPEG field's JPEG bytes
        if crcs is None or len(crcs) != len(column.raw):
            continue
        readable = np.ones(len(column.raw), dtype=bool)
        readable[list(column.failed)] = False
        for r in checksums.changed_rows(column.raw, crcs, readable):
            problem("checksum", f"{where(r)} {fname!r}: checksum mismatch, the stored bytes changed after writing")


class _Read(NamedTuple):
    raw: np.ndarray  # the rows as stored (a JPEG field: its JPEG bytes, one object per row)
    values: np.ndarray  # the samples (JPEG planes decoded); rows that failed are zeros
    failed: dict[int, Exception]  # row -> why it could not be read or decoded


def _read_all(ds: h5py.Dataset) -> _Read:
    """Every row (so every chunk is decompressed and every JPEG decoded), as stored and as samples."""
    reader = FieldReader(ds)
    if reader.jpeg or h5py.check_string_dtype(ds.dtype):
        raw = np.empty(len(ds), dtype=object)
    else:
        raw = np.zeros(ds.shape, dtype=ds.dtype)
    failed: dict[int, Exception] = {}
    for start in range(0, len(ds), _BLOCK):
        stop = min(start + _BLOCK, len(ds))
        try:
            raw[start:stop] = ds[start:stop]
        except Exception:
            for r in range(start, stop):
                try:
                    raw[r] = ds[r]
                except Exception as e:
                    failed[r] = e
    if not reader.jpeg:
        return _Read(raw, raw, failed)
    values = np.zeros((len(ds), *reader.shape), dtype=np.uint8)
    for r in range(len(ds)):
        try:
            if r not in failed:
                values[r] = reader.decode(raw[r])
        except Exception as e:
            failed[r] = e
    return _Read(raw, values, failed)


def _flush(found: dict[str, list[str]], problems: list[str]) -> None:
    for items in found.values():
        problems.extend(items[:_MAX_PER_CHECK])
        if len(items) > _MAX_PER_CHECK:
            problems.append(f"... and {len(items) - _MAX_PER_CHECK} more like the above")
