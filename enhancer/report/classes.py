"""The report of a dataset of maps per class (multi-label): one section per explained class, with thumbnails of that
class's maps, its targets and probabilities, its localisation metrics and, with ``--audit``, its audit.

Usage::

    classes = explained_classes(data)                     # [] for a dataset of one map per image
    write_class_thumbnails("enhanced/", classes, "report/")
    html = explained_html(data, classes, audit_classes, audit_images)

Layout: ``<section id="explained">`` holds a table of every explained class (maps, targets, mean probability,
verdict) linking to ``<section id="class-<ID>" class="explained-class" data-class="NAME">``, one per class, whose
thumbnails are ``thumbs/class-<ID>/<POSITION>.jpg`` (the image with that class's map over it). Each class shows its
``THUMBS`` samples with a map of it, positives first, most probable first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from enhancer.report.collect import HIT_METRICS, ReportData
from enhancer.report.external import audit_parts, figures_html, verdict_badge
from enhancer.report.sections import METRIC_BINS, METRIC_TITLES, section, table
from enhancer.report.svg import histogram
from enhancer.report.thumbs import CARD_PX, overlay
from enhancer.store.tables import ColumnReader

THUMBS = 12  # thumbnails per explained class
TARGET_NAMES = {1: "positive", 0: "negative", -1: "uncertain"}


@dataclass(frozen=True)
class ExplainedClass:
    """One explained class: the samples with a map of it (dataset positions, sorted), the slot of that map in each,
    and the positions shown as thumbnails (in display order)."""

    id: int
    name: str
    positions: np.ndarray
    slots: np.ndarray
    shown: np.ndarray

    @property
    def anchor(self) -> str:
        return f"class-{self.id}"

    def thumb(self, position: int) -> str:
        return f"thumbs/{self.anchor}/{position}.jpg"


def _target(data: ReportData, c: int) -> np.ndarray:
    """Per sample: its target for class ``c`` (1 / 0 / -1; single-label: label == c)."""
    if data.multi_label:
        return data.columns["targets"][:, c].astype(np.int64)
    return (data.label == c).astype(np.int64)


def explained_classes(data: ReportData) -> list[ExplainedClass]:
    """The classes with at least one map, in class order ([] for a dataset of one map per image)."""
    if "explained" not in data.columns:
        return []
    explained = data.columns["explained"].astype(np.int64)
    found = []
    for c, name in enumerate(data.class_names):
        hit = explained == c
        positions = np.flatnonzero(hit.any(1))
        if not len(positions):
            continue
        order = np.lexsort((-data.columns["prob"][positions, c], -_target(data, c)[positions]))
        found.append(ExplainedClass(c, name, positions, hit[positions].argmax(1), positions[order][:THUMBS]))
    return found


def write_class_thumbnails(
    dataset_dir: str | os.PathLike[str], classes: list[ExplainedClass], out_dir: str | os.PathLike[str]
) -> int:
    """The card-size overlay of each class's map on its shown samples; returns how many files were written."""
    out_dir, written = Path(out_dir), 0
    with ColumnReader(dataset_dir) as reader:
        if not {"image", "heatmap"} <= set(reader.manifest.fields):
            return 0
        for cls in classes:
            batch = reader.read(("image", "heatmap"), cls.shown)
            slot = cls.slots[np.searchsorted(cls.positions, cls.shown)]
            heat = batch["heatmap"][np.arange(len(cls.shown)), slot]
            rgb = overlay(batch["image"][:, 0], heat)
            (out_dir / "thumbs" / cls.anchor).mkdir(parents=True, exist_ok=True)
            for k, pos in enumerate(cls.shown.tolist()):
                img = Image.fromarray(rgb[k])
                img = img.resize((CARD_PX, round(CARD_PX * img.height / img.width)), Image.Resampling.BILINEAR)
                img.save(out_dir / cls.thumb(pos), "JPEG", quality=80)
                written += 1
    return written


def _class_values(data: ReportData, cls: ExplainedClass, metric: str) -> np.ndarray:
    """The class's value of a per-class metric on each sample with a map of it."""
    return data.columns[metric][cls.positions, cls.slots]


