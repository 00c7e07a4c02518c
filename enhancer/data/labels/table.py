"""The pieces every label-file format shares: finding images under ``--data``, reading one cell, and the table of
entries (each one a sample to load, or a row rejected with its row number and the reason).

Usage::

    from enhancer.data.labels.table import ImageFinder, TableBuilder
    finder = ImageFinder("/data/nih")                     # images found by file name or by relative path
    table = TableBuilder("Data_Entry_2017.csv", ("Atelectasis", ...), multi_label=True)
    table.add(line=2, path=finder.by_name("00000001_000.png"), targets=[0, 1, ...])
    table.reject(line=3, path="/data/nih/00000002_000.png", code="missing", reason="image not found under /data/nih")
    found = table.build(root="/data/nih")                 # a Scan with targets, rows and the rejected entries

Row numbers are the file's line numbers (the header is row 1, the first data row is row 2), as an editor or a
spreadsheet shows them.
"""

from __future__ import annotations

import csv
import gzip
import os
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from enhancer.data.errors import DataError
from enhancer.data.scan import Sample, Scan
from enhancer.data.validate import Rejection

# Codes of the entries a label file rejects before any image is opened (``missing``: the validation's own code).
LABEL_REJECTION_CODES = ("missing", "ambiguous", "bad_label", "duplicate", "filtered")
UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")  # ignore: masked out of the loss and the metrics
MASKED = -1  # a target that counts nowhere (uncertain with ``ignore``)
VIEWS = ("all", "frontal", "lateral")
_FRONTAL = {"frontal", "pa", "ap", "ap axial", "pa lld", "ap lld", "ap rld", "pa rld"}
_LATERAL = {"lateral", "ll", "rl", "lao", "rao", "lpo", "xtable lateral"}


@contextmanager
def open_csv(
    path: str, *, kind: str = "label file", option: str = "--labels"
) -> Iterator[tuple[list[str], Iterator[list[str]]]]:
    """(header, a ``csv.reader`` over the other rows) of a CSV file, gzip-compressed when its name ends in ``.gz``
    (MIMIC-CXR-JPG ships its files so); errors name the file, as a ``kind`` given by ``option``."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise DataError(f"{path}: the {kind} is empty (no header row)")
            yield header, reader
    except FileNotFoundError:
        raise DataError(f"{path}: no such {kind}; pass {option} FILE") from None
    except (csv.Error, UnicodeError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable CSV {kind} ({exc})") from None


def read_rows(path: str, *, header_only: bool = False) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(header, rows as (line number, {column: stripped text})) of a CSV label file (``open_csv``)."""
    with open_csv(path) as (header, reader):
        rows = [] if header_only else [(reader.line_num, v) for v in reader if any(c.strip() for c in v)]
    cells = [(line, {h: (v[i].strip() if i < len(v) else "") for i, h in enumerate(header)}) for line, v in rows]
    return header, cells


def require_columns(path: str, header: Sequence[str], needed: Sequence[str], fmt: str) -> None:
    missing = [c for c in needed if c not in header]
    if missing:
        raise DataError(
            f"{path}: not a {fmt} label file, the column(s) {', '.join(map(repr, missing))} are missing (header: "
            f"{', '.join(header[:12])}); check --format"
        )


def cell_value(text: str) -> int | None:
    """One observation cell: 1 positive, 0 negative (blank too), -1 uncertain; None for anything else."""
    if text == "":
        return 0
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value in (1.0, 0.0, -1.0) else None


def apply_uncertain(values: np.ndarray, policy: str) -> np.ndarray:
    """Targets (C,) int8 from cell values in {1, 0, -1}: -1 (uncertain) becomes 0, 1 or ``MASKED`` (ignore)."""
    if policy not in UNCERTAIN_POLICIES:
        raise DataError(f"uncertain = {policy!r} is not valid; choose one of {', '.join(UNCERTAIN_POLICIES)}")
    replacement = {"ignore": MASKED, "zeros": 0, "ones": 1}[policy]
    return np.where(values == -1, replacement, values).astype(np.int8)


def view_of(text: str) -> str | None:
    """``frontal`` / ``lateral`` from a view cell (CheXpert ``Frontal/Lateral``, NIH ``View Position``, MIMIC
    ``ViewPosition``: PA, AP, LATERAL, LL, ...); None when the cell names neither."""
    key = text.strip().lower()
    if key in _FRONTAL:
        return "frontal"
    if key in _LATERAL:
        return "lateral"
    return None


def check_view(view: str) -> None:
    if view not in VIEWS:
        raise DataError(f"view = {view!r} is not valid; choose one of {', '.join(VIEWS)}")


