"""A plain multi-label CSV: ``path`` plus one column per class holding 1, 0, -1 (uncertain) or blank (0). Paths are
relative to ``--data`` (or absolute); the class names are the other columns, in file order.

Usage::

    from enhancer.data.labels.columns import read_columns
    found = read_columns("labels.csv", ImageFinder("/data/xrays"), uncertain="zeros")
"""

from __future__ import annotations

import numpy as np

from enhancer.data.errors import DataError
from enhancer.data.labels.table import ImageFinder, TableBuilder, apply_uncertain, cell_value, read_rows
from enhancer.data.scan import Scan


def read_columns(path: str, finder: ImageFinder, *, uncertain: str = "ignore") -> Scan:
    """Every row as a sample or a rejected entry (missing image, a cell that is not 1, 0, -1 or blank)."""
    header, rows = read_rows(path)
    if "path" not in header:
        raise DataError(f"{path}: a csv label file needs a 'path' column and one 0/1 column per class; got {header}")
    classes = tuple(h for h in header if h != "path")
    if not classes or len(set(classes)) != len(classes) or "" in classes:
        raise DataError(f"{path}: the class columns {list(classes)} must be named, distinct and at least one")
    table = TableBuilder(path, classes, multi_label=True)
    for line, row in rows:
        rel = row["path"]
        found = finder.by_relative(rel) if rel else None
        where = found or finder.expected(rel or f"<row {line}>")
        values = [cell_value(row[c]) for c in classes]
        bad = next((c for c, v in zip(classes, values, strict=True) if v is None), None)
        if found is None:
            table.reject(line, where, "missing", f"image {rel!r} not found under {finder.root}")
        elif bad is not None:
            table.reject(
                line,
                where,
                "bad_label",
                f"unknown label value {row[bad]!r} in column {bad!r} (valid: 1, 0, -1 or blank)",
            )
        else:
            table.add(line, where, targets=apply_uncertain(np.array(values, np.int8), uncertain))
    return table.build(finder.root)
