"""The enhance job's inputs: the images (a folder, a ``path,label`` CSV or a label file's entries), their
validation (each file ends written or rejected with a reason naming it, and its label file's row), the annotated
boxes and the lung segmenter.

Usage::

    from enhancer.enhance.inputs import check_inputs, scan_inputs
    found = scan_inputs(spec)
    ok, rejected = check_inputs(spec, list(found.samples), "cpu", found)
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from enhancer.data import Rejection, Sample, Scan, scan, validate
from enhancer.data.labels import read_labels
from enhancer.data.loader import resolve_loader
from enhancer.explain.localisation import BoxTable, read_boxes
from enhancer.models.lungs import LungModel, LungModelError, load_lung_model
from enhancer.specs import EnhanceSpec, SpecError


def scan_inputs(spec: EnhanceSpec) -> Scan:
    """The job's inputs: the label file's entries (``spec.labels``, images under ``spec.data``), else the folder or
    ``path,label`` CSV ``spec.data``."""
    if spec.labels is None:
        return scan(spec.data)
    return read_labels(
        spec.labels,
        spec.data,
        format=spec.label_format,
        uncertain=spec.uncertain,
        view=spec.view,
        metadata=spec.label_metadata,
    )


def validation_level(spec: EnhanceSpec, samples: Sequence[Sample], device: str) -> str:
    """``spec.validate``, with ``auto`` resolved: ``full`` (every file decoded by PIL first) when DALI or nvJPEG will
    decode, because both can crash the whole process on a corrupt file that PIL refuses cleanly (DALI 2.4: a JPEG
    with a zeroed Huffman table in a batch of 32 or more; found by tests/fuzz); ``header`` when PIL decodes anyway,
    in the torch loader on the CPU, which rejects such files one by one."""
    if spec.validate != "auto":
        return spec.validate
    pil_decodes = resolve_loader(spec.loader, samples) == "torch" and not device.startswith("cuda")
    return "header" if pil_decodes else "full"


def check_inputs(
    spec: EnhanceSpec, samples: Sequence[Sample], device: str, found: Scan, *, stop: threading.Event | None = None
) -> tuple[list[Sample], list[Rejection]]:
    """The shard's samples validated; the label file's own rejections (missing image, bad label, other view) are not
    opened, and every rejection of a label file's entry names its row. ``stop``: as in ``validate``."""
    refused = {r.index: r for r in found.rejected}
    ok, rejected = _validate(spec, [s for s in samples if s.index not in refused], device, stop)
    return ok, [refused[s.index] for s in samples if s.index in refused] + named_rows(rejected, found)


@contextmanager
def checked_in_background(
    spec: EnhanceSpec, samples: Sequence[Sample], device: str, found: Scan
) -> Iterator[Callable[[], tuple[list[Sample], list[Rejection]]]]:
    """``check_inputs`` in a thread of its own while the job loads its model (a full check decodes every file with
    PIL); yields the function that waits for its ``(ok, rejected)``. A job leaving the block early (an error, a
    shard already complete) stops the check at its next file instead of waiting for the whole shard."""
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="check-inputs") as pool:
        checked = pool.submit(check_inputs, spec, samples, device, found, stop=stop)
        try:
            yield checked.result
        finally:
            stop.set()


def named_rows(rejections: Iterable[Rejection], found: Scan | None) -> list[Rejection]:
    """Rejections of a label file's entries with their row in the message (``Data_Entry_2017.csv row 7: ...``)."""
    if found is None or found.label_file is None:
        return list(rejections)
    return [dataclasses.replace(r, message=f"{found.row_of(r.index)}: {r.message}") for r in rejections]


def _validate(
    spec: EnhanceSpec, samples: Sequence[Sample], device: str, stop: threading.Event | None
) -> tuple[list[Sample], list[Rejection]]:
    level = validation_level(spec, samples, device)
    return validate(
        samples,
        level=level,
        workers=max(1, spec.num_threads),
        max_pixels=spec.max_pixels,
        timeout_s=spec.decode_timeout_s or None,
        stop=stop,
    )


def load_lungs(spec: EnhanceSpec) -> LungModel | None:
    """The lung segmenter ``spec.lung_model`` (None without one); a file that is not one is a ``SpecError``."""
    if spec.lung_model is None:
        return None
    try:
        return load_lung_model(spec.lung_model)
    except LungModelError as exc:
        raise SpecError(f"lung_model: {exc}") from None


def load_boxes(spec: EnhanceSpec, found: Scan | None = None) -> BoxTable | None:
    """``spec.boxes``; an RSNA label file gives its boxes too."""
    source = spec.boxes
    if source is None and found is not None and found.label_format == "rsna":
        source = found.label_file
    if source is None:
        return None
    try:
        return read_boxes(source)
    except ValueError as exc:
        raise SpecError(f"boxes: {exc}") from None
