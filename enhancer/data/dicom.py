"""DICOM input (RSNA pneumonia images are DICOM): header checks and decoding to 8-bit grey with pydicom.

Usage::

    from enhancer.data.dicom import is_dicom_path, check_dicom_header, load_dicom_grey
    if is_dicom_path(path):
        problem = check_dicom_header(path)      # None or (code, message), from the header alone
        grey = load_dicom_grey(path)            # PIL "L" image

Decoding: pixel data -> modality LUT (RescaleSlope / RescaleIntercept) -> the file's first WindowCenter /
WindowWidth, linear as DICOM PS3.3 C.11.2.1.2 defines it (values below the window 0, above 255), or the image's
min-max range when the file has no window -> MONOCHROME1 inverted (0 is white there) -> uint8. VOI LUT sequences and
non-linear VOI LUT functions are not applied (the linear window is). Multi-frame files are refused (a radiograph
is one frame); colour files are converted with ITU-R 601 luma. A DICOM file is recognised by its ``.dcm`` /
``.dicom`` suffix: only the torch loader decodes it (``make_loader(loader="auto")`` picks it).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

DICOM_SUFFIXES = (".dcm", ".dicom")
_MAGIC_OFFSET = 128
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "PALETTE COLOR")


class DicomError(ValueError):
    """A DICOM file that cannot become an 8-bit grey image; ``code`` is a rejection code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def is_dicom_path(path: str) -> bool:
    """Whether ``path`` names a DICOM file (by its suffix, case-insensitive)."""
    return os.fspath(path).lower().endswith(DICOM_SUFFIXES)


def has_dicom_magic(path: str) -> bool:
    """Whether the file carries the DICOM Part 10 preamble ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(_MAGIC_OFFSET)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise DicomError("unsupported", "DICOM input needs pydicom: pip install pydicom") from None
    return pydicom


def _header_problem(ds, max_pixels: int) -> DicomError | None:
    """A reason to refuse the dataset from its header (before pixels), or None."""
    missing = [k for k in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation") if k not in ds]
    if missing:
        return DicomError("not_image", f"DICOM without image attributes {missing} (not an image, e.g. a report)")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows < 1 or cols < 1:
        return DicomError("not_image", f"DICOM header gives an empty size {cols}x{rows}")
    if rows * cols > max_pixels:
        return DicomError("too_large", f"{cols}x{rows} = {rows * cols} pixels is over max_pixels={max_pixels}")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        return DicomError("unsupported", f"multi-frame DICOM ({frames} frames); export the radiograph's frame alone")
    photometric = str(ds.PhotometricInterpretation)
    if photometric not in MONOCHROME + COLOUR:
        return DicomError("unsupported", f"DICOM PhotometricInterpretation {photometric} cannot be converted to grey")
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is not None:
        from pydicom.pixels import get_decoder

        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            return DicomError("unsupported", f"DICOM transfer syntax {uid.name} ({uid}) has no pixel decoder")
        if not decoder.is_available:
            return DicomError(
                "unsupported",
                f"DICOM transfer syntax {uid.name} needs a decoder plugin: {'; '.join(decoder.missing_dependencies)}",
            )
    return None


def check_dicom_header(path: str, *, max_pixels: int) -> tuple[str, str] | None:
    """``(code, message)`` when the file's header shows it cannot be decoded to grey, else None (cheap: no pixels)."""
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        problem = _header_problem(ds, max_pixels)  # inside: pydicom parses an element when it is first read
    except Exception as exc:
        return "not_image", f"not a readable DICOM file ({str(exc).strip()[:300] or type(exc).__name__})"
    return (problem.code, str(problem)) if problem else None


def window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear VOI window to [0, 1] (PS3.3 C.11.2.1.2.1): x <= c - 0.5 - (w - 1) / 2 -> 0,
    x > c - 0.5 + (w - 1) / 2 -> 1, else ((x - (c - 0.5)) / (w - 1) + 0.5)."""
    if width < 1:
        raise DicomError("decode_error", f"DICOM WindowWidth {width} must be >= 1")
    if width == 1:  # the standard's special case: a threshold at c - 0.5
        return (values > center - 0.5).astype(np.float32)
    y = (values - (center - 0.5)) / (width - 1) + 0.5
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def _first(value) -> float:
    """First value of a possibly multi-valued DICOM number."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def to_grey8(ds, pixels: np.ndarray) -> np.ndarray:
    """Decoded pixel data of ``ds`` -> (H, W) uint8 grey: modality LUT, window (or min-max), MONOCHROME1 inversion."""
    photometric = str(ds.PhotometricInterpretation)
    a = np.asarray(pixels)
    if photometric in COLOUR:
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            a = apply_color_lut(a, ds)
        # pydicom's pixel_array already converts YBR colour spaces to RGB
        if a.ndim != 3 or a.shape[-1] != 3:
            raise DicomError("unsupported", f"colour DICOM with pixel array shape {a.shape}")
        a = a.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    a = a.astype(np.float64)
    if a.ndim != 2:
        raise DicomError("unsupported", f"DICOM pixel array of shape {a.shape} is not one grey frame")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    a = a * slope + intercept
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None and photometric in MONOCHROME:
        y = window(a, _first(center), _first(width))
    else:
        low, high = float(a.min()), float(a.max())
        y = (a - low) / (high - low) if high > low else np.zeros_like(a)
    if photometric == "MONOCHROME1":
        y = 1.0 - y
    return np.clip(np.rint(y * 255), 0, 255).astype(np.uint8)


def load_dicom_grey(path: str, *, max_pixels: int | None = None) -> Image.Image:
    """Decode the DICOM file at ``path`` to an 8-bit grey PIL image; raises ``DicomError`` (with a rejection code)
    or the reading error."""
    pydicom = _pydicom()
    # Elements over 64 KB (the pixel data) are read only when used: a header declaring a huge image is refused
    # before its pixels are read.
    ds = pydicom.dcmread(path, defer_size=65536)
    problem = _header_problem(ds, max_pixels or 10_000 * 10_000)
    if problem:
        raise problem
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomError("not_image", "DICOM file without pixel data")
    return Image.fromarray(to_grey8(ds, ds.pixel_array), "L")
