"""Hostile inputs derived from the real sample X-rays: a seeded, reproducible ImageFolder of mutated files.

Usage::

    from tests.fuzz.mutants import make_fuzz_dataset
    plan = make_fuzz_dataset(kermany_dir, tmp_path / "fuzz", n=1000, seed=0)
    plan.entries["NORMAL/00017-bitflip.jpeg"]      # Entry(kind="bitflip", must=None, base="NORMAL2-IM-...")

Every file is made from the bytes or the pixels of one of the 16 samples: truncated at a random offset, bits
flipped, a block zeroed, headers swapped between JPEG / PNG / DICOM, dimensions in the header blown up (a
50,000 x 50,000 PNG among them), re-encoded as 16-bit, CMYK, palette or RGBA images, EXIF-rotated, or written as
DICOM. The fixed extras are the cases no random draw makes: zero-byte files, symlink loops (a file loop and a
folder loop), a dangling link, an unreadable file (mode 000), names that are not UTF-8, and the files earlier runs
found: two JPEGs that crashed DALI (a zeroed Huffman table, a flipped table marker) and a DICOM file whose broken
value representation made pydicom raise where no one caught it.

``Entry.must`` is what the job has to do with the file: ``"written"``, a rejection code, or None where either
outcome is right (a flipped bit may or may not break a JPEG). Most files derive from the samples scaled down 8x
(decoding a full 1,500 x 1,200 X-ray costs ~20 ms, and a thousand of them would not fit a fast test); one in
twenty from the full-size file.
"""

from __future__ import annotations

import io
import os
import random
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SMALL = 8  # the scaled-down bases: 1/8 of the original side
FULL_SIZE_SHARE = 0.05
HUGE_SIDE = 50_000  # the decompression bomb: 50,000 x 50,000 = 2.5 G pixels (2.5 GB as 8-bit grey)
NON_UTF8 = b"r\xe9sultat-\xff"  # latin-1 bytes, not decodable as UTF-8

# kind -> relative weight of the random draws
WEIGHTS: dict[str, int] = {
    "truncate": 14,
    "bitflip": 14,
    "zeroblock": 10,
    "swap_header": 8,
    "huge_dims": 6,
    "grey16": 5,
    "cmyk": 5,
    "palette": 5,
    "rgba": 3,
    "exif_rotate": 5,
    "clean": 6,
    "dicom": 5,
    "dicom_mutant": 6,
    "dicom_huge": 2,
    "png_named_jpeg": 2,
}


@dataclass(frozen=True)
class Entry:
    """One file of the fuzz set: how it was made and what the job must do with it (None: written or rejected)."""

    kind: str
    must: str | None
    base: str


@dataclass
class Plan:
    """The fuzz set: ``entries`` by path relative to the root (``os.fsdecode`` form for non-UTF-8 names)."""

    root: Path
    seed: int
    n: int  # random mutants (the fixed extras come on top)
    entries: dict[str, Entry] = field(default_factory=dict)

    @property
    def has_dicom(self) -> bool:
        return any(rel.lower().endswith(".dcm") for rel in self.entries)


