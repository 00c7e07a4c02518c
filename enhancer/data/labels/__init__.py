"""Label files of the public chest X-ray datasets, images found under ``--data``: every row becomes a sample or a
rejected entry that names its row and the reason.

Usage::

    from enhancer.data.labels import read_labels
    found = read_labels("Data_Entry_2017.csv", "/data/nih", format="nih")          # or format="auto"
    found.samples, found.class_names, found.targets                                 # targets (N, 14) int8
    found.rejected                                                                  # missing image, bad label, ...

Formats (``LABEL_FORMATS``; ``auto`` picks one from the header):

- ``nih``: ChestX-ray14's ``Data_Entry_2017.csv`` (``enhancer.data.labels.nih``);
- ``chexpert`` / ``mimic``: the 14 observation columns with 1 / 0 / -1 / blank (``.observations``; MIMIC's image
  list, ``mimic-cxr-2.0.0-metadata.csv``, joined by ``.mimic_metadata``);
- ``rsna``: ``stage_2_train_labels.csv``, one entry per patient, single-label (``.rsna``);
- ``csv``: ``path`` plus one 0/1 column per class (``.columns``).

Multi-label targets are 1 (positive), 0 (negative) or -1 (masked: uncertain with ``uncertain="ignore"``), one
column per class. Entries: one per row, except MIMIC (one per image of the row's study) and RSNA (one per patient,
whose rows are its boxes). Every entry has a sample index; the job writes it or rejects it, so entries = written +
rejected. Files ending in ``.gz`` are read as gzip (MIMIC-CXR-JPG ships its label files so).
"""

from __future__ import annotations

import dataclasses
import os

from enhancer.data.errors import DataError
from enhancer.data.labels.columns import read_columns
from enhancer.data.labels.nih import NIH_COLUMNS, NIH_FINDINGS, read_nih
from enhancer.data.labels.observations import OBSERVATIONS, read_chexpert, read_mimic
from enhancer.data.labels.rsna import RSNA_CLASSES, RSNA_COLUMNS, read_rsna
from enhancer.data.labels.table import (
    LABEL_REJECTION_CODES,
    MASKED,
    UNCERTAIN_POLICIES,
    VIEWS,
    ImageFinder,
    check_view,
    read_rows,
)
from enhancer.data.scan import Scan

LABEL_FORMATS = ("auto", "nih", "chexpert", "mimic", "rsna", "csv")

__all__ = [
    "LABEL_FORMATS",
    "LABEL_REJECTION_CODES",
    "MASKED",
    "NIH_FINDINGS",
    "OBSERVATIONS",
    "RSNA_CLASSES",
    "UNCERTAIN_POLICIES",
    "VIEWS",
    "detect_format",
    "read_labels",
]


def detect_format(path: str) -> str:
    """The format a label file's header says: nih, chexpert, mimic, rsna or csv; an error names the header."""
    header, _ = read_rows(path, header_only=True)
    columns = set(header)
    if set(NIH_COLUMNS) <= columns:
        return "nih"
    if set(RSNA_COLUMNS) <= columns:
        return "rsna"
    if set(OBSERVATIONS) <= columns and "Path" in columns:
        return "chexpert"
    if set(OBSERVATIONS) <= columns and {"subject_id", "study_id"} <= columns:
        return "mimic"
    if "path" in columns:
        return "csv"
    raise DataError(
        f"{path}: cannot tell the label format from its header ({', '.join(header[:10])}); pass --format "
        f"({', '.join(LABEL_FORMATS[1:])})"
    )


def read_labels(
    path: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    format: str = "auto",
    uncertain: str = "ignore",
    view: str = "all",
    metadata: str | os.PathLike[str] | None = None,
) -> Scan:
    """The entries of label file ``path`` with their images under ``data`` (see the module docstring).
    ``metadata``: MIMIC-CXR-JPG's image list joined with a ``mimic`` file (``observations.read_mimic``)."""
    path = os.path.abspath(os.fspath(path))
    if format not in LABEL_FORMATS:
        raise DataError(f"label format {format!r} is not known; choose one of {', '.join(LABEL_FORMATS)}")
    if uncertain not in UNCERTAIN_POLICIES:
        raise DataError(f"uncertain = {uncertain!r} is not valid; choose one of {', '.join(UNCERTAIN_POLICIES)}")
    check_view(view)
    fmt = detect_format(path) if format == "auto" else format
    finder = ImageFinder(data)
    if fmt in ("rsna", "csv") and view != "all":
        raise DataError(f"{path}: --view {view} needs a view column, which {fmt} label files lack; drop --view")
    if metadata is not None and fmt != "mimic":
        raise DataError(
            f"{path}: --label-metadata joins MIMIC-CXR-JPG's image list with a mimic label file, not a {fmt} one; "
            "drop --label-metadata"
        )
    if fmt == "nih":
        found = read_nih(path, finder, view=view)
    elif fmt == "chexpert":
        found = read_chexpert(path, finder, uncertain=uncertain, view=view)
    elif fmt == "mimic":
        found = read_mimic(
            path, finder, uncertain=uncertain, view=view, metadata=os.fspath(metadata) if metadata else None
        )
    elif fmt == "rsna":
        found = read_rsna(path, finder)
    else:
        found = read_columns(path, finder, uncertain=uncertain)
    return dataclasses.replace(found, label_format=fmt)
