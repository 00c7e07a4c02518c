"""NIH ChestX-ray14 (``Data_Entry_2017.csv``): ``Image Index`` names the file, ``Finding Labels`` lists its findings
joined by ``|`` (``No Finding``: none of the 14). Images are found by name anywhere under ``--data`` (the release
spreads them over ``images_001/images`` ... ``images_012/images``).

Usage::

    from enhancer.data.labels.nih import read_nih
    found = read_nih("Data_Entry_2017.csv", ImageFinder("/data/nih"), view="frontal")
"""

from __future__ import annotations

import numpy as np

from enhancer.data.labels.table import ImageFinder, TableBuilder, check_view, read_rows, require_columns, view_of
from enhancer.data.scan import Scan

# The 14 findings in the order of the ChestX-ray14 paper and of CheXNet's outputs.
NIH_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
NIH_COLUMNS = ("Image Index", "Finding Labels")
VIEW_COLUMN = "View Position"
PATIENT_COLUMN = "Patient ID"


def nih_targets(text: str) -> tuple[np.ndarray | None, str]:
    """(targets (14,) int8, "") for a ``Finding Labels`` cell, or (None, the reason) when it cannot be read."""
    names = [n.strip() for n in text.split("|") if n.strip()]
    if not names:
        return None, "empty Finding Labels (write 'No Finding' for an image without findings)"
    if NO_FINDING in names:
        if len(names) > 1:
            return None, f"'{NO_FINDING}' together with findings in {text!r}"
        return np.zeros(len(NIH_FINDINGS), np.int8), ""
    unknown = [n for n in names if n not in NIH_FINDINGS]
    if unknown:
        return None, f"unknown finding {unknown[0]!r} in {text!r}; known: {', '.join(NIH_FINDINGS)}, {NO_FINDING}"
    targets = np.zeros(len(NIH_FINDINGS), np.int8)
    targets[[NIH_FINDINGS.index(n) for n in names]] = 1
    return targets, ""


def read_nih(path: str, finder: ImageFinder, *, view: str = "all") -> Scan:
    """Every row of an NIH label file as a sample or a rejected entry (missing or ambiguous image, unknown finding,
    another view than ``view``)."""
    check_view(view)
    header, rows = read_rows(path)
    require_columns(path, header, NIH_COLUMNS, "nih")
    if view != "all":
        require_columns(path, header, (VIEW_COLUMN,), f"nih file with --view {view}: a")
    table = TableBuilder(path, NIH_FINDINGS, multi_label=True)
    for line, row in rows:
        name = row["Image Index"]
        found = finder.by_name(name) if name else []
        where = found[0] if len(found) == 1 else finder.expected(name or f"<row {line}>")
        targets, problem = nih_targets(row["Finding Labels"])
        if not name or not found:
            table.reject(line, where, "missing", f"image {name!r} not found under {finder.root}")
        elif len(found) > 1:
            table.reject(
                line, where, "ambiguous", f"{len(found)} files named {name!r} under {finder.root}: {found[:3]}"
            )
        elif targets is None:
            table.reject(line, where, "bad_label", problem)
        elif view != "all" and view_of(row[VIEW_COLUMN]) != view:
            table.reject(line, where, "filtered", f"{VIEW_COLUMN} {row[VIEW_COLUMN]!r} is not {view} (--view {view})")
        else:
            table.add(line, where, targets=targets, patient=row.get(PATIENT_COLUMN, ""))
    return table.build(finder.root)
