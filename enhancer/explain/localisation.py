"""Localisation metrics of Grad-CAM maps against lung masks and annotated boxes: pure, batched tensor functions,
plus the box CSV reader.

Usage::

    from enhancer.explain.localisation import energy_inside, pointing_hit, box_iou, boxes_mask, read_boxes
    heat = upsample(cam_result.cam, (224, 224))             # (N, H, W) in [0, 1]
    energy_inside(heat, lung)                               # (N,) float32: share of the map's energy in the lungs
    pointing_hit(heat, lung)                                # (N,) int8: 1 the maximum is in the lungs, 0 not, -1 n/a
    table = read_boxes("stage_2_train_labels.csv")          # RSNA (patientId,x,y,width,height,Target) or path,x0..y1
    gt = boxes_mask(table.batch(paths), orig_size, (224, 224))   # (N, H, W) bool: union of each sample's boxes
    box_iou(heat, gt)                                       # (N,) float32: IoU of the thresholded map's box and gt

Definitions (every map and mask at the same resolution, the classifier's input; boxes are mapped there from
original pixels with the same squash resize the images get):

- energy inside M = sum(heat * M) / sum(heat). The seed's "void regions" problem as a number: a map that lights the
  background around the skeleton scores low on the lung mask.
- pointing hit = the map's maximum lies in M. When several pixels share the maximum (a plateau), it is a hit when
  more than half of them lie in M. ``tolerance`` grows M by that many pixels first (the pointing game's 15 px).
- box IoU = IoU between the bounding box of {heat >= threshold * max} (all such pixels, like the crop box) and the
  union of the annotated boxes, both as pixel sets.

Undefined values: a map with no positive evidence (sum or max 0, or not finite; Grad-CAM's ``empty``) or an empty
mask (no lung found, no annotated box) gives NaN for the float metrics and -1 for the hit. Means are taken over the
defined samples only.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

NOT_DEFINED = -1  # pointing hit of a sample without evidence or without a region

NOTE = (
    "lung_energy / box_energy = sum(heat * region) / sum(heat) with heat = the upsampled Grad-CAM at model resolution; "
    "lung_hit / box_hit = 1 when the map's maximum (more than half of a plateau of maxima) is inside the region, "
    "else 0; box_iou = IoU of the bounding box of heat >= threshold * max with the union of the annotated boxes. "
    "Undefined (NaN, hit -1): the map has no positive evidence, or the region is empty (no lung found, no box)."
)


def _check(heat: torch.Tensor, mask: torch.Tensor) -> None:
    if heat.ndim != 3 or heat.shape != mask.shape:
        raise ValueError(
            f"heat and mask must both be (N, H, W) of one shape, got {tuple(heat.shape)} and "
            f"{tuple(mask.shape)}; upsample the map to the mask's size first"
        )


def _clean(heat: torch.Tensor) -> torch.Tensor:
    return heat.float().nan_to_num(0.0, posinf=0.0, neginf=0.0).clamp_min(0)


def energy_inside(heat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of each map's energy inside its mask: heat (N, H, W) >= 0, mask (N, H, W) bool or weights in [0, 1].
    Returns (N,) float32 in [0, 1]; NaN where the map has no energy or the mask is empty."""
    _check(heat, mask)
    h = _clean(heat).flatten(1)
    m = mask.float().flatten(1).clamp(0, 1)
    total = h.sum(1)
    inside = (h * m).sum(1)
    defined = (total > 0) & (m.sum(1) > 0)
    safe = torch.where(defined, total, torch.ones_like(total))
    return torch.where(defined, (inside / safe).clamp(0, 1), torch.full_like(total, math.nan))


