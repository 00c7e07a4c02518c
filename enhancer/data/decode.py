"""The reference decode path (PIL), shared by ``validate(level="full")`` and the torch loader.

Usage::

    from enhancer.data.decode import load_grey
    grey = load_grey("/data/NORMAL/a.jpeg")      # PIL image, mode "L"
    grey = load_grey(path, max_pixels=50_000_000, timeout_s=30)   # DecodeRefused: too_large / timeout

Greyscale conversion is PIL's ``convert("L")`` (ITU-R 601 luma for RGB, alpha ignored, palettes and CMYK
expanded) except for 16-bit inputs, which PIL would clip at 255: those are scaled properly, ``round(v / 257)``,
which is also what DALI's decoder does.

Limits, so that no input can exhaust the memory or stall the job: ``max_pixels`` refuses an image from the size in
its header, before any pixel is allocated (a 50,000 x 50,000 PNG is a few hundred bytes; decoded it would be 2.5 GB);
PIL's own guard refuses more than ~179 M pixels whatever the limit. ``timeout_s`` bounds the time one file may take:
PIL reads the file block by block while it decodes (64 KB at a time), and a read after the deadline fails, so the
decode stops within one block of it. DICOM files are checked against the deadline between reading and decoding.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import numpy as np
from PIL import Image

from enhancer.data.dicom import DicomError, is_dicom_path, load_dicom_grey


class DecodeRefused(Exception):
    """A file refused by a decoding limit; ``code`` is the rejection code (``too_large``, ``timeout``).

    Not an OSError or ValueError: PIL's plugins catch some of those while they probe a file, and a refusal must
    reach the caller."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Deadline:
    """The end of the time one file may take (``timeout_s`` 0 or None: no limit)."""

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s or 0.0
        self.end = time.monotonic() + self.timeout_s if self.timeout_s else None

    def check(self) -> None:
        if self.end is not None and time.monotonic() > self.end:
            raise DecodeRefused(
                "timeout", f"decoding took longer than the {self.timeout_s:g} s limit (decode_timeout_s)"
            )


class _TimedFile:
    """A binary file whose reads fail once the deadline has passed (see the module docstring)."""

    def __init__(self, raw: IO[bytes], deadline: Deadline) -> None:
        self._raw, self._deadline = raw, deadline

    def read(self, size: int = -1) -> bytes:
        self._deadline.check()
        return self._raw.read(size)

    def readline(self, size: int = -1) -> bytes:
        self._deadline.check()
        return self._raw.readline(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def check_pixels(width: int, height: int, max_pixels: int | None, what: str = "image") -> None:
    """Refuse (``too_large``) an image of more than ``max_pixels`` pixels; None: no limit."""
    if max_pixels is not None and width * height > max_pixels:
        raise DecodeRefused(
            "too_large", f"{what} {width}x{height} = {width * height} pixels is over max_pixels={max_pixels}"
        )


@contextmanager
def open_image(path: str, *, max_pixels: int | None = None, timeout_s: float | None = None) -> Iterator[Image.Image]:
    """``Image.open`` under the limits: the size is checked from the header, every read against the deadline."""
    deadline = Deadline(timeout_s)
    with open(path, "rb") as raw, Image.open(_TimedFile(raw, deadline)) as im:  # type: ignore[arg-type]
        check_pixels(im.width, im.height, max_pixels, f"{im.format} image")
        yield im


# Modes that are converted to 8-bit grey. 16-bit greyscale PNG / TIFF open as "I;16*" (older Pillow: "I").
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
CONVERTIBLE_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
# Formats DALI's ``decoders.image`` and PIL both decode; everything else PIL recognises is "unsupported".
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "TIFF", "PPM", "WEBP"})


def to_grey(im: Image.Image) -> Image.Image:
    """An 8-bit greyscale ("L") version of ``im`` (decodes it if it was only opened)."""
    if im.mode in SIXTEEN_BIT_MODES:
        a = np.asarray(im, dtype=np.float32)
        return Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8), "L")
    if im.mode == "L":
        im.load()
        return im
    return im.convert("L")


def load_grey(path: str, *, max_pixels: int | None = None, timeout_s: float | None = None) -> Image.Image:
    """Decode ``path`` fully into an 8-bit greyscale PIL image (no EXIF rotation, like the seed's ``ImageFolder``),
    within the limits (see the module docstring). DICOM files (``.dcm``) are decoded with pydicom
    (``enhancer.data.dicom``: window, MONOCHROME1 inversion)."""
    if is_dicom_path(path):
        deadline = Deadline(timeout_s)
        grey = load_dicom_grey(path, max_pixels=max_pixels)
        deadline.check()
        return grey
    with open_image(path, max_pixels=max_pixels, timeout_s=timeout_s) as im:
        return to_grey(im)


def classify_decode_error(exc: BaseException, path: str) -> tuple[str, str]:
    """``(code, message)`` for an exception raised while opening or decoding ``path``."""
    if isinstance(exc, FileNotFoundError) or not os.path.lexists(path):
        return "missing", f"file not found: {exc}"
    if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EISDIR)):
        return "unreadable", f"cannot read the file: {exc}"
    if isinstance(exc, Image.DecompressionBombError):
        return "too_large", str(exc)
    if isinstance(exc, DicomError | DecodeRefused):
        return exc.code, str(exc)
    text = str(exc).strip().splitlines()
    message = " ".join(line.strip() for line in text if line.strip())[:500] or type(exc).__name__
    if "truncated" in message.lower() or "premature end" in message.lower():
        return "truncated", message
    return "decode_error", message
