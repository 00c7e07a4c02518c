"""CheXpert and MIMIC-CXR-JPG label files: the 14 observation columns, each 1 (positive), 0 (negative), -1
(uncertain) or blank (not mentioned: 0). ``--uncertain`` turns -1 into 0, 1 or a masked target (``ignore``: out of
the loss and the metrics).

- CheXpert (``train.csv``, ``valid.csv``): ``Path`` is relative to the folder above the release
  (``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``); ``--data`` may be that folder or any folder
  the rest of the path starts from. ``Frontal/Lateral`` gives the view.
- MIMIC-CXR-JPG (``mimic-cxr-2.0.0-chexpert.csv``): one row per study (``subject_id``, ``study_id``); its images
  are the JPEGs of ``files/p<first two digits>/p<subject_id>/s<study_id>/``, and every one of them is an entry of
  that row (a row whose study folder holds none is one rejected entry). With the release's image list
  (``mimic-cxr-2.0.0-metadata.csv(.gz)``, ``--label-metadata``; found beside the label file when ``--view`` asks for
  one view) a study's images are the list's rows for it, each with its ``ViewPosition`` (``mimic_metadata``). A file
  joined with the list beforehand (a ``dicom_id`` column) names one image per row; its ``ViewPosition`` column, or
  the list, gives the view.

Usage::

    from enhancer.data.labels.observations import read_chexpert, read_mimic
    found = read_chexpert("train.csv", ImageFinder("/data"), uncertain="ones", view="frontal")
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable

import numpy as np

from enhancer.data.errors import DataError
from enhancer.data.labels.mimic_metadata import MimicMetadata, metadata_beside, read_metadata
from enhancer.data.labels.table import (
    ImageFinder,
    TableBuilder,
    apply_uncertain,
    cell_value,
    check_view,
    read_rows,
    require_columns,
    view_of,
)
from enhancer.data.scan import Scan

log = logging.getLogger(__name__)

# CheXpert's 14 observations in the column order of its label files (MIMIC-CXR-JPG uses the same names).
OBSERVATIONS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
CHEXPERT_VIEW = "Frontal/Lateral"
MIMIC_VIEW = "ViewPosition"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm")


def observation_targets(row: dict[str, str], uncertain: str) -> tuple[np.ndarray | None, str]:
    """(targets (14,) int8, "") of one row, or (None, the reason) naming the first unreadable cell."""
    values = []
    for name in OBSERVATIONS:
        value = cell_value(row[name])
        if value is None:
            return None, f"unknown label value {row[name]!r} in column {name!r} (valid: 1, 0, -1 or blank)"
        values.append(value)
    return apply_uncertain(np.array(values, np.int8), uncertain), ""


def _view_problem(row: dict[str, str], column: str, view: str) -> str:
    """Why the row's view is not ``view`` ("" when it is, or when no view is asked for)."""
    if view == "all" or view_of(row[column]) == view:
        return ""
    return f"{column} {row[column]!r} is not {view} (--view {view})"


def read_chexpert(path: str, finder: ImageFinder, *, uncertain: str = "ignore", view: str = "all") -> Scan:
    """Every row of a CheXpert label file as a sample or a rejected entry."""
    check_view(view)
    header, rows = read_rows(path)
    require_columns(path, header, ("Path", *OBSERVATIONS), "chexpert")
    if view != "all":
        require_columns(path, header, (CHEXPERT_VIEW,), f"chexpert file with --view {view}: a")
    table = TableBuilder(path, OBSERVATIONS, multi_label=True)

    def of_view(r: dict[str, str]) -> str:
        return _view_problem(r, CHEXPERT_VIEW, view)

    for line, row in rows:
        _add_image(table, finder, line, row["Path"], row, uncertain, of_view, patient=chexpert_patient(row["Path"]))
    return table.build(finder.root)


def chexpert_patient(rel: str) -> str:
    """The patient of a CheXpert image path: its ``patientNNNNN`` folder ("" when the path has none)."""
    return next((p for p in rel.replace("\\", "/").split("/") if p.startswith("patient")), "")


def _add_image(
    table: TableBuilder,
    finder: ImageFinder,
    line: int,
    rel: str,
    row: dict[str, str],
    uncertain: str,
    view_problem: Callable[[dict[str, str]], str],
    *,
    patient: str = "",
) -> None:
    """One image of a row: rejected when missing, with an unreadable cell or of another view; else a sample of
    ``patient``."""
    found = finder.by_relative(rel) if rel else None
    where = found or finder.expected(rel or f"<row {line}>")
    targets, problem = observation_targets(row, uncertain)
    if found is None:
        table.reject(line, where, "missing", f"image {rel!r} not found under {finder.root}")
    elif targets is None:
        table.reject(line, where, "bad_label", problem)
    elif reason := view_problem(row):
        table.reject(line, where, "filtered", reason)
    else:
        table.add(line, where, targets=targets, patient=patient)


