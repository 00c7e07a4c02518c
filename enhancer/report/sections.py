"""The summary of a dataset as HTML sections: counts, class balance, confusion matrix, probabilities, metrics.

Usage: ``html = summary_sections(collect("enhanced/"), n_selected=1000, good=0.85)``.

Everything here is computed over all samples of the dataset (the gallery may show a selection).
"""

from __future__ import annotations

from html import escape

import numpy as np

from enhancer.report.collect import HIT_METRICS, ReportData
from enhancer.report.svg import bar_chart, histogram, matrix_chart
from enhancer.store.layout import REJECTED

PROB_BINS = np.linspace(0.0, 1.0, 21)
METRIC_BINS = np.linspace(0.0, 1.0, 21)
METRIC_TITLES = {
    "lung_energy": "lung energy (share of the map inside the lungs)",
    "box_energy": "box energy (share of the map inside the annotated boxes)",
    "box_iou": "box IoU (thresholded map's box vs annotated boxes)",
    "lung_hit": "lung hit (map maximum inside the lungs)",
    "box_hit": "box hit (map maximum inside an annotated box)",
}


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{body}</section>'


def table(head: list[str], rows: list[list[str]], *, cls: str = "") -> str:
    """An HTML table; cells are given as HTML (escape text before)."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def confusion(data: ReportData) -> np.ndarray:
    """(C, C) counts, rows true class, columns predicted class."""
    c = len(data.class_names)
    return np.bincount(data.label * c + data.pred, minlength=c * c).reshape(c, c)


def counts_html(data: ReportData, n_selected: int) -> str:
    codes = {}
    for row in data.rejected:
        codes[row["code"]] = codes.get(row["code"], 0) + 1
    rows = [
        ["inputs", str(data.n_in)],
        ["written", str(data.n_written)],
        ["rejected", f'<a href="#rejected">{data.n_rejected}</a>'],
        *(
            []
            if data.multi_label  # no single label to be right about: the explained classes' section has the targets
            else [
                ["correct predictions", str(int(data.correct.sum()))],
                ["wrong predictions", str(int((~data.correct).sum()))],
            ]
        ),
        ["in the gallery", str(n_selected)],
    ]
    rows += [[f"rejected: {escape(code)}", str(n)] for code, n in sorted(codes.items())]
    prov = [[escape(k.replace("_", " ")), escape(str(v))] for k, v in data.provenance.items()]
    return section("counts", "Counts", table(["", "samples"], rows, cls="counts") + table(["made by", ""], prov))


def rejected_html(data: ReportData) -> str:
    """The table is filled by report.js from data/rejected.js (so a long list does not weigh on index.html)."""
    body = (
        f'<p><span id="rejected-count">{data.n_rejected}</span> input file(s) were not written, each with its '
        f'reason (<a href="{REJECTED}">{REJECTED}</a>).</p>'
        '<table id="rejected-table"><thead><tr><th>index</th><th>path</th><th>code</th><th>message</th></tr></thead>'
        '<tbody></tbody></table><button type="button" id="rejected-more" hidden>show all</button>'
    )
    return section("rejected", "Rejected inputs", body)


def classes_html(data: ReportData) -> str:
    c = len(data.class_names)
    true = np.bincount(data.label, minlength=c)
    pred = np.bincount(data.pred, minlength=c)
    chart = bar_chart(data.class_names, {"true": true.tolist(), "predicted": pred.tolist()}, title="Class balance")
    rows = [[escape(n), str(t), str(p)] for n, t, p in zip(data.class_names, true.tolist(), pred.tolist(), strict=True)]
    return section("classes", "Class balance", chart + table(["class", "true", "predicted"], rows))


def confusion_html(data: ReportData) -> str:
    chart = matrix_chart(confusion(data), data.class_names, data.class_names, title="Confusion matrix")
    return section("confusion", "Confusion matrix", chart)


def probability_html(data: ReportData, good: float) -> str:
    conf = data.confidence
    ok = data.correct
    counts = {
        "correct": np.histogram(conf[ok], PROB_BINS)[0],
        "wrong": np.histogram(conf[~ok], PROB_BINS)[0],
    }
    chart = histogram(PROB_BINS, counts, title="Probability of the predicted class", xlabel="probability")
    note = f"<p>{int(data.good(good).sum())} samples are <em>Good</em> (correct with probability \u2265 {good:g}).</p>"
    return section("probability", "Probabilities", chart + note)


def _metric_chart(data: ReportData, name: str) -> str:
    values = data.columns[name]
    if name in HIT_METRICS:
        rates = []
        for k in range(len(data.class_names)):
            v = values[data.label == k]
            defined = v[v != -1]
            rates.append(float(defined.mean()) if len(defined) else 0.0)
        return bar_chart(data.class_names, {"hit rate": rates}, title=METRIC_TITLES[name], ylabel="hit rate")
    counts = {}
    for k, cls in enumerate(data.class_names):
        v = values[(data.label == k) & np.isfinite(values)]
        counts[cls] = np.histogram(np.clip(v, 0, 1), METRIC_BINS)[0]
    return histogram(METRIC_BINS, counts, title=METRIC_TITLES[name], xlabel=name.replace("_", " "))


def metrics_html(data: ReportData) -> str:
    if not data.metrics:
        return ""
    rows, charts = [], []
    for name in data.metrics:
        values = data.columns[name]
        defined = values != -1 if name in HIT_METRICS else np.isfinite(values)
        mean = float(values[defined].astype(np.float64).mean()) if defined.any() else None
        shown = "n/a" if mean is None else f"{mean:.4f}"
        rows.append([escape(name), shown, str(int(defined.sum())), str(int((~defined).sum()))])
        charts.append(_metric_chart(data, name))
    head = ["metric", "mean", "defined", "undefined"]
    return section("metrics", "Localisation metrics", table(head, rows) + "".join(charts))


def summary_sections(data: ReportData, n_selected: int, good: float, explained: str = "") -> str:
    """The summary; ``explained``: the sections of a dataset of maps per class (``enhancer.report.classes``), after
    the metrics. A multi-label dataset has no class balance, confusion matrix or "Good" (no single label)."""
    single = [] if data.multi_label else [classes_html(data), confusion_html(data), probability_html(data, good)]
    return "".join([counts_html(data, n_selected), *single, metrics_html(data), explained, rejected_html(data)])