def dilate(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow mask (N, H, W) bool by ``pixels`` in every direction (a square neighbourhood)."""
    if pixels <= 0:
        return mask.bool()
    k = 2 * pixels + 1
    return F.max_pool2d(mask[:, None].float(), k, stride=1, padding=pixels)[:, 0] > 0


def pointing_hit(heat: torch.Tensor, mask: torch.Tensor, *, tolerance: int = 0) -> torch.Tensor:
    """Pointing game: is each map's maximum inside its mask? heat (N, H, W), mask (N, H, W) bool.
    Returns (N,) int8: 1 hit, 0 miss, -1 undefined (no positive evidence or an empty mask)."""
    _check(heat, mask)
    h = _clean(heat).flatten(1)
    m = dilate(mask.bool(), tolerance).flatten(1)
    peak = h.amax(1, keepdim=True)
    at_peak = (h == peak) & (peak > 0)
    n_peak = at_peak.sum(1)
    n_inside = (at_peak & m).sum(1)
    hit = (2 * n_inside > n_peak).to(torch.int8)
    defined = (n_peak > 0) & m.any(1)
    return torch.where(defined, hit, torch.full_like(hit, NOT_DEFINED))


def threshold_box_mask(heat: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(N, H, W) bool: the bounding box of each map's pixels >= threshold * max (empty for a map without evidence)."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold} must be in (0, 1] (a fraction of the map's max)")
    h = _clean(heat)
    peak = h.flatten(1).amax(1)
    hot = (h >= threshold * peak[:, None, None]) & (peak > 0)[:, None, None]
    rows, cols = hot.any(2), hot.any(1)  # (N, H), (N, W)

    def span(hit: torch.Tensor) -> torch.Tensor:
        """Pixels between the first and the last hit along one axis."""
        first = hit.int().cummax(1).values.bool()
        last = hit.flip(1).int().cummax(1).values.flip(1).bool()
        return first & last

    return span(rows)[:, :, None] & span(cols)[:, None, :]


def box_iou(heat: torch.Tensor, gt: torch.Tensor, *, threshold: float = 0.5) -> torch.Tensor:
    """IoU of each thresholded map's bounding box with its ground-truth region gt (N, H, W) bool (the union of the
    annotated boxes, see ``boxes_mask``). Returns (N,) float32; NaN where the map has no evidence or gt is empty."""
    _check(heat, gt)
    pred = threshold_box_mask(heat, threshold).flatten(1)
    g = gt.bool().flatten(1)
    inter = (pred & g).sum(1).float()
    union = (pred | g).sum(1).float()
    defined = pred.any(1) & g.any(1)
    return torch.where(defined, inter / union.clamp_min(1), torch.full_like(inter, math.nan))


def boxes_mask(boxes: torch.Tensor, orig_size: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Union of each sample's boxes as a pixel mask at model resolution.

    boxes (N, K, 4) float xyxy in original pixels (x1, y1 exclusive), rows of NaN = padding; orig_size (N, 2)
    (height, width) of the originals; size (H, W) of the squash-resized model input. A pixel belongs to a box when
    its centre does. Returns (N, H, W) bool on boxes' device."""
    n, k = boxes.shape[:2]
    h_m, w_m = int(size[0]), int(size[1])
    dev = boxes.device
    if k == 0:
        return torch.zeros(n, h_m, w_m, dtype=torch.bool, device=dev)
    osz = torch.as_tensor(orig_size, device=dev).reshape(n, 2).float()
    sx = (w_m / osz[:, 1])[:, None]
    sy = (h_m / osz[:, 0])[:, None]
    b = boxes.float()
    valid = torch.isfinite(b).all(2)  # (N, K)
    b = b.nan_to_num(0.0)
    x0, y0, x1, y1 = b[..., 0] * sx, b[..., 1] * sy, b[..., 2] * sx, b[..., 3] * sy  # (N, K) in model pixels
    cx = torch.arange(w_m, device=dev).float() + 0.5
    cy = torch.arange(h_m, device=dev).float() + 0.5
    in_x = (cx >= x0[..., None]) & (cx < x1[..., None]) & valid[..., None]  # (N, K, W)
    in_y = (cy >= y0[..., None]) & (cy < y1[..., None]) & valid[..., None]  # (N, K, H)
    return (in_y[..., :, None] & in_x[..., None, :]).any(1)


@dataclass
class BoxTable:
    """Annotated boxes per image, xyxy in original pixels. ``by_path`` keys are absolute paths (``path`` CSVs),
    ``by_stem`` keys are file stems (RSNA ``patientId``). An image listed without a box (RSNA ``Target`` 0) has an
    empty list; an image not listed at all is unknown: both give undefined box metrics. A file that names the
    finding of each box (NIH ``BBox_List_2017.csv``) also fills ``by_finding``: stem -> finding -> boxes."""

    source: str
    by_path: dict[str, list[tuple[float, float, float, float]]] = field(default_factory=dict)
    by_stem: dict[str, list[tuple[float, float, float, float]]] = field(default_factory=dict)
    by_finding: dict[str, dict[str, list[tuple[float, float, float, float]]]] = field(default_factory=dict)

    @property
    def per_finding(self) -> bool:
        return bool(self.by_finding)

    def class_batch(self, paths: Sequence[str], class_names: Sequence[str]) -> torch.Tensor:
        """(N, C, K, 4) float32: the boxes of each image's finding ``class_names[c]`` (NaN-padded; a file without
        findings gives every class the image's boxes). NIH writes ``Infiltrate`` for the class ``Infiltration``."""
        if not self.per_finding:
            return self.batch(paths)[:, None].expand(-1, len(class_names), -1, -1)
        rows = [self.by_finding.get(Path(p).stem, {}) for p in paths]
        lists = [[row.get(FINDING_ALIASES.get(c, c), []) for c in class_names] for row in rows]
        k = max((len(b) for per_class in lists for b in per_class), default=0)
        out = torch.full((len(paths), len(class_names), k, 4), math.nan, dtype=torch.float32)
        for i, per_class in enumerate(lists):
            for c, b in enumerate(per_class):
                if b:
                    out[i, c, : len(b)] = torch.tensor(b, dtype=torch.float32)
        return out

    def lookup(self, path: str) -> list[tuple[float, float, float, float]] | None:
        """The boxes of the image at ``path`` (matched by absolute path, then by file stem), None when unlisted."""
        found = self.by_path.get(os.path.normpath(os.path.abspath(path)))
        if found is None:
            found = self.by_stem.get(Path(path).stem)
        return found

    def batch(self, paths: Sequence[str], device: str | torch.device = "cpu") -> torch.Tensor:
        """(N, K, 4) float32 boxes of ``paths``, NaN-padded to the largest count K in the batch."""
        lists = [self.lookup(p) or [] for p in paths]
        k = max((len(b) for b in lists), default=0)
        out = torch.full((len(lists), k, 4), math.nan, dtype=torch.float32)
        for i, b in enumerate(lists):
            if b:
                out[i, : len(b)] = torch.tensor(b, dtype=torch.float32)
        return out.to(device)

    def __len__(self) -> int:
        return len(self.by_path) + len(self.by_stem)


