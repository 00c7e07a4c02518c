"""Small inline SVG charts drawn by hand: grouped bars, stacked histograms, lines over rounds, a count matrix.

Usage: ``bar_chart(["NORMAL", "PNEUMONIA"], {"true": [8, 8], "predicted": [5, 11]}, title="Class balance")``.

Each function returns one ``<svg>`` element as text, for embedding in HTML (no plotting library, no network).
Every mark carries its number in a ``<title>`` (the browser's tooltip) and in ``data-*`` attributes, which is also
how the tests read the charts back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

import numpy as np

PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d")
WIDTH, HEIGHT = 520, 260
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 42, 46


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    count = int(math.ceil((hi - first) / step - 1e-9))
    return [round(first + k * step, 10) for k in range(count + 1)]


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


class _Plot:
    """The drawing area of one chart: maps data to pixels, collects elements, closes the SVG."""

    def __init__(self, title: str, y_lo: float, y_hi: float, width: int = WIDTH, height: int = HEIGHT) -> None:
        self.width, self.height = width, height
        self.ticks = nice_ticks(y_lo, y_hi)
        self.y_lo, self.y_hi = self.ticks[0], self.ticks[-1]
        self.x0, self.x1 = LEFT, width - RIGHT
        self.y0, self.y1 = height - BOTTOM, TOP
        self.parts = [
            f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
            f"<title>{escape(title)}</title>",
            f'<text class="chart-title" x="{LEFT}" y="16">{escape(title)}</text>',
        ]

    def y(self, v: float) -> float:
        span = self.y_hi - self.y_lo or 1.0
        return self.y0 - (v - self.y_lo) / span * (self.y0 - self.y1)

    def y_axis(self, label: str = "") -> None:
        for t in self.ticks:
            y = self.y(t)
            self.parts.append(f'<line class="grid" x1="{self.x0}" x2="{self.x1}" y1="{y:.1f}" y2="{y:.1f}"/>')
            self.parts.append(
                f'<text class="tick" x="{self.x0 - 4}" y="{y + 3:.1f}" text-anchor="end">{_fmt(t)}</text>'
            )
        if label:
            mid = (self.y0 + self.y1) / 2
            self.parts.append(
                f'<text class="axis-label" transform="translate(12 {mid:.1f}) rotate(-90)" '
                f'text-anchor="middle">{escape(label)}</text>'
            )

    def x_label(self, label: str) -> None:
        if label:
            mid = (self.x0 + self.x1) / 2
            self.parts.append(
                f'<text class="axis-label" x="{mid:.1f}" y="{self.height - 6}" text-anchor="middle">'
                f"{escape(label)}</text>"
            )

    def legend(self, names: Sequence[str]) -> None:
        x = self.x1
        for k, name in reversed(list(enumerate(names))):
            x -= 14 + 7 * len(name)
            self.parts.append(f'<rect x="{x}" y="21" width="10" height="10" fill="{PALETTE[k % len(PALETTE)]}"/>')
            self.parts.append(f'<text class="legend" x="{x + 13}" y="30">{escape(name)}</text>')

    def close(self) -> str:
        self.parts.append(f'<line class="axis" x1="{self.x0}" x2="{self.x1}" y1="{self.y0}" y2="{self.y0}"/>')
        return "".join(self.parts) + "</svg>"


def bar_chart(
    categories: Sequence[str], series: Mapping[str, Sequence[float]], *, title: str, ylabel: str = "samples"
) -> str:
    """Grouped bars: one group per category, one bar per series."""
    top = max([float(v) for values in series.values() for v in values] + [1.0])
    plot = _Plot(title, 0.0, top)
    plot.y_axis(ylabel)
    n_cat, n_ser = max(1, len(categories)), max(1, len(series))
    group = (plot.x1 - plot.x0) / n_cat
    bar = group * 0.8 / n_ser
    for c, name in enumerate(categories):
        gx = plot.x0 + c * group
        plot.parts.append(
            f'<text class="tick" x="{gx + group / 2:.1f}" y="{plot.y0 + 14}" text-anchor="middle">{escape(name)}</text>'
        )
        for s, (label, values) in enumerate(series.items()):
            v = float(values[c])
            x, y = gx + group * 0.1 + s * bar, plot.y(v)
            plot.parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{plot.y0 - y:.1f}" '
                f'fill="{PALETTE[s % len(PALETTE)]}" data-series="{escape(label)}" data-category="{escape(name)}" '
                f'data-value="{_fmt(v)}"><title>{escape(label)} {escape(name)}: {_fmt(v)}</title></rect>'
            )
    plot.legend(list(series))
    return plot.close()


def histogram(
    edges: np.ndarray, counts: Mapping[str, np.ndarray], *, title: str, xlabel: str, ylabel: str = "samples"
) -> str:
    """Stacked histogram: ``counts[group][k]`` samples of ``group`` in bin [edges[k], edges[k+1])."""
    edges = np.asarray(edges, dtype=np.float64)
    stacked = np.sum([np.asarray(c) for c in counts.values()], axis=0) if counts else np.zeros(len(edges) - 1)
    plot = _Plot(title, 0.0, float(max(1, stacked.max(initial=0))))
    plot.y_axis(ylabel)
    span = (edges[-1] - edges[0]) or 1.0

    def x(v: float) -> float:
        return plot.x0 + (v - edges[0]) / span * (plot.x1 - plot.x0)

    base = np.zeros(len(edges) - 1)
    for g, (name, values) in enumerate(counts.items()):
        for k, n in enumerate(np.asarray(values).tolist()):
            if n:
                ya, yb = plot.y(base[k] + n), plot.y(base[k])
                plot.parts.append(
                    f'<rect class="bar" x="{x(edges[k]) + 0.5:.1f}" y="{ya:.1f}" '
                    f'width="{max(0.5, x(edges[k + 1]) - x(edges[k]) - 1):.1f}" height="{yb - ya:.1f}" '
                    f'fill="{PALETTE[g % len(PALETTE)]}" data-series="{escape(name)}" data-bin="{k}" data-count="{n}">'
                    f"<title>{escape(name)} [{edges[k]:g}, {edges[k + 1]:g}): {n}</title></rect>"
                )
            base[k] += n
    for t in nice_ticks(edges[0], edges[-1]):
        if edges[0] <= t <= edges[-1]:
            plot.parts.append(
                f'<text class="tick" x="{x(t):.1f}" y="{plot.y0 + 14}" text-anchor="middle">{_fmt(t)}</text>'
            )
    plot.x_label(xlabel)
    plot.legend(list(counts))
    return plot.close()


def line_chart(
    x: Sequence[float],
    series: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    xlabel: str,
    ylabel: str = "",
    y_range: tuple[float, float] | None = None,
) -> str:
    """One line per series over ``x``; None values are gaps (the line skips them)."""
    found = [float(v) for values in series.values() for v in values if v is not None and math.isfinite(v)]
    lo, hi = y_range if y_range is not None else (min(found + [0.0]), max(found + [1.0]))
    plot = _Plot(title, lo, hi)
    plot.y_axis(ylabel)
    xs = [float(v) for v in x]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    span = (x_hi - x_lo) or 1.0

    def px(v: float) -> float:
        return plot.x0 + 10 + (v - x_lo) / span * (plot.x1 - plot.x0 - 20)

    for v in xs:
        plot.parts.append(
            f'<text class="tick" x="{px(v):.1f}" y="{plot.y0 + 14}" text-anchor="middle">{_fmt(v)}</text>'
        )
    for s, (name, values) in enumerate(series.items()):
        colour = PALETTE[s % len(PALETTE)]
        points = [(px(a), plot.y(float(b)), b) for a, b in zip(xs, values, strict=True) if b is not None]
        if len(points) > 1:
            path = " ".join(f"{a:.1f},{b:.1f}" for a, b, _ in points)
            plot.parts.append(f'<polyline class="line" points="{path}" stroke="{colour}" fill="none"/>')
        for a, b, v in points:
            plot.parts.append(
                f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{colour}" data-series="{escape(name)}" '
                f'data-value="{float(v):.6g}"><title>{escape(name)}: {float(v):.4g}</title></circle>'
            )
    plot.x_label(xlabel)
    plot.legend(list(series))
    return plot.close()


def matrix_chart(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], *, title: str) -> str:
    """Counts as shaded cells with their numbers; rows are true classes, columns predicted ones."""
    matrix = np.asarray(matrix)
    cell = max(28, min(72, 360 // max(1, len(cols))))
    left, top = 20 + 8 * max([len(r) for r in rows] + [4]), 40
    width, height = left + cell * len(cols) + 10, top + cell * len(rows) + 40
    peak = max(1, int(matrix.max(initial=0)))
    parts = [
        f'<svg class="chart matrix" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<text class="chart-title" x="4" y="16">{escape(title)}</text>',
        f'<text class="axis-label" x="{left + cell * len(cols) / 2:.1f}" y="{height - 6}" text-anchor="middle">'
        "predicted</text>",
        '<text class="axis-label" x="4" y="32">true \u2193</text>',
    ]
    for j, name in enumerate(cols):
        x = left + j * cell + cell / 2
        parts.append(f'<text class="tick" x="{x:.1f}" y="{height - 22}" text-anchor="middle">{escape(name)}</text>')
    for i, name in enumerate(rows):
        y = top + i * cell
        parts.append(
            f'<text class="tick" x="{left - 4}" y="{y + cell / 2 + 4:.1f}" text-anchor="end">{escape(name)}</text>'
        )
        for j in range(len(cols)):
            n = int(matrix[i, j])
            shade = 0.08 + 0.85 * n / peak
            ink = "#fff" if shade > 0.5 else "#222"
            base = PALETTE[0] if i == j else PALETTE[3]
            parts.append(
                f'<rect class="cell" x="{left + j * cell}" y="{y}" width="{cell - 1}" height="{cell - 1}" '
                f'fill="{base}" fill-opacity="{shade:.3f}" data-row="{escape(name)}" data-col="{escape(cols[j])}" '
                f'data-count="{n}">'
                f"<title>true {escape(name)}, predicted {escape(cols[j])}: {n}</title></rect>"
                f'<text class="cell-text" x="{left + j * cell + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" '
                f'text-anchor="middle" fill="{ink}">{n}</text>'
            )
    return "".join(parts) + "</svg>"
