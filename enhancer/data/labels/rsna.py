"""RSNA Pneumonia Detection (``stage_2_train_labels.csv``): ``patientId,x,y,width,height,Target``, one row per box
(a patient without opacity has one row with Target 0 and no box). Every patient is one entry, its image
``<patientId>.dcm`` found by name under ``--data``; the class is Target (single-label: ``No Lung Opacity``,
``Lung Opacity``). The same file gives the boxes for the box metrics (``enhancer.explain.localisation.read_boxes``).

Usage::

    from enhancer.data.labels.rsna import read_rsna
    found = read_rsna("stage_2_train_labels.csv", ImageFinder("/data/rsna/stage_2_train_images"))
"""

from __future__ import annotations

from enhancer.data.labels.table import ImageFinder, TableBuilder, read_rows, require_columns
from enhancer.data.scan import Scan

RSNA_CLASSES = ("No Lung Opacity", "Lung Opacity")
RSNA_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")


def read_rsna(path: str, finder: ImageFinder) -> Scan:
    """One entry per patient (the row number of its first row), rejected when its image is missing or its rows'
    Target values are not one of 0 and 1."""
    header, rows = read_rows(path)
    require_columns(path, header, RSNA_COLUMNS, "rsna")
    patients: dict[str, list[tuple[int, str]]] = {}
    for line, row in rows:
        patients.setdefault(row["patientId"], []).append((line, row["Target"]))
    table = TableBuilder(path, RSNA_CLASSES, multi_label=False)
    for patient, entries in patients.items():
        line = entries[0][0]
        name = f"{patient}.dcm"
        found = finder.by_name(name) if patient else []
        where = found[0] if len(found) == 1 else finder.expected(name)
        targets = {t for _, t in entries}
        if not found:
            table.reject(
                line, where, "missing", f"image {name!r} (patientId {patient!r}) not found under {finder.root}"
            )
        elif len(found) > 1:
            table.reject(
                line, where, "ambiguous", f"{len(found)} files named {name!r} under {finder.root}: {found[:3]}"
            )
        elif len(targets) != 1 or not targets <= {"0", "1"}:
            rows_ = ", ".join(str(n) for n, _ in entries)
            table.reject(line, where, "bad_label", f"Target {sorted(targets)} in rows {rows_} (valid: one of 0, 1)")
        else:
            table.add(line, where, label=int(targets.pop()))
    return table.build(finder.root)
