"""Localisation of saliency maps against annotated regions (lesion masks or boxes), CheXlocalize-style.

Usage::

    from enhancer.audit.localisation import otsu_masks, mask_iou, read_region_masks, localisation_values
    seg = otsu_masks(maps)                       # (N, H, W) bool: each map binarised at its Otsu threshold
    mask_iou(seg, regions)                       # (N,) IoU with the annotated regions (N, H, W) bool
    regions = read_region_masks(masks_dir, paths, (224, 224))   # PNG per image, matched by file stem
    values = localisation_values(maps, regions)  # {"iou", "hit", "energy", "area"} per sample, NaN = no region

Definitions (maps in [0, 1] and regions at the model's input resolution; boxes come through
``enhancer.explain.localisation.boxes_mask`` with the images' squash resize):

- IoU after Otsu thresholding (Saporta et al. 2022, CheXlocalize): the map as 8-bit levels ``uint8(255 * map)``,
  Otsu's threshold over the 256 levels (scikit-image's ``threshold_otsu`` of those levels), segmentation
  ``level > threshold``; mIoU is the mean over the samples that have a region.
- hit (pointing game): the map's maximum lies in the region (``enhancer.explain.localisation.pointing_hit``).
- energy: the share of the map's sum inside the region (``energy_inside``).
- chance: a uniformly random point hits the region with probability = its area share, which is also the energy of
  a flat map; the hit rate of a map that localises lies above it.

A sample with a region but a map without positive values counts as a miss (IoU 0, hit 0, energy 0): a map that
points nowhere does not localise. A sample without a region (a NORMAL image, an image the annotations do not list)
is left out (NaN).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from enhancer.explain.localisation import energy_inside, pointing_hit

LEVELS = 256


def to_levels(maps: torch.Tensor) -> torch.Tensor:
    """Maps in [0, 1] (N, H, W) -> 8-bit levels ``uint8(255 * map)`` (truncated, as OpenCV-style code does), int64."""
    return (maps.float().nan_to_num(0.0).clamp(0, 1) * 255).long()


def otsu_threshold(levels: torch.Tensor) -> torch.Tensor:
    """Otsu's threshold (N,) of each image's integer levels 0..255 (N, ...): the level t maximising the
    between-class variance of {<= t} and {> t}; the first such t on ties; a flat image gets its own level."""
    flat = levels.flatten(1)
    n = flat.shape[0]
    counts = torch.zeros(n, LEVELS, dtype=torch.float64, device=flat.device).scatter_add_(
        1, flat, torch.ones_like(flat, dtype=torch.float64)
    )
    centres = torch.arange(LEVELS, dtype=torch.float64, device=flat.device)
    w1 = counts.cumsum(1)
    w2 = counts.flip(1).cumsum(1).flip(1)
    m1 = (counts * centres).cumsum(1) / w1.clamp_min(1)
    m2 = (counts * centres).flip(1).cumsum(1).flip(1) / w2.clamp_min(1)
    var = w1[:, :-1] * w2[:, 1:] * (m1[:, :-1] - m2[:, 1:]) ** 2
    var = torch.where((w1[:, :-1] > 0) & (w2[:, 1:] > 0), var, torch.full_like(var, -1.0))
    best = var.argmax(1)
    flat_image = flat.amin(1) == flat.amax(1)
    return torch.where(flat_image, flat[:, 0], best)


def otsu_masks(maps: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool: the levels of each map above its Otsu threshold (empty for a flat map)."""
    levels = to_levels(maps)
    return levels > otsu_threshold(levels)[:, None, None]


def mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU (N,) of two (N, H, W) bool masks; NaN where gt is empty."""
    p, g = pred.bool().flatten(1), gt.bool().flatten(1)
    inter = (p & g).sum(1).float()
    union = (p | g).sum(1).float()
    return torch.where(g.any(1), inter / union.clamp_min(1), torch.full_like(inter, math.nan))


def localisation_values(maps: torch.Tensor, regions: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample IoU, hit, energy and region area share (each (N,) float32) of maps (N, H, W) in [0, 1] against
    regions (N, H, W) bool; NaN where a sample has no region."""
    has_region = regions.flatten(1).any(1)
    nan = torch.full(has_region.shape, math.nan, device=maps.device)
    iou = mask_iou(otsu_masks(maps), regions)
    hit = pointing_hit(maps, regions).float().clamp_min(0)  # -1 (no evidence) counts as a miss
    energy = energy_inside(maps, regions).nan_to_num(0.0)
    area = regions.flatten(1).float().mean(1)
    return {
        k: torch.where(has_region, v, nan) for k, v in (("iou", iou), ("hit", hit), ("energy", energy), ("area", area))
    }


def mask_index(masks_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Every ``*.png`` under ``masks_dir`` by file stem; two files with one stem are an error."""
    root = Path(masks_dir)
    if not root.is_dir():
        raise ValueError(f"{root}: no such mask folder; pass a folder of PNG masks named like the images (<stem>.png)")
    index: dict[str, Path] = {}
    for path in sorted(root.rglob("*.png")):
        if path.stem in index:
            raise ValueError(f"{path} and {index[path.stem]} have the same stem; masks are matched by file stem")
        index[path.stem] = path
    if not index:
        raise ValueError(f"{root}: no .png masks found; masks are PNGs named like the images (<stem>.png)")
    return index


def read_region_masks(
    masks_dir: str | os.PathLike[str],
    paths: Sequence[str],
    size: tuple[int, int],
    *,
    index: dict[str, Path] | None = None,
) -> torch.Tensor:
    """(N, H, W) bool lesion masks of ``paths`` (matched by file stem, nonzero = lesion), resized like the images
    (squash, nearest neighbour) to ``size``; an image without a mask file gets an empty mask."""
    index = mask_index(masks_dir) if index is None else index
    out = np.zeros((len(paths), *size), dtype=bool)
    for i, p in enumerate(paths):  # one PNG file per sample: decoding is per file anyway
        found = index.get(Path(p).stem)
        if found is None:
            continue
        with Image.open(found) as img:
            small = img.convert("L").resize((size[1], size[0]), Image.Resampling.NEAREST)
        out[i] = np.asarray(small) > 0
    return torch.from_numpy(out)
