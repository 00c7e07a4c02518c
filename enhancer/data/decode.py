"""The reference decode path (PIL), shared by ``validate(level="full")`` and the torch loader.

Usage::

    from enhancer.data.decode import load_grey
    grey = load_grey("/data/NORMAL/a.jpeg")      # PIL image, mode "L"

Greyscale conversion is PIL's ``convert("L")`` (ITU-R 601 luma for RGB, alpha ignored, palettes and CMYK
expanded) except for 16-bit inputs, which PIL would clip at 255: those are scaled properly, ``round(v / 257)``,
which is also what DALI's decoder does.
"""

from __future__ import annotations

import errno
import os

import numpy as np
from PIL import Image

from enhancer.data.dicom import DicomError, is_dicom_path, load_dicom_grey

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


def load_grey(path: str) -> Image.Image:
    """Decode ``path`` fully into an 8-bit greyscale PIL image (no EXIF rotation, like the seed's ``ImageFolder``).
    DICOM files (``.dcm``) are decoded with pydicom (``enhancer.data.dicom``: window, MONOCHROME1 inversion)."""
    if is_dicom_path(path):
        return load_dicom_grey(path)
    with Image.open(path) as im:
        return to_grey(im)


def classify_decode_error(exc: BaseException, path: str) -> tuple[str, str]:
    """``(code, message)`` for an exception raised while opening or decoding ``path``."""
    if isinstance(exc, FileNotFoundError) or not os.path.lexists(path):
        return "missing", f"file not found: {exc}"
    if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EISDIR)):
        return "unreadable", f"cannot read the file: {exc}"
    if isinstance(exc, Image.DecompressionBombError):
        return "too_large", str(exc)
    if isinstance(exc, DicomError):
        return exc.code, str(exc)
    text = str(exc).strip().splitlines()
    message = " ".join(line.strip() for line in text if line.strip())[:500] or type(exc).__name__
    if "truncated" in message.lower() or "premature end" in message.lower():
        return "truncated", message
    return "decode_error", message
