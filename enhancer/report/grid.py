"""A PNG grid of an enhanced dataset, like the original research's figures: image | heatmap overlay | crop |
enhanced, one row per sample, titled "<CLASS> | Good" when the prediction is right with probability >= a
threshold, and a blank row when the prediction is wrong (as the research figures left such cells blank).

Usage: ``enhancer show enhanced/ --out grid.png`` or ``draw_grid("enhanced/", "grid.png")``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from enhancer.explain.cam import colorize_jet
from enhancer.store import EnhancedDataset

COLUMNS = ("image", "overlay", "crop", "enhanced")
CELL = 224
TITLE_H = 18


def overlay(grey: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Heat in JET colours (``colorize_jet``, the Grad-CAM heatmaps' map) over a grey image (both (H, W) uint8),
    cold pixels (heat < 20%) left uncoloured."""
    rgb = np.repeat(grey[..., None], 3, -1).astype(np.float32)
    colour = colorize_jet(torch.from_numpy(np.ascontiguousarray(heat, dtype=np.uint8))[None])[0]
    colour = colour.permute(1, 2, 0).numpy().astype(np.float32)
    a = np.where(heat[..., None] >= 51, alpha, 0.0)
    return (rgb * (1 - a) + colour * a).round().astype(np.uint8)


def _cell(array: np.ndarray) -> Image.Image:
    img = Image.fromarray(array if array.ndim == 3 else array.squeeze())
    return img.convert("RGB").resize((CELL, CELL), Image.Resampling.BILINEAR)


def draw_grid(
    dataset_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    n: int = 8,
    good_threshold: float = 0.85,
) -> Path:
    """Draw up to ``n`` samples (alternating classes, in dataset order) into the PNG ``out``."""
    ds = EnhancedDataset(dataset_dir, fields=("image", "heatmap", "crop", "enhanced", "label", "pred", "prob", "path"))
    names = list(ds.class_names)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(np.asarray(ds.labels)):
        by_class.setdefault(int(label), []).append(i)
    order = [i for group in zip(*by_class.values(), strict=False) for i in group] if by_class else []
    chosen = (order + [i for i in range(len(ds)) if i not in order])[:n]
    grid = Image.new("RGB", (CELL * len(COLUMNS), (CELL + TITLE_H) * max(1, len(chosen)) + TITLE_H), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(COLUMNS):
        draw.text((c * CELL + 4, 2), name, fill="black")
    for r, i in enumerate(chosen):
        s = ds[i]
        label, pred = int(s["label"]), int(s["pred"])
        prob = float(np.asarray(s["prob"])[pred])
        top = TITLE_H + r * (CELL + TITLE_H)
        if pred != label:
            draw.text((4, top + 2), f"{names[label]} | predicted {names[pred]} ({prob:.2f}): left blank", fill="red")
            continue
        title = f"{names[label]} | Good" if prob >= good_threshold else f"{names[label]} | {prob:.2f}"
        draw.text((4, top + 2), f"{title}   {Path(str(s['path'])).name}", fill="black")
        grey = np.asarray(s["image"]).squeeze()
        cells = [
            grey,
            overlay(grey, np.asarray(s["heatmap"])),
            np.asarray(s["crop"]).squeeze(),
            np.asarray(s["enhanced"]).squeeze(),
        ]
        for c, array in enumerate(cells):
            grid.paste(_cell(np.asarray(array)), (c * CELL, top + TITLE_H))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out