def study_folder(subject: str, study: str) -> str:
    """MIMIC-CXR-JPG's folder of a study: ``files/p10/p10000032/s50414267``."""
    return f"files/p{subject[:2]}/p{subject}/s{study}"


def read_mimic(
    path: str, finder: ImageFinder, *, uncertain: str = "ignore", view: str = "all", metadata: str | None = None
) -> Scan:
    """Every image of every row of a MIMIC-CXR-JPG label file as a sample or a rejected entry. ``metadata``: the
    release's image list (``mimic-cxr-2.0.0-metadata.csv(.gz)``), which gives each study's images and their views;
    without one a study's images are the JPEGs in its folder, and ``--view`` takes the list from beside the label
    file when the label file has no ``ViewPosition`` column."""
    check_view(view)
    header, rows = read_rows(path)
    require_columns(path, header, ("subject_id", "study_id", *OBSERVATIONS), "mimic")
    meta = _image_list(path, header, view, metadata)
    table = TableBuilder(path, OBSERVATIONS, multi_label=True)
    per_image = "dicom_id" in header

    def of_view(r: dict[str, str]) -> str:
        return _view_problem(r, MIMIC_VIEW, view)

    def unlisted(r: dict[str, str]) -> str:  # a joined file's image the list lacks: its view is not known
        if view == "all":
            return ""
        name = _name(meta.path) if meta is not None else ""
        return f"dicom_id {r['dicom_id']!r} has no row in {name}: its view is unknown (--view {view})"

    for line, row in rows:
        folder = study_folder(row["subject_id"], row["study_id"])
        if per_image:
            check = of_view
            if meta is not None and MIMIC_VIEW not in header:
                listed_view = meta.views.get(row["dicom_id"])
                check = unlisted if listed_view is None else of_view
                row = row if listed_view is None else {**row, MIMIC_VIEW: listed_view}
            rel = f"{folder}/{row['dicom_id']}.jpg"
            _add_image(table, finder, line, rel, row, uncertain, check, patient=row["subject_id"])
        elif meta is not None:
            listed = meta.studies.get((row["subject_id"], row["study_id"]), ())
            if not listed:
                table.reject(
                    line, finder.expected(folder), "missing", f"study {folder} has no rows in {_name(meta.path)}"
                )
            for image in listed:
                rel, with_view = f"{folder}/{image.dicom_id}.jpg", {**row, MIMIC_VIEW: image.view}
                _add_image(table, finder, line, rel, with_view, uncertain, of_view, patient=row["subject_id"])
        else:
            images = _study_images(finder, folder)
            if not images:
                table.reject(
                    line, finder.expected(folder), "missing", f"no images in study folder {folder} under {finder.root}"
                )
            for image in images:
                _add_image(table, finder, line, image, row, uncertain, lambda r: "", patient=row["subject_id"])
    found = table.build(finder.root)
    return dataclasses.replace(found, label_metadata=meta.path) if meta is not None else found


def _image_list(path: str, header: list[str], view: str, metadata: str | None) -> MimicMetadata | None:
    """The image list to join: ``metadata`` when given; else, when ``view`` asks for one view and the label file
    has no ``ViewPosition`` column, the release's list beside the label file (an error names the fix without one)."""
    if metadata is not None:
        return read_metadata(metadata)
    if view == "all" or MIMIC_VIEW in header:
        return None
    beside = metadata_beside(path)
    if beside is None:
        raise DataError(
            f"{path}: --view {view} needs each image's {MIMIC_VIEW}, which MIMIC-CXR-JPG keeps in its image list: "
            f"pass --label-metadata mimic-cxr-2.0.0-metadata.csv.gz (not found beside the label file), or drop --view"
        )
    log.info("%s: images and views of each study from %s", _name(path), beside)
    return read_metadata(beside)


def _name(path: str) -> str:
    return os.path.basename(path)


def _study_images(finder: ImageFinder, folder: str) -> list[str]:
    found = finder.folder(folder)
    if found is None:
        return []
    return sorted(
        os.path.join(found, n) for n in os.listdir(found) if n.lower().endswith(IMAGE_SUFFIXES) and n[0] != "."
    )
