"""Dataset scanning: an ImageFolder root or a ``path,label`` CSV becomes a deterministic, indexed sample list.

Usage::

    from enhancer.data import scan
    found = scan("/data/chest_xray/val")        # or scan("/data/list.csv")
    found.samples[0]                            # Sample(index=0, path="/data/.../NORMAL/a.jpeg", label=0)

Folder rules (the same as torchvision's ``ImageFolder`` where it matters): every non-hidden sub-directory of the
root is a class, classes are sorted by name and numbered from 0, files are found recursively below each class
and sorted by their path relative to the root. Hidden files and folders (name starting with ``.``) are skipped;
every other file is a sample, whatever its extension, so that nothing in the dataset is ignored silently:
validation decides its fate. Paths are absolute ``str``; names that are not valid UTF-8 keep Python's
``os.fsdecode`` (surrogateescape) form, so ``os.fsencode(sample.path)`` gives back the exact bytes.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from enhancer.data.validate import Rejection

from enhancer.data.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One input file. ``index`` is its position in the scan: stable across runs, loaders and shards."""

    index: int
    path: str
    label: int


@dataclass(frozen=True)
class Scan:
    """The result of a scan: the samples in index order and the class names (``class_names[label]``).

    A label file (``enhancer.data.labels``) adds: ``targets`` (N, C) int8 multi-hot targets of a multi-label file
    (1, 0, -1 = masked; every ``Sample.label`` is then -1), ``rejected``: the entries refused while reading it (each
    is also in ``samples``, with its index), ``rows``: each sample's row in the file, ``label_file``,
    ``label_format`` and ``label_metadata`` (MIMIC-CXR-JPG's image list, when the job joined it)."""

    root: str
    samples: tuple[Sample, ...]
    class_names: tuple[str, ...]
    targets: np.ndarray | None = field(default=None, compare=False)  # arrays have no plain ==
    rejected: tuple[Rejection, ...] = ()
    rows: tuple[int, ...] = ()
    label_file: str | None = None
    label_format: str | None = None  # nih, chexpert, mimic, rsna or csv
    label_metadata: str | None = None  # mimic-cxr-2.0.0-metadata.csv(.gz) joined with a MIMIC label file
    # each sample's patient ("" where the file does not say): NIH Patient ID, CheXpert's patient folder, MIMIC's
    # subject_id; training keeps a patient's images on one side of its validation split
    groups: tuple[str, ...] = ()

    def row_of(self, index: int) -> str:
        """``"Data_Entry_2017.csv row 7"``: where sample ``index`` comes from in the label file ("" for a folder)."""
        if self.label_file is None or not self.rows:
            return ""
        return f"{os.path.basename(self.label_file)} row {self.rows[index]}"

    @property
    def multi_label(self) -> bool:
        return self.targets is not None

    def __len__(self) -> int:
        return len(self.samples)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk_files(class_dir: str) -> list[str]:
    """All non-hidden regular files below ``class_dir`` (symlinked files included, symlinked folders not followed)."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        hidden = [d for d in dirnames if _is_hidden(d)]
        if hidden:
            log.debug("skipping hidden folders %s in %s", hidden, dirpath)
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        found.extend(os.path.join(dirpath, f) for f in filenames if not _is_hidden(f))
    return found


def scan_folder(root: str | os.PathLike[str]) -> Scan:
    """Scan an ImageFolder root (``<root>/<CLASS>/<file>``). Raises ``FileNotFoundError`` / ``ValueError`` when
    the root is missing or has no class folders."""
    root_s = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root_s):
        raise FileNotFoundError(f"dataset root {root_s!r} is not a directory; pass an ImageFolder root or a .csv list")
    classes = sorted(e.name for e in os.scandir(root_s) if e.is_dir() and not _is_hidden(e.name))
    if not classes:
        raise DataError(f"no class folders in {root_s!r}; expected <root>/<CLASS>/<image files>")
    samples: list[Sample] = []
    for label, name in enumerate(classes):
        files = sorted(_walk_files(os.path.join(root_s, name)), key=lambda p: os.path.relpath(p, root_s))
        start = len(samples)
        samples.extend(Sample(start + i, path, label) for i, path in enumerate(files))
    log.info("scanned %s: %d files in %d classes %s", root_s, len(samples), len(classes), classes)
    return Scan(root=root_s, samples=tuple(samples), class_names=tuple(classes))


def scan_csv(csv_path: str | os.PathLike[str]) -> Scan:
    """Scan a CSV file list with a ``path,label`` header. Relative paths resolve against the CSV's folder; labels
    are either all integers (class names become ``"0"``, ``"1"``, ...) or all class names (sorted, numbered from
    0). Rows keep the file's order. Missing files are not an error here: ``validate`` rejects them."""
    csv_s = os.path.abspath(os.fspath(csv_path))
    base = os.path.dirname(csv_s)
    with open(csv_s, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"path", "label"} <= {f.strip() for f in reader.fieldnames}:
            raise DataError(f"{csv_s}: the header must name the columns 'path,label', got {reader.fieldnames}")
        rows = [({k.strip(): (v or "").strip() for k, v in row.items() if k is not None}) for row in reader]
    paths, raw_labels = [], []
    for line, row in enumerate(rows, start=2):
        if not row["path"] or not row["label"]:
            raise DataError(f"{csv_s}:{line}: empty path or label in {row}")
        paths.append(os.path.normpath(os.path.join(base, row["path"])))
        raw_labels.append(row["label"])
    is_int = [lab.lstrip("-").isdigit() for lab in raw_labels]
    if all(is_int):
        labels = [int(lab) for lab in raw_labels]
        if labels and min(labels) < 0:
            raise DataError(f"{csv_s}: integer labels must be >= 0, got {min(labels)}")
        class_names = tuple(str(i) for i in range(max(labels) + 1)) if labels else ()
    elif not any(is_int):
        class_names = tuple(sorted(set(raw_labels)))
        lookup = {name: i for i, name in enumerate(class_names)}
        labels = [lookup[lab] for lab in raw_labels]
    else:
        raise DataError(f"{csv_s}: labels mix integers and class names; use one kind")
    samples = tuple(Sample(i, p, lab) for i, (p, lab) in enumerate(zip(paths, labels, strict=True)))
    log.info("scanned %s: %d files in %d classes", csv_s, len(samples), len(class_names))
    return Scan(root=base, samples=samples, class_names=class_names)


def scan(path: str | os.PathLike[str]) -> Scan:
    """A directory is scanned as an ImageFolder root, a ``*.csv`` file as a file list."""
    p = Path(path)
    if p.is_dir():
        return scan_folder(p)
    if p.suffix.lower() == ".csv":
        return scan_csv(p)
    raise DataError(f"cannot scan {os.fspath(p)!r}: expected an ImageFolder directory or a .csv file list (path,label)")
