"""MIMIC-CXR-JPG's image list, ``mimic-cxr-2.0.0-metadata.csv(.gz)``: one row per image (``dicom_id``,
``subject_id``, ``study_id``, ``ViewPosition``, ...). The label file (``mimic-cxr-2.0.0-chexpert.csv``) has one row
per study; joined with this list, a study's images are the list's rows for it, each with its view, so that
``--view`` can keep the frontal (PA, AP) or lateral ones. The release keeps both files in one folder, where the job
finds the list by itself when ``--view`` asks for one view.

Usage::

    from enhancer.data.labels.mimic_metadata import metadata_beside, read_metadata
    meta = read_metadata("mimic-cxr-2.0.0-metadata.csv.gz")
    meta.studies[("10000032", "50414267")]   # (MimicImage(dicom_id=..., view="PA"), ...)
    meta.views["02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"]   # "PA"
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from enhancer.data.errors import DataError
from enhancer.data.labels.table import read_rows

METADATA_NAMES = ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv")
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")


@dataclass(frozen=True)
class MimicImage:
    dicom_id: str  # the JPEG's name without .jpg
    view: str  # its ViewPosition cell as written (PA, AP, LATERAL, LL, ... or blank)


@dataclass(frozen=True)
class MimicMetadata:
    """The image list: ``studies`` maps (subject_id, study_id) to the study's images in file order, ``views`` maps
    a dicom_id to its ViewPosition."""

    path: str
    studies: dict[tuple[str, str], tuple[MimicImage, ...]]
    views: dict[str, str]


def read_metadata(path: str | os.PathLike[str]) -> MimicMetadata:
    """The image list ``path``; a file without its columns is a ``DataError`` naming them."""
    path = os.path.abspath(os.fspath(path))
    header, rows = read_rows(path)
    missing = [c for c in METADATA_COLUMNS if c not in header]
    if missing:
        raise DataError(
            f"{path}: not MIMIC-CXR-JPG's image list (mimic-cxr-2.0.0-metadata.csv), the column(s) "
            f"{', '.join(map(repr, missing))} are missing (header: {', '.join(header[:12])}); check --label-metadata"
        )
    studies: dict[tuple[str, str], list[MimicImage]] = {}
    views: dict[str, str] = {}
    for _, row in rows:
        image = MimicImage(row["dicom_id"], row["ViewPosition"])
        studies.setdefault((row["subject_id"], row["study_id"]), []).append(image)
        views[image.dicom_id] = image.view
    return MimicMetadata(path, {k: tuple(v) for k, v in studies.items()}, views)


def metadata_beside(label_file: str) -> str | None:
    """The release's image list in the label file's folder (``METADATA_NAMES``), or None."""
    folder = os.path.dirname(os.path.abspath(label_file))
    for name in METADATA_NAMES:
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    return None