def _metrics_html(data: ReportData, cls: ExplainedClass) -> str:
    rows, charts = [], []
    for name in data.class_metrics:
        values = _class_values(data, cls, name)
        defined = values != -1 if name in HIT_METRICS else np.isfinite(values)
        mean = f"{float(values[defined].astype(np.float64).mean()):.4f}" if defined.any() else "n/a"
        rows.append([escape(name), mean, str(int(defined.sum())), str(int((~defined).sum()))])
        if name not in HIT_METRICS:
            counts = {cls.name: np.histogram(np.clip(values[defined], 0, 1), METRIC_BINS)[0]}
            charts.append(histogram(METRIC_BINS, counts, title=METRIC_TITLES[name], xlabel=name.replace("_", " ")))
    if not rows:
        return ""
    return "<h3>Localisation</h3>" + table(["metric", "mean", "defined", "undefined"], rows) + "".join(charts)


def _thumbs_html(data: ReportData, cls: ExplainedClass) -> str:
    target, prob = _target(data, cls.id), data.columns["prob"][:, cls.id]
    cells = "".join(
        f'<figure class="class-thumb" data-pos="{pos}"><img src="{cls.thumb(pos)}" alt="{escape(str(path))}" '
        f'loading="lazy" width="{CARD_PX}"><figcaption>{escape(Path(str(path)).name)}<br>'
        f"{TARGET_NAMES[int(target[pos])]}, p {prob[pos]:.3f}</figcaption></figure>"
        for pos, path in zip(cls.shown.tolist(), data.columns["path"][cls.shown].tolist(), strict=True)
    )
    return f'<div class="class-thumbs">{cells}</div>'


def _audit_html(part: Any, images: list[str]) -> str:
    """The class's audit: its verdict, figures and PNGs (``figures`` in audit.json are relative to the audit)."""
    if not isinstance(part, dict):
        return ""
    copied = set(images)
    shown = [f"audit/{f}" for f in part.get("figures") or [] if isinstance(f, str) and f"audit/{f}" in copied]
    return f"<h3>Audit {verdict_badge(part.get('verdict'))}</h3>" + "".join(audit_parts(part)) + figures_html(shown)


def _summary_row(data: ReportData, cls: ExplainedClass, audit: dict[str, Any]) -> list[str]:
    target = _target(data, cls.id)[cls.positions]
    mean = float(data.columns["prob"][cls.positions, cls.id].astype(np.float64).mean())
    part = audit.get(cls.name)
    verdict = verdict_badge(part.get("verdict")) if isinstance(part, dict) else ""
    counts = [str(int((target == t).sum())) for t in (1, 0, -1)]
    return [f'<a href="#{cls.anchor}">{escape(cls.name)}</a>', str(len(cls.positions)), *counts, f"{mean:.4f}", verdict]


def explained_html(
    data: ReportData, classes: list[ExplainedClass], audit: dict[str, Any] | None = None, images: list[str] = ()
) -> str:
    """The overview of the explained classes and one section per class ("" for a dataset of one map per image).
    ``audit``: the ``classes`` of a per-class audit.json; ``images``: the audit's PNGs as copied into the report."""
    if not classes:
        return ""
    audit = audit if isinstance(audit, dict) else {}
    head = ["class", "maps", "positive", "negative", "uncertain", "mean probability", "audit"]
    rows = [_summary_row(data, cls, audit) for cls in classes]
    note = f"<p>{len(classes)} explained class(es); each has a section with the maps of that class.</p>"
    parts = [section("explained", "Explained classes", note + table(head, rows, cls="explained-classes"))]
    for cls in classes:
        body = (
            f"<p>{len(cls.positions)} sample(s) have a map of {escape(cls.name)}; {len(cls.shown)} shown, positives "
            "first, most probable first.</p>"
            + _thumbs_html(data, cls)
            + _metrics_html(data, cls)
            + _audit_html(audit.get(cls.name), list(images))
        )
        parts.append(
            f'<section id="{cls.anchor}" class="explained-class" data-class="{escape(cls.name)}">'
            f"<h2>{escape(cls.name)}</h2>{body}</section>"
        )
    return "".join(parts)
