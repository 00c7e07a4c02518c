"""MIMIC-CXR-JPG's image list, ``mimic-cxr-2.0.0-metadata.csv(.gz)``: one row per image (``dicom_id``,
``subject_id``, ``study_id``, ``ViewPosition``, ...). The label file (``mimic-cxr-2.0.0-chexpert.csv``) has one row
per study; joined with this list, a study's images are the list's rows for it, each with its view, so that
``--view`` can keep the frontal (PA, AP) or lateral ones. The release keeps both files in one folder, where the job
finds the list by itself when ``--view`` asks for one view.

Usage::

    from enhancer.data.labels.mimic_metadata import metadata_beside, read_metadata
    meta = read_metadata("mimic-cxr-2.0.0-metadata.csv.gz")
    meta.studies[("10000032", "50414267")]   # [MimicImage(dicom_id=..., view="PA"), ...]
    meta.views["02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"]   # "PA"
"""

from __future__ import annotations

import operator
import os
from dataclasses import dataclass
from typing import NamedTuple

from enhancer.data.errors import DataError
from enhancer.data.labels.table import open_csv

METADATA_NAMES = ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv")
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")


class MimicImage(NamedTuple):  # a tuple: the list has ~377,000 of them
    dicom_id: str  # the JPEG's name without .jpg
    view: str  # its ViewPosition cell as written (PA, AP, LATERAL, LL, ... or blank)


@dataclass(frozen=True)
class MimicMetadata:
    """The image list: ``studies`` maps (subject_id, study_id) to the study's images in file order, ``views`` maps
    a dicom_id to its ViewPosition."""

    path: str
    studies: dict[tuple[str, str], list[MimicImage]]
    views: dict[str, str]


def read_metadata(path: str | os.PathLike[str]) -> MimicMetadata:
    """The image list ``path``, read row by row (the release's list has 377,110 rows of 12 columns, of which four
    are kept); a file without those columns is a ``DataError`` naming them."""
    path = os.path.abspath(os.fspath(path))
    studies: dict[tuple[str, str], list[MimicImage]] = {}
    views: dict[str, str] = {}
    with open_csv(path, kind="image list", option="--label-metadata") as (header, reader):
        missing = [c for c in METADATA_COLUMNS if c not in header]
        if missing:
            raise DataError(
                f"{path}: not MIMIC-CXR-JPG's image list (mimic-cxr-2.0.0-metadata.csv), the column(s) "
                f"{', '.join(map(repr, missing))} are missing (header: {', '.join(header[:12])}); "
                "check --label-metadata"
            )
        columns = [header.index(c) for c in METADATA_COLUMNS]
        cells = operator.itemgetter(*columns)
        width = max(columns) + 1
        for values in reader:
            if len(values) < width:
                values += [""] * (width - len(values))
            dicom, subject, study, view = cells(values)
            dicom, subject, study, view = dicom.strip(), subject.strip(), study.strip(), view.strip()
            if dicom:
                studies.setdefault((subject, study), []).append(MimicImage(dicom, view))
                views[dicom] = view
    return MimicMetadata(path, studies, views)


def metadata_beside(label_file: str) -> str | None:
    """The release's image list in the label file's folder (``METADATA_NAMES``), or None."""
    folder = os.path.dirname(os.path.abspath(label_file))
    for name in METADATA_NAMES:
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    return None
