"""A PNG grid of an enhanced dataset, like the original research's figures: image | heatmap overlay | crop |
enhanced, one row per sample, titled "<CLASS> | Good" when the prediction is right with probability >= a
threshold, and a blank row when the prediction is wrong (as the research figures left such cells blank).

Usage: ``enhancer show enhanced/ --out grid.png`` or ``draw_grid("enhanced/", "grid.png")``; a dataset of
per-class maps (multi-label): ``enhancer show enhanced/ --class Effusion``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from enhancer.explain.cam import colorize_jet
from enhancer.store import EnhancedDataset, StoreError

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
    class_name: str | None = None,
) -> Path:
    """Draw up to ``n`` samples (alternating classes, in dataset order) into the PNG ``out``. ``class_name``: the
    maps of that class in a dataset of per-class maps (multi-label), rows of the images that have one, alternating
    positive and other targets, titled with the target and the class's probability."""
    fields = ("image", "heatmap", "crop", "enhanced", "label", "pred", "prob", "path")
    ds = EnhancedDataset(dataset_dir, fields=fields, class_name=class_name)
    if ds.per_class and ds.class_id is None:
        raise StoreError(
            f"{dataset_dir} holds one map per explained class; choose the class to show with --class NAME "
            f"(classes: {', '.join(ds.class_names)})"
        )
    strata = np.asarray(ds.labels) if ds.class_id is None else _class_strata(ds)
    by_class: dict[int, list[int]] = {}
    for i, key in enumerate(strata):
        if key != _NO_MAP:
            by_class.setdefault(int(key), []).append(i)
    order = [i for group in zip(*by_class.values(), strict=False) for i in group] if by_class else []
    wanted = [i for i in range(len(ds)) if i not in order and strata[i] != _NO_MAP]
    chosen = (order + wanted)[:n]
    grid = Image.new("RGB", (CELL * len(COLUMNS), (CELL + TITLE_H) * max(1, len(chosen)) + TITLE_H), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(COLUMNS):
        draw.text((c * CELL + 4, 2), name, fill="black")
    for r, i in enumerate(chosen):
        _draw_row(grid, draw, ds, i, TITLE_H + r * (CELL + TITLE_H), good_threshold)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


_NO_MAP = -99  # stratum of a sample without a map of the chosen class: not drawn


def _class_strata(ds: EnhancedDataset) -> np.ndarray:
    """Per sample: its target for the chosen class (1, 0, -1; a single-label dataset: label == class), or
    ``_NO_MAP`` where it has no map of that class."""
    c = ds.class_id
    assert c is not None
    target = ds.targets[:, c].astype(np.int64) if ds.targets is not None else (ds.labels == c).astype(np.int64)
    explained = ds.read_column("explained")
    return np.where((explained == c).any(axis=1), target, _NO_MAP)


def _title(ds: EnhancedDataset, i: int, s: dict, good_threshold: float) -> tuple[str, bool]:
    """The row's title and whether to draw its images (not for a wrong single-label prediction)."""
    names = list(ds.class_names)
    label, pred = int(s["label"]), int(s["pred"])
    if ds.class_id is not None:
        c = ds.class_id
        p = float(np.asarray(s["prob"])[c])
        if ds.targets is not None:
            target = {1: "positive", 0: "negative", -1: "uncertain"}[int(ds.targets[i, c])]
        else:
            target = "label" if label == c else f"label {names[label]}"
        return f"{names[c]} ({target}) | p {p:.2f}", True
    prob = float(np.asarray(s["prob"])[pred])
    if pred != label:
        return f"{names[label]} | predicted {names[pred]} ({prob:.2f}): left blank", False
    return (f"{names[label]} | Good" if prob >= good_threshold else f"{names[label]} | {prob:.2f}"), True


def _draw_row(grid: Image.Image, draw: ImageDraw.ImageDraw, ds: EnhancedDataset, i: int, top: int, good: float) -> None:
    s = ds[i]
    title, images = _title(ds, i, s, good)
    if not images:
        draw.text((4, top + 2), title, fill="red")
        return
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
