"""Training curves as a PNG drawn with PIL (matplotlib is not a dependency): loss and accuracy per epoch.

Usage::

    from enhancer.train.curves import draw_curves
    draw_curves(history, "runs/r1/curves.png")   # history: the per-epoch dicts of enhancer.train.loop.fit

Two panels side by side, train (blue) and validation (orange), the best epoch marked with a grey line.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from enhancer.atomic import atomic_write

COLOURS = {"train": (31, 119, 180), "val": (255, 127, 14)}
PANEL = (460, 320)
MARGIN = (56, 28, 16, 40)  # left, top, right, bottom


def _panel(
    draw: ImageDraw.ImageDraw,
    x0: int,
    title: str,
    epochs: list[int],
    series: dict[str, list[float | None]],
    best: int | None,
) -> None:
    font = ImageFont.load_default()
    left, top, right, bottom = MARGIN
    w, h = PANEL
    px0, py0, px1, py1 = x0 + left, top, x0 + w - right, h - bottom
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    e_lo, e_hi = (min(epochs), max(epochs)) if epochs else (0, 1)
    span = max(e_hi - e_lo, 1)

    def xy(e: int, v: float) -> tuple[float, float]:
        return px0 + (e - e_lo) / span * (px1 - px0), py1 - (v - lo) / (hi - lo) * (py1 - py0)

    draw.rectangle([px0, py0, px1, py1], outline=(0, 0, 0))
    draw.text((px0, 8), title, fill=(0, 0, 0), font=font)
    for frac in (0.0, 0.5, 1.0):
        v = lo + frac * (hi - lo)
        y = xy(e_lo, v)[1]
        draw.line([px0 - 4, y, px0, y], fill=(0, 0, 0))
        draw.text((x0 + 4, y - 6), f"{v:.3g}", fill=(0, 0, 0), font=font)
    for e in sorted({e_lo, e_hi, (e_lo + e_hi) // 2}):
        x = xy(e, lo)[0]
        draw.line([x, py1, x, py1 + 4], fill=(0, 0, 0))
        draw.text((x - 4, py1 + 6), str(e), fill=(0, 0, 0), font=font)
    draw.text(((px0 + px1) // 2 - 14, py1 + 22), "epoch", fill=(0, 0, 0), font=font)
    if best is not None:
        x = xy(best, lo)[0]
        draw.line([x, py0, x, py1], fill=(170, 170, 170))
    for i, (name, vs) in enumerate(series.items()):
        points = [xy(e, v) for e, v in zip(epochs, vs, strict=True) if v is not None and math.isfinite(v)]
        colour = COLOURS.get(name, (0, 0, 0))
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        draw.text((px1 - 60, py0 + 6 + 12 * i), name, fill=colour, font=font)


def draw_curves(
    history: Sequence[dict[str, Any]], path: str | os.PathLike[str], *, best_epoch: int | None = None
) -> str:
    """Write the loss / accuracy curves of ``history`` (keys epoch, train_loss, val_loss, train_acc, val_acc;
    epochs counted from 1) and mark ``best_epoch``."""
    epochs = [int(r["epoch"]) for r in history]
    image = Image.new("RGB", (2 * PANEL[0], PANEL[1]), "white")
    draw = ImageDraw.Draw(image)
    best = best_epoch  # 1-based, like the history's epochs
    _panel(
        draw,
        0,
        "loss",
        epochs,
        {"train": [r.get("train_loss") for r in history], "val": [r.get("val_loss") for r in history]},
        best,
    )
    _panel(
        draw,
        PANEL[0],
        "accuracy",
        epochs,
        {"train": [r.get("train_acc") for r in history], "val": [r.get("val_acc") for r in history]},
        best,
    )
    with atomic_write(path, "wb") as f:
        image.save(f, format="PNG")
    return str(path)
