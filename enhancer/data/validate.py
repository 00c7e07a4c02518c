"""Parallel file validation: every sample is either accepted or rejected with a reason code and message.

Usage::

    from enhancer.data import scan, validate
    ok, rejected = validate(scan("/data/val").samples, level="full", workers=2)
    for r in rejected:
        print(r.code, r.path, r.message)

Levels:

- ``header`` (cheap: stat + image header + the file's last bytes): ``missing``, ``unreadable`` (permissions, not
  a regular file), ``empty`` (zero bytes), ``not_image`` (no image signature), ``unsupported`` (an image format or
  pixel mode the decoders do not handle, e.g. GIF or 32-bit float TIFF), ``too_large`` (more than ``max_pixels``
  pixels: decompression-bomb guard), ``truncated`` (a JPEG without its end marker or a PNG without ``IEND``).
- ``full`` additionally decodes every file with PIL: ``truncated`` / ``decode_error``, or ``timeout`` when one
  file takes longer than ``timeout_s`` (``enhancer.data.decode``: the decode stops at its next read); a JPEG must
  also have a strictly valid structure (``enhancer.data.jpeg_structure``), since what libjpeg repairs with a
  warning can crash DALI.

RGB, RGBA, CMYK, palette and 16-bit inputs are accepted: the loaders convert them to 8-bit grey. DICOM files
(``.dcm``) are checked from their header with pydicom (``full``: decoded too); a DICOM file without the suffix is
rejected as ``unsupported`` with the fix (rename it). A file can still fail at decode time after ``header``
validation (corrupt entropy data, bogus Huffman tables): the loaders isolate such files and report them in
``loader.rejected`` without losing their batch-mates.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from enhancer.data.decode import (
    CONVERTIBLE_MODES,
    SIXTEEN_BIT_MODES,
    SUPPORTED_FORMATS,
    classify_decode_error,
    open_image,
    to_grey,
)
from enhancer.data.dicom import check_dicom_header, has_dicom_magic, is_dicom_path, load_dicom_grey
from enhancer.data.errors import DataError
from enhancer.data.jpeg_structure import jpeg_structure_problem
from enhancer.data.scan import Sample

log = logging.getLogger(__name__)

LEVELS = ("header", "full")
REJECTION_CODES = (
    "missing",
    "unreadable",
    "empty",
    "not_image",
    "unsupported",
    "too_large",
    "truncated",
    "decode_error",
    "timeout",
)
DEFAULT_MAX_PIXELS = 10_000 * 10_000  # X-rays are at most ~4k x 4k; PIL itself refuses > ~179 M pixels
_TAIL_BYTES = 4096  # how far from the end an end marker may sit (some writers pad or append metadata)


class ValidationStopped(Exception):
    """``validate`` was asked to stop; its results are incomplete."""


@dataclass(frozen=True)
class Rejection:
    """A sample that will not be loaded: ``code`` is one of ``REJECTION_CODES``, ``message`` says why."""

    index: int
    path: str
    code: str
    message: str

    @classmethod
    def of(cls, sample: Sample, code: str, message: str) -> Rejection:
        return cls(index=sample.index, path=sample.path, code=code, message=message)


def _tail(path: str, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(max(0, size - _TAIL_BYTES))
        return fh.read()


def check_sample(
    sample: Sample, *, level: str = "header", max_pixels: int = DEFAULT_MAX_PIXELS, timeout_s: float | None = None
) -> Rejection | None:
    """Validate one sample; ``None`` when it is accepted. ``timeout_s`` bounds the time it may take (None: no
    limit)."""
    path = sample.path
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        return Rejection.of(sample, "missing", f"file not found: {exc.strerror}")
    except OSError as exc:
        return Rejection.of(sample, "unreadable", f"cannot stat the file: {exc}")
    if not stat.S_ISREG(st.st_mode):
        return Rejection.of(sample, "unreadable", "not a regular file")
    if st.st_size == 0:
        return Rejection.of(sample, "empty", "zero-byte file")
    if is_dicom_path(path):
        return _check_dicom(sample, level, max_pixels)
    try:
        with open_image(path, timeout_s=timeout_s) as im:
            fmt, mode, (width, height) = im.format, im.mode, im.size
            if fmt not in SUPPORTED_FORMATS:
                return Rejection.of(
                    sample, "unsupported", f"image format {fmt} is not supported; valid: {sorted(SUPPORTED_FORMATS)}"
                )
            if mode not in CONVERTIBLE_MODES and mode not in SIXTEEN_BIT_MODES:
                return Rejection.of(sample, "unsupported", f"pixel mode {mode} ({fmt}) cannot be converted to grey")
            if width < 1 or height < 1:
                return Rejection.of(sample, "not_image", f"{fmt} header gives an empty size {width}x{height}")
            if width * height > max_pixels:
                return Rejection.of(
                    sample, "too_large", f"{width}x{height} = {width * height} pixels is over max_pixels={max_pixels}"
                )
            tail = _tail(path, st.st_size)
            if fmt == "JPEG" and b"\xff\xd9" not in tail:
                return Rejection.of(sample, "truncated", "JPEG end-of-image marker missing (file cut short)")
            if fmt == "PNG" and b"IEND" not in tail:
                return Rejection.of(sample, "truncated", "PNG IEND chunk missing (file cut short)")
            if level == "full":
                return _decode_fully(sample, im)
    except UnidentifiedImageError:
        if has_dicom_magic(path):
            return Rejection.of(sample, "unsupported", "a DICOM file without the .dcm suffix; rename it to *.dcm")
        return Rejection.of(sample, "not_image", f"not a recognised image file ({st.st_size} bytes)")
    except Exception as exc:
        code, message = classify_decode_error(exc, path)
        return Rejection.of(sample, code, message)
    return None


def _decode_fully(sample: Sample, im: Image.Image) -> Rejection | None:
    """``full``: decode with PIL, and hold a JPEG to a strict structure (``enhancer.data.jpeg_structure``: what
    libjpeg repairs with a warning can crash DALI). A JPEG decodes scaled by 1/8 (libjpeg's DCT scaling): every
    coefficient of the file is still entropy-decoded, which is where a corrupt file fails, at 60% of the time."""
    if im.format == "JPEG":
        im.draft(None, (1, 1))
    to_grey(im)
    if im.format == "JPEG":
        with open(sample.path, "rb") as fh:
            problem = jpeg_structure_problem(fh.read())
        if problem:
            return Rejection.of(sample, "decode_error", f"corrupt JPEG structure: {problem}")
    return None


def _check_dicom(sample: Sample, level: str, max_pixels: int) -> Rejection | None:
    """DICOM: the header read by pydicom (``stop_before_pixels``); ``full`` also decodes the pixels."""
    problem = check_dicom_header(sample.path, max_pixels=max_pixels)
    if problem:
        return Rejection.of(sample, *problem)
    if level == "full":
        try:
            load_dicom_grey(sample.path, max_pixels=max_pixels)
        except Exception as exc:
            return Rejection.of(sample, *classify_decode_error(exc, sample.path))
    return None


def validate(
    samples: Iterable[Sample],
    *,
    level: str = "header",
    workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    timeout_s: float | None = None,
    stop: threading.Event | None = None,
) -> tuple[list[Sample], list[Rejection]]:
    """Check every sample in parallel threads; returns ``(accepted, rejected)``, both in input order. ``timeout_s``:
    the time one file may take (None: no limit). ``stop``: once set, the files not yet checked are skipped and
    ``ValidationStopped`` is raised (for a check running in the background of a job that ends early).

    ``len(accepted) + len(rejected) == len(samples)`` always holds.
    """
    if level not in LEVELS:
        raise DataError(f"unknown validation level {level!r}; valid: {', '.join(LEVELS)}")
    if workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}")
    samples = list(samples)

    def one(s: Sample) -> Rejection | None:
        if stop is not None and stop.is_set():
            return None
        try:
            return check_sample(s, level=level, max_pixels=max_pixels, timeout_s=timeout_s)
        except Exception as exc:  # a failure no rule foresaw (a parser's own bug): the file is rejected, not the job
            return Rejection.of(s, *classify_decode_error(exc, s.path))

    if workers == 1 or len(samples) < 2:
        results = [one(s) for s in samples]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="validate") as pool:
            results = list(pool.map(one, samples))
    if stop is not None and stop.is_set():
        raise ValidationStopped(f"validation of {len(samples)} files stopped before its end")
    accepted = [s for s, r in zip(samples, results, strict=True) if r is None]
    rejected = [r for r in results if r is not None]
    for r in rejected:
        log.debug("rejected %s: %s (%s)", r.path, r.code, r.message)
    if rejected:
        log.warning(
            "validation (%s) rejected %d of %d files: %s",
            level,
            len(rejected),
            len(samples),
            dict(Counter(r.code for r in rejected)),
        )
    return accepted, rejected
