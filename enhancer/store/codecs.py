"""Per-field codecs of a shard: how each field's samples are stored, and the encoders and decoders behind them.

Usage::

    from enhancer.store.codecs import parse_codec, resolve_codecs, jpeg_encode, jpeg_decode
    parse_codec("gzip1", "heatmap")                    # Codec(kind='gzip', level=1)
    codecs = resolve_codecs(fields, {"image": "jpeg95"})   # measured defaults + the job's choices
    planes = jpeg_encode(batch["image"], 95)           # one JPEG byte array per sample

Codec names: ``none`` (raw), ``gzip`` / ``gzip1`` ... ``gzip9`` (HDF5's deflate filter: every HDF5 reader decodes
it), ``lzf`` (h5py's own filter: h5py only) and, for the uint8 image planes, ``jpeg`` / ``jpeg1`` ... ``jpeg100``:
JPEG files in a variable-length uint8 dataset, readable as bytes by any HDF5 reader and decoded by any JPEG
decoder. Deflate chunks are compressed here, on the writer's thread pool, and handed to HDF5 as finished chunks:
levels 1-3 with ISA-L (the ``isal`` package: ~0.1-0.2 ms per 224x224 plane, about zlib level 1's ratio), levels
4-9 with zlib (~2 ms per X-ray plane); both release the GIL and write the zlib stream HDF5's filter reads. The
defaults (``DEFAULT_CODECS``) come from benchmarks/store_bench.py: X-ray planes are noise to deflate (1.3-1.8x),
smooth heatmaps shrink ~3x at level 1.
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from enhancer.store.schema import FIELDS, STR, StoreError

try:  # ISA-L's deflate: same stream format as zlib, ~10x faster at levels 1-3
    from isal import isal_zlib
except ImportError:  # a site without the wheel (pyproject pins it) falls back to zlib at the same level
    isal_zlib = None

# Fields a codec can be chosen for: every per-sample array (not the path strings).
CODEC_FIELDS: tuple[str, ...] = tuple(name for name, f in FIELDS.items() if f.dtype != STR)
# uint8 image planes (1, H, W) that may be stored as JPEG (lossy; masks and heatmaps stay lossless).
JPEG_FIELDS: tuple[str, ...] = ("image", "crop", "enhanced")
GZIP_LEVEL = 4  # ``gzip`` without a level
JPEG_QUALITY = 95  # ``jpeg`` without a quality: PSNR >= 40 dB on the sample X-rays
BLANKET_CHOICES = ("auto", "gzip", "lzf", "none")  # ``compression``: one codec for every field without its own
# Chosen from benchmarks/store_bench.py (README "Storage codecs"): raw X-ray planes cost the least CPU and stay
# readable everywhere; the smooth heatmap shrinks ~3x at level 1, and a 0/1 lung mask is long runs of equal bytes.
DEFAULT_CODECS: dict[str, str] = {"heatmap": "gzip1", "lung_mask": "gzip1"}
# HDF5's shuffle filter helps only where bytes of a multi-byte type correlate; measured on the real fields (cam
# float32: 1.36x without, 1.10x with shuffle), it helped none, so deflate runs without it.
SHUFFLE_FIELDS: frozenset[str] = frozenset()
_NAME = re.compile(r"^(none|lzf|gzip|jpeg)([1-9][0-9]*)?$")


@dataclass(frozen=True)
class Codec:
    """How one field is stored: ``kind`` none | gzip | lzf | jpeg, ``level`` the gzip level or JPEG quality."""

    kind: str
    level: int = 0
    shuffle: bool = False

    @property
    def name(self) -> str:
        return f"{self.kind}{self.level}" if self.kind in ("gzip", "jpeg") else self.kind


def codec_choices(field: str) -> str:
    """The codec names ``field`` accepts, for error messages."""
    base = "none, gzip, gzip1..gzip9, lzf"
    return base + (", jpeg, jpeg1..jpeg100" if field in JPEG_FIELDS else "")


def parse_codec(text: str, field: str) -> Codec:
    """``"gzip1"`` for ``field`` -> Codec; errors name the field and list what it accepts."""
    if field not in CODEC_FIELDS:
        raise StoreError(f"no codec for field {field!r}; fields with a codec: {', '.join(CODEC_FIELDS)}")
    m = _NAME.match(str(text))
    kind, digits = (m.group(1), m.group(2) or "") if m else ("", "")
    bad = m is None or (kind in ("none", "lzf") and digits)
    if kind == "gzip" and digits:
        bad = bad or not 1 <= int(digits) <= 9
    if kind == "jpeg":
        bad = bad or field not in JPEG_FIELDS or (digits and not 1 <= int(digits) <= 100)
    if bad:
        raise StoreError(f"codec {text!r} is not valid for field {field!r}; choose one of {codec_choices(field)}")
    if kind == "gzip":
        return Codec("gzip", int(digits or GZIP_LEVEL), shuffle=field in SHUFFLE_FIELDS)
    if kind == "jpeg":
        return Codec("jpeg", int(digits or JPEG_QUALITY))
    return Codec(kind)


def resolve_codecs(
    fields: Iterable[str], codecs: Mapping[str, str] | None = None, compression: str = "auto"
) -> dict[str, Codec]:
    """The codec of every non-string field in ``fields``: ``codecs[field]`` when given, else ``compression`` for
    every field (``auto``: the measured ``DEFAULT_CODECS``, raw for the rest). Entries for fields that are not
    written are an error, so that a typo cannot silently leave a field uncompressed."""
    fields = tuple(fields)
    codecs = dict(codecs or {})
    if compression not in BLANKET_CHOICES:
        raise StoreError(f"unknown compression {compression!r}; valid choices: {', '.join(BLANKET_CHOICES)}")
    unknown = sorted(set(codecs) - set(CODEC_FIELDS))
    if unknown:
        raise StoreError(f"codec given for unknown field(s) {unknown}; fields with a codec: {', '.join(CODEC_FIELDS)}")
    absent = sorted(set(codecs) - set(fields))
    if absent:
        raise StoreError(
            f"codec given for field(s) {absent} that this job does not write (fields: {', '.join(fields)}); "
            "add them to --fields or drop the codec"
        )
    out = {}
    for name in (f for f in fields if f in CODEC_FIELDS):
        text = codecs.get(name) or (DEFAULT_CODECS.get(name, "none") if compression == "auto" else compression)
        out[name] = parse_codec(text, name)
    return out


# -- encoders and decoders -------------------------------------------------------------------------------------


def deflate_chunks(arr: np.ndarray, codec: Codec) -> list[tuple[bytes, bool]]:
    """Each sample of ``arr`` (first axis) as one HDF5 chunk: ``(deflated bytes, True)`` in HDF5's byte layout
    (shuffled first when the codec says so), or ``(raw bytes, False)`` where deflate would not shrink the sample;
    such a chunk is stored with its filters masked off, which every HDF5 reader honours."""
    arr = np.ascontiguousarray(arr)
    size = arr.dtype.itemsize
    out: list[tuple[bytes, bool]] = []
    for sample in arr.reshape(len(arr), -1):
        raw = sample.view(np.uint8)
        if codec.shuffle and size > 1:  # HDF5 shuffle: all first bytes of the elements, then all second bytes, ...
            raw = raw.reshape(-1, size).T
        packed = _deflate(raw.tobytes(), codec.level)
        out.append((packed, True) if len(packed) < sample.nbytes else (sample.tobytes(), False))
    return out


def _deflate(data: bytes, level: int) -> bytes:
    if isal_zlib is not None and level <= isal_zlib.ISAL_BEST_COMPRESSION:
        return isal_zlib.compress(data, level)
    return zlib.compress(data, level)


@dataclass(frozen=True)
class EncodedPlanes:
    """Image planes already encoded as JPEG (e.g. on the GPU, ``enhancer.store.device_jpeg``), ready to store:
    one 1-D uint8 array per sample. ``codec`` must equal the field's codec (``jpeg95``) and ``shape`` its
    per-sample shape (1, H, W), so that a shard never mixes qualities or sizes."""

    codec: str
    shape: tuple[int, ...]
    data: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return len(self.data)

    @classmethod
    def from_flat(cls, flat: np.ndarray, lengths: Sequence[int], codec: str, shape: Sequence[int]) -> EncodedPlanes:
        """Split one concatenated byte buffer (one device-to-host copy for the whole batch) into samples."""
        bounds = np.cumsum([0, *lengths])
        if bounds[-1] != len(flat):
            raise StoreError(f"JPEG lengths add up to {bounds[-1]} bytes but the buffer holds {len(flat)}")
        flat = np.asarray(flat, dtype=np.uint8)
        parts = tuple(flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True))
        return cls(codec, tuple(int(s) for s in shape), parts)


def jpeg_encode(planes: np.ndarray, quality: int) -> list[np.ndarray]:
    """(N, 1, H, W) uint8 planes -> N greyscale JPEG files (Pillow's libjpeg, which releases the GIL)."""
    from PIL import Image

    out = []
    for plane in np.ascontiguousarray(planes).reshape(len(planes), *planes.shape[-2:]):
        buf = io.BytesIO()
        Image.fromarray(plane).save(buf, format="JPEG", quality=quality)
        out.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    return out


def jpeg_decode(data: np.ndarray | bytes, shape: Sequence[int]) -> np.ndarray:
    """One stored JPEG -> uint8 array of ``shape`` (1, H, W). Colour JPEGs (the GPU encoder writes R = G = B)
    are reduced to their luma, which equals the grey value."""
    from PIL import Image

    with Image.open(io.BytesIO(np.asarray(data, dtype=np.uint8).tobytes())) as img:
        if img.format != "JPEG":
            raise StoreError(f"stored bytes are {img.format or 'not an image'}, not JPEG")
        img.draft("L", img.size)  # libjpeg hands over the luma plane directly
        grey = np.asarray(img.convert("L"))
    if grey.size != int(np.prod(shape)):
        raise StoreError(f"JPEG decodes to {grey.shape}, the field's samples are {tuple(shape)}")
    return grey.reshape(tuple(shape))
