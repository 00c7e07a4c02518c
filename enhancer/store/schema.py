"""The enhanced dataset's on-disk schema: field table, attribute encoding (file names: ``enhancer.store.layout``).

Usage::

    from enhancer.store.schema import FIELDS, resolve_fields, per_sample_shapes
    fields = resolve_fields(["enhanced", "heatmap"])            # required fields + the selection, canonical order
    shapes = per_sample_shapes(fields, H=224, W=224, h=7, w=7, Hc=224, Wc=224, C=3)

Layout of one shard (HDF5, default ``libver`` so HDF5 1.10/1.14 readers open it):

- one dataset per field at the root, first axis = sample, ``chunks=(1, ...)`` (one chunk per sample),
  ``maxshape=(None, ...)``;
- group ``checksums`` with one uint32 dataset per field: the crc32 of every sample's stored bytes
  (``enhancer.store.checksums``), so that a changed byte is located to its sample and field;
- group ``rejected`` with 1-D datasets ``index`` (int64), ``path``, ``code``, ``message`` (utf-8 strings): the
  inputs of this shard that were not written, with the reason. Keeping them inside the shard makes them part of
  the same atomic rename as the samples, so a complete shard always carries its rejections;
- measured fields (``LUNG_FIELDS`` with a lung model, ``BOX_FIELDS`` with a box file; see
  ``enhancer.explain.localisation`` for the metric definitions): float metrics are NaN and hits -1 where undefined;
- file attributes: ``schema_version``, ``complete``, ``n_samples``, ``n_rejected``, ``expected`` (-1 = unknown),
  ``shard_id``, ``num_shards``, ``fields`` (JSON list) plus the caller's provenance. Provenance values that are not
  str/int/float/bool (dicts, lists, None) are stored as JSON strings; their keys are listed in ``json_attrs``.

Conventions: ``orig_size`` is ``(height, width)`` of the original file in pixels; ``crop_box`` is
``(x0, y0, x1, y1)`` in original pixels with ``0 <= x0 < x1 <= width`` and ``0 <= y0 < y1 <= height``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

SCHEMA_VERSION = 1

# Marker dtype for variable-length utf-8 strings; the writer maps it to h5py.string_dtype().
STR = "str"


class StoreError(Exception):
    """A problem with an enhanced dataset on disk; the message names the file and the fix."""


@dataclass(frozen=True)
class Field:
    """One per-sample field: dtype and per-sample shape (ints are fixed, letters are sizes from the job)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    required: bool
    doc: str
    measured: bool = False  # written when the job has the input it needs (a lung model, boxes), not via --fields


_FIELD_LIST = [
    Field("index", "int64", (), True, "sample index from the dataset scan (position in the input list)"),
    Field("label", "int16", (), True, "ground-truth class id (see class_names)"),
    Field("pred", "int16", (), True, "predicted class id, argmax of prob"),
    Field("prob", "float32", ("C",), True, "softmax probabilities, rows sum to 1"),
    Field("path", STR, (), True, "input file path, relative to the input root when known"),
    Field("orig_size", "int32", (2,), True, "original image (height, width) in pixels"),
    Field("image", "uint8", (1, "H", "W"), False, "model-resolution greyscale input"),
    Field("cam", "float32", ("h", "w"), False, "raw Grad-CAM map at feature resolution"),
    Field("heatmap", "uint8", ("H", "W"), False, "Grad-CAM normalised to 0..255 and upsampled to H x W"),
    Field("crop", "uint8", (1, "Hc", "Wc"), False, "Grad-CAM-guided crop resized to Hc x Wc"),
    Field("crop_box", "int32", (4,), False, "crop box x0, y0, x1, y1 in original pixels"),
    Field("enhanced", "uint8", (1, "H", "W"), False, "enhanced image: salient regions kept, the rest suppressed"),
    Field("lung_mask", "uint8", ("H", "W"), False, "lung segmentation at model resolution, 1 = lung", True),
    Field(
        "lung_energy", "float32", (), False, "share of the Grad-CAM energy inside the lung mask; NaN: undefined", True
    ),
    Field(
        "lung_hit", "int8", (), False, "pointing game: map maximum inside the lungs 1, outside 0, undefined -1", True
    ),
    Field(
        "box_energy",
        "float32",
        (),
        False,
        "share of the Grad-CAM energy inside the annotated boxes; NaN: undefined",
        True,
    ),
    Field("box_hit", "int8", (), False, "pointing game on the annotated boxes: 1 hit, 0 miss, -1 undefined", True),
    Field(
        "box_iou",
        "float32",
        (),
        False,
        "IoU of the thresholded map's box with the annotated boxes; NaN: undefined",
        True,
    ),
]
FIELDS: dict[str, Field] = {f.name: f for f in _FIELD_LIST}
REQUIRED_FIELDS: tuple[str, ...] = tuple(f.name for f in _FIELD_LIST if f.required)
OPTIONAL_FIELDS: tuple[str, ...] = tuple(f.name for f in _FIELD_LIST if not f.required and not f.measured)
LUNG_FIELDS: tuple[str, ...] = ("lung_mask", "lung_energy", "lung_hit")  # written with a lung model
BOX_FIELDS: tuple[str, ...] = ("box_energy", "box_hit", "box_iou")  # written with a box file
METRIC_FIELDS: tuple[str, ...] = ("lung_energy", "lung_hit", "box_energy", "box_hit", "box_iou")
SIZE_NAMES = ("H", "W", "h", "w", "Hc", "Wc", "C")