RSNA_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
PATH_COLUMNS = ("path", "x0", "y0", "x1", "y1")
NIH_BOX_COLUMNS = ("Image Index", "Finding Label")  # then x, y, w, h (the header spells them "Bbox [x,y,w,h]")
FINDING_ALIASES = {"Infiltration": "Infiltrate"}  # class name (Data_Entry_2017.csv) -> finding (BBox_List_2017.csv)


def _read_nih_boxes(csv_s: str, table: BoxTable) -> BoxTable:
    """NIH ``BBox_List_2017.csv``: ``Image Index, Finding Label`` then x, y, w, h in original pixels."""
    with open(csv_s, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        next(reader)
        for values in reader:
            if not any(v.strip() for v in values):
                continue
            line = reader.line_num
            name, finding, coords = values[0].strip(), values[1].strip(), [v.strip() for v in values[2:6]]
            try:
                x, y, w, h = (float(v) for v in coords)
            except ValueError:
                raise ValueError(f"{csv_s}:{line}: box {coords} is not four numbers x, y, w, h") from None
            if not (w > 0 and h > 0 and all(math.isfinite(v) for v in (x, y, w, h))):
                raise ValueError(f"{csv_s}:{line}: box {coords} is empty (need w > 0 and h > 0)")
            stem = Path(name).stem
            table.by_stem.setdefault(stem, []).append((x, y, x + w, y + h))
            table.by_finding.setdefault(stem, {}).setdefault(finding, []).append((x, y, x + w, y + h))
    return table


def read_boxes(csv_path: str | os.PathLike[str]) -> BoxTable:
    """Read a box CSV: RSNA's ``patientId,x,y,width,height,Target`` (matched to images by file stem; rows with Target
    0 or empty coordinates mark images without a box), NIH's ``BBox_List_2017.csv`` (``Image Index, Finding Label``,
    x, y, w, h: boxes per finding, matched by file stem) or ``path,x0,y0,x1,y1`` (paths relative to the CSV's
    folder; a row with empty coordinates marks an image without a box). Several rows per image give several
    boxes."""
    csv_s = os.path.abspath(os.fspath(csv_path))
    try:
        with open(csv_s, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = {c.strip() for c in reader.fieldnames or ()}
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except FileNotFoundError:
        raise ValueError(f"{csv_s}: no such box file; pass an RSNA label CSV or a path,x0,y0,x1,y1 CSV") from None
    table = BoxTable(source=csv_s)
    if set(NIH_BOX_COLUMNS) <= columns:
        return _read_nih_boxes(csv_s, table)
    if set(RSNA_COLUMNS) <= columns:
        kind, store = "rsna", table.by_stem
    elif set(PATH_COLUMNS) <= columns:
        kind, store = "path", table.by_path
    else:
        raise ValueError(
            f"{csv_s}: the header must be {','.join(RSNA_COLUMNS)} (RSNA), {','.join(NIH_BOX_COLUMNS)},Bbox [x,y,w,h] "
            f"(NIH) or {','.join(PATH_COLUMNS)}, "
            f"got {sorted(columns)}"
        )
    base = os.path.dirname(csv_s)
    for line, row in enumerate(rows, start=2):
        if kind == "rsna":
            key = row["patientId"]
            coords = [row[c] for c in ("x", "y", "width", "height")]
        else:
            key = os.path.normpath(os.path.join(base, row["path"]))
            coords = [row[c] for c in ("x0", "y0", "x1", "y1")]
        if not key:
            raise ValueError(f"{csv_s}:{line}: empty {'patientId' if kind == 'rsna' else 'path'}")
        boxes = store.setdefault(key, [])
        if not any(coords) or (kind == "rsna" and row["Target"] in ("0", "0.0")):
            continue
        try:
            a, b, c, d = (float(v) for v in coords)
        except ValueError:
            raise ValueError(f"{csv_s}:{line}: box coordinates {coords} are not numbers") from None
        x0, y0, x1, y1 = (a, b, a + c, b + d) if kind == "rsna" else (a, b, c, d)
        if not (x1 > x0 and y1 > y0 and all(math.isfinite(v) for v in (x0, y0, x1, y1))):
            raise ValueError(
                f"{csv_s}:{line}: box {coords} is empty or inverted (need x0 < x1 and y0 < y1; RSNA "
                "width and height > 0)"
            )
        boxes.append((x0, y0, x1, y1))
    return table
