"""The audit's PNG figures, drawn with PIL: randomisation strips, deletion / insertion curves, worst-localised
samples.

Usage::

    draw_strips(strips, out_dir)                      # randomisation-01-head.png, ... one strip per stage
    draw_curves(document, out_dir / "deletion-insertion.png")     # deletion and insertion: the maps vs random maps
    draw_worst(images, maps, regions, iou, out_dir / "worst-localised.png")

Map overlays use the Grad-CAM heatmaps' JET colouring (``enhancer.explain.cam.colorize_jet``) at 40% over the
image, cold pixels (below 20% of the peak) left uncoloured.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from enhancer.atomic import atomic_write
from enhancer.audit.checks import Strips
from enhancer.audit.localisation import otsu_masks
from enhancer.explain.cam import colorize_jet

CELL = 160
TITLE_H = 18
OURS, RANDOM = (31, 119, 180), (255, 127, 14)
PANEL = (420, 300)
MARGIN = (48, 28, 16, 36)  # left, top, right, bottom


def _save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        image.save(f, format="PNG")
    return path


def _overlay_cell(grey01: torch.Tensor, heat01: torch.Tensor, alpha: float = 0.4) -> Image.Image:
    """One cell: the map over the image (both (H, W) in [0, 1]), resized to CELL x CELL."""
    grey = grey01.float().clamp(0, 1)[None].expand(3, -1, -1) * 255
    colour = colorize_jet(heat01.float()[None])[0].float()
    a = torch.where(heat01 >= 0.2, alpha, 0.0)
    rgb = (grey * (1 - a) + colour * a).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(rgb)).resize((CELL, CELL), Image.Resampling.BILINEAR)


def _grey01(images: torch.Tensor) -> torch.Tensor:
    """Model inputs (K, 1, H, W) (normalised) -> (K, H, W) in [0, 1] by each image's own range, for display."""
    g = images[:, 0].float()
    lo = g.flatten(1).amin(1)[:, None, None]
    hi = g.flatten(1).amax(1)[:, None, None]
    return (g - lo) / (hi - lo).clamp_min(1e-12)


def draw_strips(strips: Strips, out_dir: str | os.PathLike[str]) -> list[Path]:
    """One PNG per randomisation stage: the original maps (top row) over the maps after randomising this stage and
    every stage above it (bottom row), for the first few samples."""
    grey = _grey01(strips.images)
    k = len(grey)
    written = []
    for i, (name, mean_ssim, maps) in enumerate(strips.stages, start=1):
        canvas = Image.new("RGB", (CELL * k, 2 * (CELL + TITLE_H)), "white")
        draw = ImageDraw.Draw(canvas)
        draw.text((4, 2), "original maps", fill="black")
        draw.text((4, CELL + TITLE_H + 2), f"randomised down to {name}: mean SSIM {mean_ssim:.3f}", fill="black")
        for j in range(k):
            canvas.paste(_overlay_cell(grey[j], strips.original[j]), (j * CELL, TITLE_H))
            canvas.paste(_overlay_cell(grey[j], maps[j]), (j * CELL, 2 * TITLE_H + CELL))
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        written.append(_save(canvas, Path(out_dir) / f"randomisation-{i:02d}-{safe}.png"))
    return written


def _panel(draw: ImageDraw.ImageDraw, x0: int, title: str, section: dict[str, Any]) -> None:
    font = ImageFont.load_default()
    left, top, right, bottom = MARGIN
    px0, py0, px1, py1 = x0 + left, top, x0 + PANEL[0] - right, PANEL[1] - bottom
    fractions = section["fractions"]
    series = {"maps": (section["curve"], OURS), "random maps": (section["random_curve"], RANDOM)}
    values = [v for vs, _ in series.values() for v in vs if v is not None and math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5

    def xy(f: float, v: float) -> tuple[float, float]:
        return px0 + f * (px1 - px0), py1 - (v - lo) / (hi - lo) * (py1 - py0)

    draw.rectangle([px0, py0, px1, py1], outline=(0, 0, 0))
    draw.text((px0, 8), title, fill=(0, 0, 0), font=font)
    for frac in (0.0, 0.5, 1.0):
        y = xy(0, lo + frac * (hi - lo))[1]
        draw.line([px0 - 4, y, px0, y], fill=(0, 0, 0))
        draw.text((x0 + 4, y - 6), f"{lo + frac * (hi - lo):.3g}", fill=(0, 0, 0), font=font)
        x = xy(frac, lo)[0]
        draw.line([x, py1, x, py1 + 4], fill=(0, 0, 0))
        draw.text((x - 8, py1 + 6), f"{frac:.1f}", fill=(0, 0, 0), font=font)
    draw.text(((px0 + px1) // 2 - 40, py1 + 20), "fraction of pixels", fill=(0, 0, 0), font=font)
    for i, (name, (vs, colour)) in enumerate(series.items()):
        points = [xy(f, v) for f, v in zip(fractions, vs, strict=True) if v is not None and math.isfinite(v)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        auc = section["auc"] if name == "maps" else section["random_auc"]
        draw.text((px1 - 130, py0 + 6 + 12 * i), f"{name}: AUC {auc:.3f}", fill=colour, font=font)


def draw_curves(document: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Deletion and insertion curves (mean score over the samples) of the maps and of random maps, side by side."""
    image = Image.new("RGB", (2 * PANEL[0], PANEL[1]), "white")
    draw = ImageDraw.Draw(image)
    for i, kind in enumerate(("deletion", "insertion")):
        section = document[kind]
        _panel(draw, i * PANEL[0], f"{kind} ({section['baseline']} baseline, {section['score']})", section)
    return _save(image, Path(path))


def draw_worst(
    images: torch.Tensor,
    maps: torch.Tensor,
    regions: torch.Tensor,
    iou: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    names: list[str],
    n: int = 8,
) -> Path | None:
    """The ``n`` samples with the lowest IoU (those with a region): the map over the image, the annotated region
    outlined in green and the Otsu segmentation in magenta. None when no sample has a region."""
    defined = torch.isfinite(iou).nonzero()[:, 0]
    if len(defined) == 0:
        return None
    worst = defined[iou[defined].argsort()[:n]]
    grey = _grey01(images[worst].cpu())
    seg = otsu_masks(maps[worst]).cpu()
    canvas = Image.new("RGB", (CELL * len(worst), CELL + TITLE_H), "white")
    draw = ImageDraw.Draw(canvas)
    for j, i in enumerate(worst.tolist()):
        cell = np.asarray(_overlay_cell(grey[j], maps[i].cpu())).copy()
        for mask, colour in ((regions[i].cpu(), (0, 255, 0)), (seg[j], (255, 0, 255))):
            small = np.asarray(Image.fromarray(mask.numpy().astype(np.uint8) * 255).resize((CELL, CELL))) > 127
            edge = small & ~(
                np.roll(small, 1, 0) & np.roll(small, -1, 0) & np.roll(small, 1, 1) & np.roll(small, -1, 1)
            )
            cell[edge] = colour
        canvas.paste(Image.fromarray(cell), (j * CELL, TITLE_H))
        draw.text((j * CELL + 4, 2), f"IoU {float(iou[i]):.2f} {Path(names[i]).name[:18]}", fill="black")
    return _save(canvas, Path(path))