class ImageFinder:
    """Images under a root folder, found by file name anywhere below it (NIH, RSNA) or by a relative path (CheXpert,
    MIMIC, csv), which may start above the root: ``CheXpert-v1.0-small/train/...`` is found with the root at
    ``CheXpert-v1.0-small`` or above it."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))
        if not os.path.isdir(self.root):
            raise DataError(f"{self.root}: no such image folder; --data must be the folder holding the images")
        self._names: dict[str, list[str]] | None = None

    def names(self) -> dict[str, list[str]]:
        """File name -> every path with that name below the root (one walk, on first use; hidden entries skipped)."""
        if self._names is None:
            found: dict[str, list[str]] = {}
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in filenames:
                    if not name.startswith("."):
                        found.setdefault(name, []).append(os.path.join(dirpath, name))
            self._names = found
        return self._names

    def by_name(self, name: str) -> list[str]:
        """Every file called ``name`` below the root (empty: not found; two or more: ambiguous)."""
        return sorted(self.names().get(name, []))

    def by_relative(self, rel: str) -> str | None:
        """The file at ``rel`` (absolute, or relative to the root or to one of its ancestors' layouts), or None."""
        if os.path.isabs(rel):
            return rel if os.path.isfile(rel) else None
        parts = [p for p in rel.replace("\\", "/").split("/") if p and p != "."]
        for start in range(len(parts)):
            candidate = os.path.join(self.root, *parts[start:])
            if os.path.isfile(candidate):
                return candidate
        return None

    def folder(self, rel: str) -> str | None:
        """The folder at ``rel`` (relative, leading components optional as in ``by_relative``), or None."""
        parts = [p for p in rel.split("/") if p]
        for start in range(len(parts)):
            candidate = os.path.join(self.root, *parts[start:])
            if os.path.isdir(candidate):
                return candidate
        return None

    def expected(self, rel: str) -> str:
        """Where ``rel`` was looked for first (the path a rejection names)."""
        return rel if os.path.isabs(rel) else os.path.normpath(os.path.join(self.root, rel))


@dataclass
class TableBuilder:
    """Collects a label file's entries in file order; ``build`` makes the ``Scan`` the jobs read.

    Each entry gets the next sample index, whether it is a sample or rejected: the indices of a label file cover
    every entry, so ``n_entries = n_written + n_rejected`` holds after the job as for a folder."""

    source: str  # the label file
    class_names: tuple[str, ...]
    multi_label: bool
    samples: list[Sample] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    _seen: dict[str, int] = field(default_factory=dict)

    def where(self, line: int) -> str:
        return f"{os.path.basename(self.source)} row {line}"

    def add(
        self, line: int, path: str, *, targets: np.ndarray | None = None, label: int = -1, patient: str = ""
    ) -> None:
        """A sample: its image and its targets (C,) int8 (multi-label) or its class ``label`` (single-label), and its
        ``patient`` where the file names one. An image listed a second time is rejected as ``duplicate``, naming the
        first row."""
        first = self._seen.get(path)
        if first is not None:
            self.reject(line, path, "duplicate", f"image {path} is listed again (first in row {first})")
            return
        self._seen[path] = line
        self._entry(line, Sample(len(self.samples), path, label if not self.multi_label else -1), targets, patient)

    def reject(self, line: int, path: str, code: str, reason: str) -> None:
        """An entry that will not be loaded: ``code`` from ``LABEL_REJECTION_CODES``, the reason in words."""
        assert code in LABEL_REJECTION_CODES, code
        sample = Sample(len(self.samples), path, -1)
        self._entry(line, sample, None)
        self.rejected.append(Rejection.of(sample, code, f"{self.where(line)}: {reason}"))

    def _entry(self, line: int, sample: Sample, targets: np.ndarray | None, patient: str = "") -> None:
        self.samples.append(sample)
        self.rows.append(line)
        self.groups.append(patient)
        if self.multi_label:
            masked = np.full(len(self.class_names), MASKED, np.int8)
            self.targets.append(masked if targets is None else np.asarray(targets, np.int8))

    def build(self, root: str) -> Scan:
        """The entries as a ``Scan``: every entry a sample (rejected ones listed in ``rejected``)."""
        c = len(self.class_names)
        targets = np.stack(self.targets) if self.targets else np.zeros((0, c), np.int8)
        return Scan(
            root=root,
            samples=tuple(self.samples),
            class_names=self.class_names,
            targets=targets if self.multi_label else None,
            rejected=tuple(self.rejected),
            rows=tuple(self.rows),
            label_file=self.source,
            groups=tuple(self.groups) if any(self.groups) else (),
        )