# Attributes the store owns; provenance passed by callers may not use these names.
RESERVED_ATTRS = frozenset(
    {
        "schema_version",
        "complete",
        "n_samples",
        "n_rejected",
        "expected",
        "shard_id",
        "num_shards",
        "fields",
        "json_attrs",
    }
)
REJECTED_GROUP = "rejected"
REJECTED_COLUMNS = ("index", "path", "code", "message")


def resolve_fields(fields: Iterable[str] | str | None) -> tuple[str, ...]:
    """Required fields plus the selected optional ones, in table order.

    ``fields`` may be None (all optional fields), ``"all"``, a comma-separated string as given to ``--fields``,
    or an iterable of names. Required fields may be listed but are always included. ``"all"`` and None leave out the
    measured fields (lung mask, localisation metrics): the job adds those when it has their inputs.
    """
    if fields is None:
        chosen = set(OPTIONAL_FIELDS)
    else:
        if isinstance(fields, str):
            fields = [f.strip() for f in fields.split(",") if f.strip()]
        chosen = set()
        for name in fields:
            if name == "all":
                chosen |= set(OPTIONAL_FIELDS)
            elif name in FIELDS:
                chosen.add(name)
            else:
                raise StoreError(
                    f"unknown field {name!r}; valid choices: {', '.join(OPTIONAL_FIELDS)} (or 'all'); "
                    f"always written: {', '.join(REQUIRED_FIELDS)}"
                )
    return tuple(f.name for f in _FIELD_LIST if f.required or f.name in chosen)


def per_sample_shapes(fields: Iterable[str], **sizes: int) -> dict[str, tuple[int, ...]]:
    """Concrete per-sample shapes of ``fields`` from the sizes H, W (model input), h, w (feature map),
    Hc, Wc (crop) and C (classes). Only the sizes the fields use are needed."""
    unknown = set(sizes) - set(SIZE_NAMES)
    if unknown:
        raise StoreError(f"unknown size name(s) {sorted(unknown)}; valid: {', '.join(SIZE_NAMES)}")
    out = {}
    for name in fields:
        dims = []
        for d in FIELDS[name].shape:
            if isinstance(d, str):
                if d not in sizes:
                    raise StoreError(f"field {name!r} needs size {d!r}; pass {d}=<int> to per_sample_shapes")
                d = int(sizes[d])
            dims.append(d)
        out[name] = tuple(dims)
    return out


def check_shape(name: str, shape: Iterable[int]) -> tuple[int, ...]:
    """Validate a concrete per-sample shape against the symbolic one of field ``name``."""
    shape = tuple(int(s) for s in shape)
    want = FIELDS[name].shape
    ok = len(shape) == len(want) and all(
        (s > 0) if isinstance(w, str) else (s == w) for s, w in zip(shape, want, strict=False)
    )
    if not ok:
        raise StoreError(f"field {name!r}: per-sample shape {shape} does not match the schema {want}")
    return shape


def encode_attrs(attrs: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """Provenance dict -> (HDF5-storable attrs, names stored as JSON). Fails early on unserialisable values."""
    out: dict[str, Any] = {}
    json_keys: list[str] = []
    for key, value in (attrs or {}).items():
        if not isinstance(key, str) or not key:
            raise StoreError(f"attribute names must be non-empty strings, got {key!r}")
        if key in RESERVED_ATTRS:
            raise StoreError(
                f"attribute {key!r} is reserved by the store; rename it (reserved: {sorted(RESERVED_ATTRS)})"
            )
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, (bool, int, float, str)):
            out[key] = value
            continue
        try:
            out[key] = json.dumps(value, sort_keys=True)
        except TypeError as e:
            raise StoreError(f"attribute {key!r} is not JSON-serialisable ({e}); convert it to str/dict/list") from e
        json_keys.append(key)
    return out, json_keys


def decode_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    """HDF5 attrs -> plain Python values (numpy scalars unwrapped, JSON-encoded provenance decoded)."""
    json_keys = set(json.loads(_py(raw.get("json_attrs", "[]"))))
    out = {}
    for key, value in raw.items():
        if key == "json_attrs":
            continue
        value = _py(value)
        if key in json_keys or key == "fields":
            value = json.loads(value)
        out[key] = value
    return out


def _py(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return [_py(v) for v in value.tolist()]
    return value