@dataclass(frozen=True)
class _Base:
    name: str
    label: str
    jpeg: bytes  # the original file
    small: np.ndarray  # (h, w) uint8, scaled down SMALL times
    small_jpeg: bytes


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def load_bases(samples: Path) -> list[_Base]:
    bases = []
    for path in sorted(samples.glob("*/*.jpeg")):
        with Image.open(path) as im:
            grey = im.convert("L")
            small = grey.resize((max(8, grey.width // SMALL), max(8, grey.height // SMALL)), Image.BILINEAR)
        arr = np.asarray(small)
        bases.append(_Base(path.name, path.parent.name, path.read_bytes(), arr, _encode(small, "JPEG", quality=90)))
    if len(bases) != 16:
        raise RuntimeError(f"expected the 16 sample X-rays in {samples}, found {len(bases)}")
    return bases


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    im = Image.fromarray(arr)
    return _encode(im.convert(mode) if mode else im, "PNG")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png_header(width: int = HUGE_SIDE, height: int = HUGE_SIDE, *, idat: bytes = b"") -> bytes:
    """A PNG declaring ``width`` x ``height`` 8-bit grey pixels with a valid header CRC (and a tiny IDAT)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = idat or zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def _jpeg_with_dims(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOFn) declaring ``width`` x ``height``, found by walking the marker segments
    (a byte pair FF C0 can also occur inside a table)."""
    out = bytearray(data)
    i = 2
    while i + 9 <= len(out) and out[i] == 0xFF:
        marker = out[i + 1]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            out[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(out)
        i += 2 + struct.unpack(">H", out[i + 2 : i + 4])[0]
    raise ValueError("no frame header found in the JPEG")


def zeroed_huffman_jpeg(data: bytes) -> bytes:
    """The JPEG with its AC Huffman table's symbols and what follows zeroed (534 bytes): PIL refuses it ("cannot load
    this image"), DALI 2.4's CPU decoder crashes the process on it (SIGSEGV) in a batch of 32 or more. Found by this
    fuzz; the reason the enhance job decodes every file with PIL before DALI sees it (``validate = auto``)."""
    out = bytearray(data)
    at = out.find(b"\xff\xc4\x00\xb5\x10")  # DHT, 181 bytes, class 1 (AC) table 0: libjpeg's standard table
    if at < 0:
        raise ValueError("no standard AC Huffman table in the JPEG")
    out[at + 31 : at + 31 + 534] = bytes(534)
    return bytes(out)


def flipped_dht_marker_jpeg(data: bytes) -> bytes:
    """The JPEG with one bit of its AC Huffman table's marker flipped (FF C4 -> 7F C4): libjpeg skips the table as
    junk and decodes with the standard one, DALI 2.4 crashed on it (found by this fuzz, seed 20260302)."""
    out = bytearray(data)
    out[out.find(b"\xff\xc4\x00\xb5\x10")] = 0x7F
    return bytes(out)


def write_dicom_bytes(pixels: np.ndarray, *, rows: int | None = None, columns: int | None = None) -> bytes:
    """A 16-bit MONOCHROME2 DICOM file of ``pixels`` (12 bits stored); ``rows``/``columns`` override the header."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = rows or pixels.shape[0], columns or pixels.shape[1]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (pixels.astype(np.uint16) * 16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 12)):
        at = rng.randrange(len(out))
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def _zero_block(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    length = rng.randint(1, max(1, len(out) // 4))
    at = rng.randrange(len(out))
    out[at : at + length] = bytes(len(out[at : at + length]))
    return bytes(out)


def _swap_header(base: _Base, rng: random.Random) -> tuple[bytes, str]:
    """Bytes of one format behind another's signature, or under another format's name."""
    jpeg, png = base.small_jpeg, _png(base.small)
    choice = rng.randrange(5)
    if choice == 0:
        return b"\x89PNG\r\n\x1a\n" + jpeg[2:], "png"  # a JPEG body behind a PNG signature
    if choice == 1:
        return b"\xff\xd8\xff\xe0" + png[8:], "jpeg"  # a PNG body behind a JPEG start-of-image
    if choice == 2:
        return bytes(128) + b"DICM" + jpeg, "dcm"  # a DICOM preamble on a JPEG
    if choice == 3:
        return jpeg, "dcm"  # a JPEG named as DICOM
    return write_dicom_bytes(base.small), "jpeg"  # a DICOM named as JPEG


def _mutant(kind: str, base: _Base, rng: random.Random) -> tuple[bytes, str, str | None]:
    """(bytes, file suffix, what the job must do) of one random mutant."""
    full = rng.random() < FULL_SIZE_SHARE
    jpeg = base.jpeg if full else base.small_jpeg
    if kind == "truncate":
        data = jpeg if rng.random() < 0.6 else _png(base.small)
        return data[: rng.randrange(len(data))], "jpeg" if data[:2] == b"\xff\xd8" else "png", None
    if kind == "bitflip":
        return _flip_bits(jpeg if rng.random() < 0.7 else _png(base.small), rng), "jpeg", None
    if kind == "zeroblock":
        return _zero_block(jpeg, rng), "jpeg", None
    if kind == "swap_header":
        data, suffix = _swap_header(base, rng)
        return data, suffix, None
    if kind == "huge_dims":
        side = rng.choice((HUGE_SIDE, 20_000, 65_000))
        if rng.random() < 0.5:
            return huge_png_header(side, rng.choice((side, 30_000))), "png", "too_large"
        return _jpeg_with_dims(jpeg, side, side), "jpeg", "too_large"
    if kind == "grey16":
        return _png(base.small.astype(np.uint16) * 257), "png", "written"
    if kind == "cmyk":
        return _encode(Image.fromarray(base.small).convert("CMYK"), "JPEG", quality=90), "jpeg", "written"
    if kind == "palette":
        return _png(np.stack([base.small] * 3, axis=-1), "P"), "png", "written"
    if kind == "rgba":
        return _png(np.dstack([base.small] * 3 + [np.full_like(base.small, 255)])), "png", "written"
    if kind == "exif_rotate":
        exif = Image.Exif()
        exif[0x0112] = rng.choice((3, 6, 8))  # orientation: 180, 90 CW, 90 CCW
        return _encode(Image.fromarray(base.small), "JPEG", quality=90, exif=exif.tobytes()), "jpeg", "written"
    if kind == "clean":
        return jpeg, "jpeg", "written"
    if kind == "dicom":
        return write_dicom_bytes(base.small), "dcm", "written"
    if kind == "dicom_mutant":
        data = write_dicom_bytes(base.small)
        mutate = rng.choice((_flip_bits, _zero_block, lambda d, r: d[: r.randrange(len(d))]))
        return mutate(data, rng), "dcm", None
    if kind == "dicom_huge":
        return write_dicom_bytes(base.small, rows=HUGE_SIDE, columns=HUGE_SIDE), "dcm", "too_large"
    if kind == "png_named_jpeg":
        return _png(base.small), "jpeg", "written"
    raise ValueError(f"unknown mutant kind {kind!r}")


def _write(root: Path, rel: str | bytes, data: bytes) -> None:
    path = os.path.join(os.fsencode(root), os.fsencode(rel))
    with open(path, "wb") as fh:
        fh.write(data)


def _extras(root: Path, bases: list[_Base], plan: Plan, dicom: bool) -> None:
    """The cases a random draw does not make: empty files, link loops, unreadable files, non-UTF-8 names."""
    b = bases[0]
    cls = root / b.label

    def add(rel: str, kind: str, must: str | None) -> None:
        plan.entries[rel] = Entry(kind, must, b.name)

    for k in range(3):
        (cls / f"zz-empty-{k}.jpeg").write_bytes(b"")
        add(f"{b.label}/zz-empty-{k}.jpeg", "zero_byte", "empty")
    os.symlink("zz-loop-b.jpeg", cls / "zz-loop-a.jpeg")
    os.symlink("zz-loop-a.jpeg", cls / "zz-loop-b.jpeg")
    os.symlink("zz-loop-self.jpeg", cls / "zz-loop-self.jpeg")
    for name in ("zz-loop-a.jpeg", "zz-loop-b.jpeg", "zz-loop-self.jpeg"):
        add(f"{b.label}/{name}", "symlink_loop", "unreadable")
    os.symlink("missing-target.jpeg", cls / "zz-dangling.jpeg")
    add(f"{b.label}/zz-dangling.jpeg", "dangling_link", "missing")
    (cls / "zz-folder-loop").mkdir()
    os.symlink("..", cls / "zz-folder-loop" / "up")  # a folder loop: the scan must not follow it
    (cls / "zz-unreadable.jpeg").write_bytes(b.small_jpeg)
    os.chmod(cls / "zz-unreadable.jpeg", 0)
    # root reads a mode-000 file: written there, rejected as unreadable for anybody else
    add(f"{b.label}/zz-unreadable.jpeg", "unreadable", "written" if os.geteuid() == 0 else "unreadable")
    (cls / "zz-bomb.png").write_bytes(huge_png_header())
    add(f"{b.label}/zz-bomb.png", "huge_dims", "too_large")
    (cls / "zz-zeroed-huffman.jpeg").write_bytes(zeroed_huffman_jpeg(b.small_jpeg))
    add(f"{b.label}/zz-zeroed-huffman.jpeg", "zeroed_huffman", "decode_error")
    (cls / "zz-flipped-dht-marker.jpeg").write_bytes(flipped_dht_marker_jpeg(b.small_jpeg))
    # libjpeg repairs it: written after header validation (the torch set), refused by full validation (the DALI set)
    add(f"{b.label}/zz-flipped-dht-marker.jpeg", "flipped_dht_marker", None if dicom else "decode_error")
    if dicom:
        rows_vr = write_dicom_bytes(b.small).replace(b"\x28\x00\x10\x00US", b"\x28\x00\x10\x00U[", 1)
        (cls / "zz-bad-vr.dcm").write_bytes(rows_vr)  # pydicom raised NotImplementedError reading Rows
        add(f"{b.label}/zz-bad-vr.dcm", "bad_value_representation", "not_image")
    for k, data in enumerate((b.small_jpeg, _png(b.small))):
        rel = os.fsencode(f"{b.label}/zz-") + NON_UTF8 + f"-{k}.{'jpeg' if k == 0 else 'png'}".encode()
        _write(root, rel, data)
        add(os.fsdecode(rel), "non_utf8_name", "written")


def make_fuzz_dataset(samples: Path, root: Path, *, n: int, seed: int, dicom: bool = True) -> Plan:
    """Write ``n`` random mutants plus the fixed extras into ``root`` (ImageFolder: the samples' classes).

    ``dicom=False`` leaves out the DICOM kinds (a dataset the DALI loader takes whole)."""
    bases = load_bases(samples)
    rng = random.Random(seed)
    kinds = [k for k in WEIGHTS if dicom or "dicom" not in k]
    weights = [WEIGHTS[k] for k in kinds]
    plan = Plan(root, seed, n)
    for label in sorted({b.label for b in bases}):
        (root / label).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        kind = rng.choices(kinds, weights)[0]
        base = rng.choice(bases)
        data, suffix, must = _mutant(kind, base, rng)
        if not dicom and suffix == "dcm":
            suffix = "jpeg"  # a swapped header drew DICOM: keep it out of the DALI set under an image name
            must = None
        rel = f"{base.label}/{i:05d}-{kind}.{suffix}"
        _write(root, rel, data)
        plan.entries[rel] = Entry(kind, must, base.name)
    _extras(root, bases, plan, dicom)
    return plan
