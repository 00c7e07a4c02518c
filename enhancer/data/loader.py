"""``make_loader``: pick the DALI or the torch loader and the device.

Usage::

    from enhancer.data import make_loader
    loader = make_loader(samples, preprocessing, batch_size=64, loader="auto", device="auto")
    print(loader.name, len(loader))   # e.g. "dali-cpu", 3

``loader="auto"`` is DALI when it can be imported and no sample is DICOM (``.dcm``: only the torch loader decodes
it), else torch (``resolve_loader``); ``device="auto"`` is CUDA when available.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from enhancer.data.batch import DTYPES, Loader
from enhancer.data.dali_loader import DaliLoader, dali_available
from enhancer.data.dicom import is_dicom_path
from enhancer.data.errors import DataError
from enhancer.data.scan import Sample
from enhancer.data.torch_loader import TorchLoader
from enhancer.preprocessing import Preprocessing

log = logging.getLogger(__name__)

LOADERS = ("auto", "dali", "torch")
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when CUDA is available, else ``cpu``; ``cuda`` without CUDA is an error."""
    kind = device.split(":")[0]
    if kind not in DEVICES:
        raise DataError(f"unknown device {device!r}; valid: {', '.join(DEVICES)} (or cuda:N)")
    if kind == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise DataError(f"device {device!r} asked for but CUDA is not available; use device='cpu' or 'auto'")
    return device


def resolve_loader(loader: str, samples: Sequence[Sample], dtype: torch.dtype = torch.float32) -> str:
    """``dali`` or ``torch``: what ``make_loader(loader=...)`` builds for ``samples``; errors name the fix."""
    if loader not in LOADERS:
        raise DataError(f"unknown loader {loader!r}; valid: {', '.join(LOADERS)}")
    dicom = [s.path for s in samples if is_dicom_path(s.path)]
    if loader == "auto":
        return "dali" if dali_available() and dtype != torch.bfloat16 and not dicom else "torch"
    if loader == "dali" and dicom:
        more = f" and {len(dicom) - 1} more .dcm file(s)" if len(dicom) > 1 else ""
        raise DataError(
            f"{dicom[0]}{more}: loader 'dali' cannot decode DICOM; use --loader torch (loader = \"torch\" in a job "
            "file) or auto, which picks torch when there is DICOM"
        )
    if loader == "dali" and not dali_available():
        raise DataError("loader='dali' but nvidia-dali cannot be imported; install nvidia-dali-cuda130 or use 'torch'")
    return loader


def make_loader(
    samples: Sequence[Sample],
    preprocessing: Preprocessing,
    *,
    batch_size: int = 64,
    loader: str = "auto",
    device: str = "cpu",
    num_threads: int = 2,
    source_size: int = 512,
    dtype: torch.dtype = torch.float32,
    max_pixels: int | None = None,
    timeout_s: float | None = None,
) -> Loader:
    """A loader over ``samples`` (validated, sharded) yielding ``Batch`` objects; see ``enhancer.data.batch``.

    ``num_threads`` is DALI's CPU thread count or the torch loader's worker count (0 = decode in-process).
    ``max_pixels`` / ``timeout_s``: the torch loader's decoding limits (``enhancer.data.decode``); DALI gets only
    files validated against them.
    """
    if dtype not in DTYPES:
        raise DataError(f"dtype must be one of {DTYPES}, got {dtype}")
    if source_size < 1:
        raise DataError(f"source_size must be >= 1, got {source_size}")
    device = resolve_device(device)
    loader = resolve_loader(loader, samples, dtype)
    limits = {"max_pixels": max_pixels, "timeout_s": timeout_s} if loader == "torch" else {}
    cls = DaliLoader if loader == "dali" else TorchLoader
    made = cls(
        samples,
        preprocessing,
        batch_size=batch_size,
        device=device,
        num_threads=num_threads,
        source_size=source_size,
        dtype=dtype,
        **limits,
    )
    log.info("loader %s: %d samples, batch %d, %d batches", made.name, len(samples), batch_size, len(made))
    return made
