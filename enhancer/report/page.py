"""The report's files: ``index.html`` (summary, gallery shell, settings), the paged sample data as self-registering
scripts, the rejected rows, and the hand-written ``report.js`` / ``report.css``.

Usage: ``n = write_chunks(data, selected, good, out / "data")``; ``write_index(out, data, selected, n, good, extra)``.

Why scripts and not JSON files: browsers refuse ``fetch()`` of ``file://`` URLs, but load ``<script src>`` from
there. Each ``data/chunk-00003.js`` calls ``ENHANCER_REPORT.chunk(3, {...})``; report.js inserts the script tag
when a page of the gallery needs that chunk, so ``index.html`` stays small whatever the number of samples.
"""

from __future__ import annotations

import json
import shutil
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from enhancer import __version__
from enhancer.atomic import atomic_write
from enhancer.report.collect import RANGE_METRICS, ReportData
from enhancer.report.sections import summary_sections
from enhancer.report.thumbs import CARD_PX, PANELS, PER_FOLDER, panels_for

CHUNK = 500  # samples per data script: ~75 KB with 3 classes
PAGE = 60  # cards per gallery page
STATIC = ("report.js", "report.css")


def _js_call(call: str, *args: Any) -> str:
    body = ", ".join(json.dumps(a, separators=(",", ":"), ensure_ascii=False, allow_nan=False) for a in args)
    return f"window.ENHANCER_REPORT.{call}({body});\n"


def _rounded(values: np.ndarray, digits: int) -> list[Any]:
    """Floats rounded for the page, NaN as null."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(values), np.round(values, digits), None).tolist()


def chunk_records(data: ReportData, positions: np.ndarray, good: np.ndarray) -> dict[str, Any]:
    """Columns of the samples at ``positions`` as the page reads them (see report.js ``ingest``); ``good`` is the
    per-sample "Good" flag of the whole dataset."""
    cols = data.columns
    rec: dict[str, Any] = {
        "pos": positions.tolist(),
        "index": cols["index"][positions].tolist(),
        "label": cols["label"][positions].tolist(),
        "pred": cols["pred"][positions].tolist(),
        "prob": _rounded(cols["prob"][positions], 4),
        "good": good[positions].astype(np.int8).tolist(),
        "path": [str(p) for p in cols["path"][positions].tolist()],
        "orig": cols["orig_size"][positions].tolist(),
        "m": {
            m: (_rounded(cols[m][positions], 6) if m in RANGE_METRICS else cols[m][positions].tolist())
            for m in data.metrics
        },
    }
    if "crop_box" in cols and "crop_box" not in data.per_class:
        rec["box"] = cols["crop_box"][positions].tolist()
    return rec


def write_chunks(data: ReportData, selected: np.ndarray, good: float, data_dir: Path) -> int:
    """Write ``data_dir/chunk-NNNNN.js`` for the selected samples, ``CHUNK`` each; returns how many."""
    data_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    flags = data.good(good)
    for n, start in enumerate(range(0, len(selected), CHUNK), start=1):
        records = chunk_records(data, selected[start : start + CHUNK], flags)
        (data_dir / f"chunk-{n - 1:05d}.js").write_text(_js_call("chunk", n - 1, records), "utf-8")
    return n


def write_rejected(data: ReportData, data_dir: Path) -> None:
    rows = [[r["index"], r["path"], r["code"], r["message"]] for r in data.rejected]
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "rejected.js").write_text(_js_call("rejected", rows), "utf-8")


def page_config(data: ReportData, selected: np.ndarray, n_chunks: int, good: float) -> dict[str, Any]:
    panels = panels_for(data.fields, data.per_class)
    return {
        "classes": data.class_names,
        "n_samples": data.n_written,
        "n_selected": int(len(selected)),
        "n_chunks": n_chunks,
        "chunk_size": CHUNK,
        "page_size": PAGE,
        "per_folder": PER_FOLDER,
        "card_px": CARD_PX,
        "good": good,
        "metrics": list(data.metrics),
        "range_metrics": [m for m in data.metrics if m in RANGE_METRICS],
        "panels": [[p, PANELS[p]] for p in panels],
    }


def _config_script(config: dict[str, Any]) -> str:
    text = json.dumps(config, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/")
    return f'<script id="report-config" type="application/json">{text}</script>'


def render_index(
    data: ReportData, selected: np.ndarray, n_chunks: int, good: float, extra: str = "", explained: str = ""
) -> str:
    """The whole ``index.html``; ``extra`` is appended HTML (cycle and audit sections), ``explained`` the sections
    of a dataset of maps per class."""
    name = escape(data.dataset_dir.name or str(data.dataset_dir))
    summary = summary_sections(data, len(selected), good, explained)
    nav = [("gallery", "Gallery"), ("counts", "Counts"), ("classes", "Classes"), ("confusion", "Confusion")]
    nav += [("probability", "Probabilities"), ("metrics", "Metrics"), ("explained", "Explained classes")]
    nav = [(a, t) for a, t in nav if a == "gallery" or f'<section id="{a}">' in summary]
    nav += [("rejected", f"Rejected ({data.n_rejected})")]
    nav += [(a, t) for a, t in (("cycle", "Cycle"), ("audit", "Audit")) if f'id="{a}"' in extra]
    links = "".join(f'<a href="#{a}">{escape(t)}</a>' for a, t in nav)
    gallery = (
        '<section id="gallery"><h2>Gallery</h2><div id="filters"></div>'
        '<p id="status"><span id="match-count">0</span> of <span id="selected-count"></span> samples match '
        f'<span class="hint">(the gallery holds {len(selected)} of the dataset\'s {data.n_written} samples)</span></p>'
        '<nav id="pager"></nav><div id="cards"></div><noscript>The gallery needs JavaScript.</noscript></section>'
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>enhancer report: {name}</title><link rel="icon" href="data:,">'
        '<link rel="stylesheet" href="report.css"></head><body>'
        f"<header><h1>Enhanced dataset <code>{name}</code></h1><nav>{links}</nav></header><main>"
        f"{gallery}{summary}{extra}</main>"
        f"<footer>Written by enhancer {escape(__version__)}. Charts and thumbnails are computed from the shards; the "
        "heatmaps of a demonstration model say nothing medical.</footer>"
        f"{_config_script(page_config(data, selected, n_chunks, good))}"
        '<script src="report.js"></script></body></html>\n'
    )


def copy_static(out: Path) -> None:
    """Copy report.js and report.css (package data, hand-written) into the report."""
    folder = resources.files("enhancer.report").joinpath("static")
    for name in STATIC:
        with resources.as_file(folder.joinpath(name)) as src:
            shutil.copyfile(src, out / name)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
