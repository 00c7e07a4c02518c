"""``enhancer report``: a static HTML report of an enhanced dataset that works from ``file://`` with no network.

Usage::

    enhancer report enhanced/ --out report/ [--cycle cycles/c1] [--audit audit/] [--limit 1000]
    write_report("enhanced/", "report/", limit=1000)          # the same from Python; open report/index.html

A dataset of maps per class (multi-label, ``enhance --explain``) gets a section per explained class: thumbnails of
that class's maps, its targets, localisation metrics and audit (``enhancer.report.classes``); the gallery shows the
union of each image's maps.

The report folder holds ``index.html`` (summary charts as inline SVG, the gallery's shell and settings),
``report.js`` / ``report.css``, ``data/`` (sample records in pages of 500, the rejected rows), ``thumbs/`` (a strip
and a card image per gallery sample), ``rejected.csv`` and, with ``--audit``, the audit's PNGs under ``audit/``.
It can be zipped, mailed or published as a static page. The summary covers every sample; the gallery holds the
samples ``--limit`` selects (``enhancer.report.select``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from enhancer.report.classes import explained_classes, explained_html, write_class_thumbnails
from enhancer.report.collect import collect
from enhancer.report.errors import ReportError
from enhancer.report.external import audit_html, copy_audit_images, cycle_html, load_audit, load_cycle
from enhancer.report.page import STATIC, copy_static, render_index, write_chunks, write_rejected, write_text_atomic
from enhancer.report.select import select_samples
from enhancer.report.thumbs import write_thumbnails
from enhancer.store.layout import REJECTED

MARKER = ".enhancer-report"
# What a report folder holds; a rerun replaces exactly these.
GENERATED = ("index.html", REJECTED, "data", "thumbs", "audit", *STATIC)


@dataclass(frozen=True)
class ReportResult:
    out: Path
    n_samples: int
    n_selected: int
    n_thumbnails: int
    index_bytes: int

    def line(self) -> str:
        return (
            f"wrote {self.out / 'index.html'} ({self.index_bytes / 1024:.0f} KiB): {self.n_samples} samples "
            f"summarised, {self.n_selected} in the gallery, {self.n_thumbnails} with thumbnails"
        )


def prepare_out_dir(out: Path, dataset_dir: Path) -> None:
    """Create ``out``, or clear a previous report there; refuse a folder holding anything else."""
    if out.resolve() == dataset_dir.resolve() or dataset_dir.resolve() in out.resolve().parents:
        raise ReportError(f"--out {out} is inside the dataset {dataset_dir}; write the report outside it")
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ReportError(f"--out {out} holds other files and no earlier report; choose an empty or new directory")
        for name in GENERATED:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by enhancer report; a rerun replaces this folder's report files\n", "utf-8")


def write_report(
    dataset_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    audit: str | os.PathLike[str] | None = None,
    cycle: str | os.PathLike[str] | None = None,
    limit: int = 1000,
    good: float = 0.85,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> ReportResult:
    """Write the report of ``dataset_dir`` into ``out``; ``limit`` <= 0 puts every sample in the gallery."""
    if not 0.0 <= good <= 1.0:
        raise ReportError(f"--good {good} is not a probability; give a value in [0, 1] such as 0.85")
    dataset_dir, out = Path(dataset_dir), Path(out)
    data = collect(dataset_dir, progress=progress)
    rounds = load_cycle(cycle) if cycle is not None else None  # read before writing anything: fail early
    audit_doc = load_audit(audit) if audit is not None else None
    prepare_out_dir(out, dataset_dir)
    selected = select_samples(data.label, data.pred, limit, seed)
    n_chunks = write_chunks(data, selected, good, out / "data")
    write_rejected(data, out / "data")
    shutil.copyfile(dataset_dir / REJECTED, out / REJECTED)
    n_thumbs = write_thumbnails(dataset_dir, selected, out, workers=workers, progress=progress)
    classes = explained_classes(data)
    write_class_thumbnails(dataset_dir, classes, out)
    extra = cycle_html(rounds) if rounds is not None else ""
    images = copy_audit_images(audit, out) if audit is not None else []
    if audit_doc is not None:
        extra += audit_html(audit_doc, images)
    explained = explained_html(data, classes, (audit_doc or {}).get("classes"), images)
    copy_static(out)
    html = render_index(data, selected, n_chunks, good, extra, explained)
    write_text_atomic(out / "index.html", html)  # last: its presence means the report is complete
    return ReportResult(out, data.n_written, len(selected), n_thumbs, len(html.encode("utf-8")))
