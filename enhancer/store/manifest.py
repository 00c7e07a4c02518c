"""Merge finished shards into a dataset: ``manifest.json``, ``rejected.csv`` and the dataset card ``README.md``.

Usage::

    from enhancer.store import merge, Manifest
    m = merge("out", expected_indices=range(n_in))     # after every shard of the job array finished
    m = Manifest.load("out")                           # readers: shards, offsets, fields, counts, provenance

``merge`` refuses to write anything unless every shard is complete and every sample index is present exactly once
(written or rejected); the error names the shard ids to rerun. Files are written atomically (tmp + rename),
``manifest.json`` last, so its presence means the merge finished.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from enhancer.atomic import atomic_write
from enhancer.hashing import file_sha256
from enhancer.store.claims import read_claim
from enhancer.store.layout import (
    CARD,
    HDF5_SUFFIXES,
    MANIFEST,
    REJECTED,
    SHARD_GLOB,
    parse_shard_name,
    shard_name,
    shard_path,
)
from enhancer.store.reading import field_codec, sample_dtype, sample_shape
from enhancer.store.schema import (
    FIELDS,
    METRIC_FIELDS,
    PER_CLASS_ATTR,
    REJECTED_COLUMNS,
    REJECTED_GROUP,
    RESERVED_ATTRS,
    SCHEMA_VERSION,
    STR,
    StoreError,
    decode_attrs,
)
from enhancer.store.writer import shard_status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardEntry:
    """One shard in the manifest; ``offset`` is the global index of its first sample."""

    shard_id: int
    file: str
    n_samples: int
    n_rejected: int
    offset: int
    sha256: str
    size: int
    attrs: dict[str, Any] = field(default_factory=dict)  # provenance that differs between shards (SLURM ids...)


@dataclass(frozen=True)
class Manifest:
    """Contents of ``manifest.json``; ``Manifest.load(out_dir)`` reads it."""

    schema_version: int
    num_shards: int
    shards: tuple[ShardEntry, ...]
    fields: dict[str, dict[str, Any]]
    filters: dict[str, Any]
    n_in: int
    n_written: int
    n_rejected: int
    class_names: tuple[str, ...] | None
    class_counts: dict[str, dict[str, int]]
    rejected_codes: dict[str, int]
    provenance: dict[str, Any]
    created: str
    # metric field -> {"mean", "n", "by_class": {class: {"mean", "n"}}} over defined samples (hits: the hit rate)
    localisation: dict[str, Any] = field(default_factory=dict)

    @property
    def offsets(self) -> np.ndarray:
        """Global index of each shard's first sample, plus the total at the end (len = num_shards + 1)."""
        return np.array([s.offset for s in self.shards] + [self.n_written], dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shards"] = [asdict(s) for s in self.shards]
        d["class_names"] = list(self.class_names) if self.class_names is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        d = dict(d)
        d["shards"] = tuple(ShardEntry(**s) for s in d["shards"])
        d["class_names"] = tuple(d["class_names"]) if d.get("class_names") is not None else None
        return cls(**d)

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> Manifest:
        path = Path(out_dir) / MANIFEST
        if not path.is_file():
            raise StoreError(f"{path} not found: {out_dir} is not a merged enhanced dataset; run merge on it first")
        d = json.loads(path.read_text("utf-8"))
        if d.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(
                f"{path}: schema version {d.get('schema_version')} is not supported by this enhancer "
                f"(supports {SCHEMA_VERSION}); use the enhancer version that wrote it"
            )
        return cls.from_dict(d)


def detect_num_shards(out_dir: str | os.PathLike, num_shards: int | None = None) -> int:
    """num_shards from the shard file names; errors on mixed totals or a non-enhancer layout."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise StoreError(f"{out_dir} is not a directory; pass the output directory of the enhance job")
    totals: set[int] = set()
    foreign = []
    for p in sorted(out_dir.iterdir()):
        parsed = parse_shard_name(p.name)
        if parsed is not None:
            totals.add(parsed[1])
        elif p.name.lower().endswith(HDF5_SUFFIXES):
            foreign.append(p.name)
    if foreign:
        raise StoreError(
            f"{out_dir} holds HDF5 files that are not enhancer shards ({', '.join(foreign[:5])}); shards are named "
            f"{shard_name(0, 8)}. Use a separate output directory per dataset."
        )
    if num_shards is not None:
        others = totals - {num_shards}
        if others:
            raise StoreError(
                f"{out_dir} holds shards of a dataset with --num-shards {sorted(others)}, not {num_shards}; "
                "use a fresh output directory or remove the old shards"
            )
        return num_shards
    if not totals:
        raise StoreError(f"no shard files ({SHARD_GLOB}) in {out_dir}; run the enhance job first")
    if len(totals) > 1:
        raise StoreError(
            f"{out_dir} mixes shards of different --num-shards {sorted(totals)}; keep one dataset per directory"
        )
    return totals.pop()


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path, encoding="utf-8", newline="") as f:
        f.write(text)


def _fmt_ids(ids: Iterable[int], limit: int = 20) -> str:
    ids = sorted(ids)
    text = ", ".join(str(i) for i in ids[:limit])
    return text + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def _describe_fields(f: h5py.File, names: list[str], per_class: list[str]) -> dict[str, dict[str, Any]]:
    """Per field: decoded dtype and shape, how it is stored (codec, HDF5 chunks) and its meaning; ``per_class``:
    true for a field with the explained-class axis (sample, slot, ...)."""
    out = {}
    for name in names:
        ds = f[name]
        is_str = FIELDS[name].dtype == STR
        out[name] = {
            "dtype": "str (utf-8, variable length)" if is_str else sample_dtype(ds),
            "shape": [None, *sample_shape(ds)],
            "codec": "none" if is_str else field_codec(ds),
            "chunks": list(ds.chunks),
            "doc": FIELDS[name].doc,
            **({"per_class": True} if name in per_class else {}),
        }
    return out


def _filters(info: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{field: codec}`` for every field with a codec (what ``verify`` and the dataset card report)."""
    return {name: d["codec"] for name, d in info.items() if FIELDS[name].dtype != STR}


@dataclass
class _ShardContents:
    """What merge reads from one shard: its attributes, field layout, indices, labels and rejected rows."""

    path: Path
    attrs: dict[str, Any]
    fields: list[str]
    field_info: dict[str, dict[str, Any]]
    filters: dict[str, Any]
    index: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    metrics: dict[str, np.ndarray]
    rejected: list[list[Any]]  # [index, path, code, message]
    targets: np.ndarray | None = None  # (n, C) multi-label targets
    explained: np.ndarray | None = None  # (n, K) class of each map slot

    @property
    def n_samples(self) -> int:
        return int(self.attrs["n_samples"])

    @property
    def n_rejected(self) -> int:
        return int(self.attrs["n_rejected"])


def merge(
    out_dir: str | os.PathLike, *, num_shards: int | None = None, expected_indices: Iterable[int] | None = None
) -> Manifest:
    """Check every shard and write ``manifest.json``, ``rejected.csv`` and ``README.md`` into ``out_dir``."""
    out_dir = Path(out_dir)
    num_shards = detect_num_shards(out_dir, num_shards)
    _require_complete(out_dir, num_shards)
    shards: list[_ShardContents] = []
    for i in range(num_shards):
        contents = _read_shard(out_dir / shard_name(i, num_shards), i, num_shards)
        if shards:
            _check_like_first(contents, shards[0])
        shards.append(contents)
    assert shards

    written = [s.index for s in shards]
    written_idx = np.concatenate(written) if written else np.zeros(0, np.int64)
    rejected_rows = [row for s in shards for row in s.rejected]
    rejected_idx = np.array([r[0] for r in rejected_rows], dtype=np.int64)
    _check_indices(written_idx, rejected_idx, written, shards, expected_indices)

    manifest = _build_manifest(num_shards, shards, written_idx, rejected_idx, rejected_rows)
    _write_dataset_files(out_dir, manifest, rejected_rows)
    log.info(
        "merged %d shards in %s: %d written, %d rejected", num_shards, out_dir, manifest.n_written, manifest.n_rejected
    )
    return manifest


def _require_complete(out_dir: Path, num_shards: int) -> None:
    bad = [i for i, s in shard_status(out_dir, num_shards).items() if s != "complete"]
    if bad:
        ids = ", ".join(str(i) for i in bad)
        reruns = " and ".join(f"--shard-id {i}" for i in bad)
        claims = [(i, read_claim(shard_path(out_dir, i, num_shards))) for i in bad]
        busy = "".join(
            f"; shard {i} is claimed by {holder.describe()}: a job may still be writing it"
            for i, holder in claims
            if holder
        )
        raise StoreError(
            f"shards {ids} of {num_shards} are missing or incomplete in {out_dir}: rerun them with {reruns} "
            f"(--num-shards {num_shards}){busy}"
        )


def _read_shard(path: Path, shard_id: int, num_shards: int) -> _ShardContents:
    with h5py.File(path, "r", locking=False) as f:
        attrs = decode_attrs(f.attrs)
        if (attrs["shard_id"], attrs["num_shards"]) != (shard_id, num_shards):
            raise StoreError(
                f"{path.name} says it is shard {attrs['shard_id']} of {attrs['num_shards']}: the file was renamed "
                "or copied from another dataset; rerun this shard"
            )
        names = list(attrs["fields"])
        info = _describe_fields(f, names, list(attrs.get(PER_CLASS_ATTR, [])))
        g = f[REJECTED_GROUP]
        cols = {c: g[c][:] for c in REJECTED_COLUMNS}
        rejected = [
            [int(cols["index"][k])] + [_s(cols[c][k]) for c in REJECTED_COLUMNS[1:]] for k in range(len(cols["index"]))
        ]
        return _ShardContents(
            path=path,
            attrs=attrs,
            fields=names,
            field_info=info,
            filters=_filters(info),
            index=f["index"][:],
            label=f["label"][:],
            pred=f["pred"][:],
            metrics={name: f[name][:] for name in names if name in METRIC_FIELDS},
            targets=f["targets"][:] if "targets" in names else None,
            explained=f["explained"][:] if "explained" in names else None,
            rejected=rejected,
        )


def _check_like_first(shard: _ShardContents, first: _ShardContents) -> None:
    """All shards of a dataset have the fields and per-sample shapes of shard 0."""
    shapes = {k: v["shape"] for k, v in shard.field_info.items()}
    if shard.fields != first.fields or shapes != {k: v["shape"] for k, v in first.field_info.items()}:
        raise StoreError(
            f"{shard.path.name} has fields/shapes {[(k, v['shape']) for k, v in shard.field_info.items()]} but "
            f"shard 0 has {[(k, v['shape']) for k, v in first.field_info.items()]}: all shards must come from one job "
            "spec; rerun the odd shard with the same spec"
        )


def _build_manifest(
    num_shards: int,
    shards: list[_ShardContents],
    written_idx: np.ndarray,
    rejected_idx: np.ndarray,
    rejected_rows: list[list[Any]],
) -> Manifest:
    # Provenance: what all shards agree on goes to the top, the rest (SLURM task ids, times) stays per shard.
    prov_dicts = [{k: v for k, v in s.attrs.items() if k not in RESERVED_ATTRS} for s in shards]
    common = {k: v for k, v in prov_dicts[0].items() if all(k in d and d[k] == v for d in prov_dicts[1:])}
    class_names = common.get("class_names")
    class_names = tuple(str(c) for c in class_names) if isinstance(class_names, list) else None

    label_all = np.concatenate([s.label for s in shards]) if shards else np.zeros(0, np.int16)
    pred_all = np.concatenate([s.pred for s in shards]) if shards else np.zeros(0, np.int16)
    metrics: dict[str, list[np.ndarray]] = {}
    for s in shards:
        for name, values in s.metrics.items():
            metrics.setdefault(name, []).append(values)
    explained = np.concatenate([s.explained for s in shards]) if shards[0].explained is not None else None
    groups = label_all if explained is None else explained  # per-class metrics: by the class each map explains
    return Manifest(
        schema_version=SCHEMA_VERSION,
        num_shards=num_shards,
        shards=_shard_entries(shards, prov_dicts, common),
        fields=shards[0].field_info,
        filters=shards[0].filters,
        n_in=int(len(written_idx) + len(rejected_idx)),
        n_written=len(written_idx),
        n_rejected=len(rejected_idx),
        class_names=class_names,
        class_counts={
            "label": _counts(label_all, class_names),
            "pred": _counts(pred_all, class_names),
            **_multilabel_counts(shards, explained, class_names),
        },
        rejected_codes=dict(sorted(Counter(r[2] for r in rejected_rows).items())),
        provenance=common,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        localisation=summarise_localisation({k: np.concatenate(v) for k, v in metrics.items()}, groups, class_names),
    )


def _shard_entries(
    shards: list[_ShardContents], prov_dicts: list[dict[str, Any]], common: dict[str, Any]
) -> tuple[ShardEntry, ...]:
    """One entry per shard with its global offset and sha256; provenance not in ``common`` stays per shard."""
    entries, offset = [], 0
    for i, s in enumerate(shards):
        log.info("hashing %s", s.path.name)
        entries.append(
            ShardEntry(
                shard_id=i,
                file=s.path.name,
                n_samples=s.n_samples,
                n_rejected=s.n_rejected,
                offset=offset,
                sha256=file_sha256(s.path),
                size=s.path.stat().st_size,
                attrs={k: v for k, v in prov_dicts[i].items() if k not in common},
            )
        )
        offset += s.n_samples
    return tuple(entries)


def _write_dataset_files(out_dir: Path, manifest: Manifest, rejected_rows: list[list[Any]]) -> None:
    """rejected.csv, the card, then the manifest: its presence means the merge finished."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(REJECTED_COLUMNS)
    w.writerows(sorted(rejected_rows))
    _write_text(out_dir / REJECTED, buf.getvalue())
    from enhancer.store.card import render_card  # local: the card is only needed here

    _write_text(out_dir / CARD, render_card(manifest))
    _write_text(out_dir / MANIFEST, json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n")


def _multilabel_counts(
    shards: list[_ShardContents], explained: np.ndarray | None, class_names: tuple[str, ...] | None
) -> dict[str, dict[str, int]]:
    """Per class: positive targets (``positive``) and maps (``explained``), where the dataset has those fields."""
    out = {}
    if shards[0].targets is not None:
        targets = np.concatenate([s.targets for s in shards])
        rows, cols = np.nonzero(targets == 1)
        out["positive"] = _counts(cols, class_names) if len(rows) else {}
    if explained is not None:
        out["explained"] = _counts(explained[explained >= 0], class_names)
    return out


def summarise_localisation(
    metrics: dict[str, np.ndarray], labels: np.ndarray, class_names: tuple[str, ...] | None
) -> dict[str, Any]:
    """Mean of each metric field over the samples where it is defined (float: finite; hit: not -1), overall and per
    label class; ``n`` counts the defined samples. For hits the mean is the pointing-game hit rate. Per-class
    metrics (N, K) are grouped by ``labels`` (N, K), the class each map explains (slots of class -1 left out)."""

    def stats(v: np.ndarray) -> dict[str, Any]:
        ok = v != -1 if v.dtype.kind in "iu" else np.isfinite(v)
        return {"mean": float(v[ok].astype(np.float64).mean()) if ok.any() else None, "n": int(ok.sum())}

    out: dict[str, Any] = {}
    for name in (n for n in METRIC_FIELDS if n in metrics):
        v, groups = metrics[name], labels
        if v.ndim == 2:  # per (sample, slot): the filled slots, each in its class (labels stays whole for the next)
            v, groups = v[labels >= 0], labels[labels >= 0]
        by_class = {}
        for c in np.unique(groups).tolist():
            key = class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
            by_class[key] = stats(v[groups == c])
        out[name] = {**stats(v), "by_class": by_class}
    return out


def _s(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _counts(values: np.ndarray, class_names: tuple[str, ...] | None) -> dict[str, int]:
    ids, counts = np.unique(values, return_counts=True)
    out = {}
    for i, c in zip(ids.tolist(), counts.tolist(), strict=True):
        name = class_names[i] if class_names is not None and 0 <= i < len(class_names) else str(i)
        out[name] = int(c)
    return out


def _check_indices(
    written_idx: np.ndarray,
    rejected_idx: np.ndarray,
    written_per_shard: list[np.ndarray],
    per_shard: list[_ShardContents],
    expected_indices: Iterable[int] | None,
) -> None:
    uniq, counts = np.unique(written_idx, return_counts=True)
    dup = uniq[counts > 1]
    if len(dup):
        where = {int(d): [i for i, w in enumerate(written_per_shard) if (w == d).any()] for d in dup[:5].tolist()}
        raise StoreError(
            f"sample index written more than once: {_fmt_ids(dup.tolist())} (shards holding them: {where}); the "
            "shards overlap, so they were written with different --num-shards or input lists: rerun them with one spec"
        )
    uniq_r, counts_r = np.unique(rejected_idx, return_counts=True)
    if (counts_r > 1).any():
        raise StoreError(f"sample index rejected more than once: {_fmt_ids(uniq_r[counts_r > 1].tolist())}")
    both = np.intersect1d(uniq, uniq_r)
    if len(both):
        raise StoreError(f"sample index both written and rejected: {_fmt_ids(both.tolist())}")
    for s, w in zip(per_shard, written_per_shard, strict=True):
        if len(w) != s.n_samples:
            raise StoreError(f"{s.path.name}: n_samples attribute {s.n_samples} != {len(w)} rows; rerun it")
    if expected_indices is not None:
        expected = np.unique(np.fromiter((int(i) for i in expected_indices), dtype=np.int64))
        seen = np.union1d(uniq, uniq_r)
        missing = np.setdiff1d(expected, seen)
        extra = np.setdiff1d(seen, expected)
        if len(missing) or len(extra):
            parts = []
            if len(missing):
                parts.append(f"missing indices {_fmt_ids(missing.tolist())} (neither written nor rejected)")
            if len(extra):
                parts.append(f"unexpected indices {_fmt_ids(extra.tolist())}")
            raise StoreError(
                f"written + rejected != expected inputs: {'; '.join(parts)}. Check that every shard ran on the same "
                "input list and rerun the shards that should hold them"
            )
