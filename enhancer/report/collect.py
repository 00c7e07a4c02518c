"""What a report shows about a dataset, read once from the shards: per-sample scalars, counts, rejected rows.

Usage: ``data = collect("enhanced/")``; ``data.correct``, ``data.confidence``, ``data.good(0.85)``.

Only the small per-sample fields are read here (labels, predictions, probabilities, paths, boxes, metrics): a few
bytes per sample, so 100,000 samples fit easily in memory. Images are read later, only for the samples that get
thumbnails (``enhancer.report.thumbs``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from enhancer.store.schema import METRIC_FIELDS
from enhancer.store.tables import ColumnReader, read_rejected

SCALARS = ("index", "label", "pred", "prob", "path", "orig_size")
OPTIONAL_SCALARS = ("crop_box", *METRIC_FIELDS)
CLASS_COLUMNS = ("explained", "targets")  # a dataset of maps per class: the class of each map, multi-hot targets
# Metrics that are fractions in [0, 1] (NaN: undefined) and can be filtered by range; the *_hit ones are 1/0/-1.
RANGE_METRICS = tuple(m for m in METRIC_FIELDS if not m.endswith("_hit"))
HIT_METRICS = tuple(m for m in METRIC_FIELDS if m.endswith("_hit"))


@dataclass(frozen=True)
class ReportData:
    """Per-sample columns (manifest order) and dataset-level facts of one enhanced dataset."""

    dataset_dir: Path
    class_names: list[str]
    n_in: int
    n_written: int
    n_rejected: int
    fields: tuple[str, ...]
    columns: dict[str, np.ndarray]
    rejected: list[dict[str, Any]]
    provenance: dict[str, Any]
    per_class: tuple[str, ...] = ()  # fields stored with a slot axis (sample, slot, ...): one map per class

    @property
    def multi_label(self) -> bool:
        """Multi-hot targets instead of one label per sample (the labels are -1)."""
        return "targets" in self.columns

    @property
    def label(self) -> np.ndarray:
        return self.columns["label"].astype(np.int64)

    @property
    def pred(self) -> np.ndarray:
        return self.columns["pred"].astype(np.int64)

    @property
    def correct(self) -> np.ndarray:
        return self.label == self.pred

    @property
    def confidence(self) -> np.ndarray:
        """Probability of the predicted class, per sample."""
        prob = self.columns["prob"]
        return prob[np.arange(len(prob)), self.pred] if len(prob) else np.zeros(0, np.float32)

    def good(self, threshold: float) -> np.ndarray:
        """The research figures' "Good": the prediction is right with probability at or above ``threshold``."""
        return self.correct & (self.confidence >= threshold)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The localisation metric fields this dataset has, one value per sample (per-class ones are shown in the
        sections of the explained classes)."""
        return tuple(m for m in METRIC_FIELDS if m in self.columns and m not in self.per_class)

    @property
    def class_metrics(self) -> tuple[str, ...]:
        """The localisation metric fields stored per (sample, explained class)."""
        return tuple(m for m in METRIC_FIELDS if m in self.columns and m in self.per_class)


def collect(dataset_dir: str | os.PathLike[str], *, progress: bool = False) -> ReportData:
    """Read the per-sample scalars, the counts and the rejected rows of a merged dataset (``progress``: a tqdm bar
    over the fields; with one HDF5 chunk per sample this is the slow part of a report on a large dataset)."""
    with ColumnReader(dataset_dir) as reader:
        m = reader.manifest
        wanted = SCALARS + tuple(f for f in (*OPTIONAL_SCALARS, *CLASS_COLUMNS) if f in m.fields)
        columns = {}
        for name in tqdm(wanted, desc=f"reading {m.n_written} samples", unit="field", disable=not progress):
            columns.update(reader.read((name,)))
    n_classes = columns["prob"].shape[1] if columns["prob"].ndim == 2 else 0
    names = list(m.class_names) if m.class_names else [str(k) for k in range(n_classes)]
    keep = ("architecture", "checkpoint", "checkpoint_sha256", "target_layer", "package_version", "code_revision")
    prov = {k: m.provenance[k] for k in keep if k in m.provenance}
    if "checkpoint" in prov:
        prov["checkpoint"] = Path(str(prov["checkpoint"])).name  # a report may be published: no host paths
    prov["created"] = m.created
    return ReportData(
        dataset_dir=Path(dataset_dir),
        class_names=names,
        n_in=m.n_in,
        n_written=m.n_written,
        n_rejected=m.n_rejected,
        fields=tuple(m.fields),
        columns=columns,
        rejected=read_rejected(dataset_dir),
        provenance=prov,
        per_class=tuple(n for n, info in m.fields.items() if info.get("per_class")),
    )
