"""Thumbnails of the selected samples: a strip (input | heatmap overlay with the crop box | crop | enhanced) for the
sample page and a small card image for the gallery, JPEG, written by a pool of threads.

Usage: ``write_thumbnails("enhanced/", positions, "report/", workers=4)``; the files are ``thumb_paths(position)``.

Images are read from the shards in batches (one sorted HDF5 selection per shard); the overlay and the crop boxes
are computed for the whole batch at once; PIL's resizing and JPEG encoding release the GIL, so the encoding threads
run in parallel while the main thread reads the next batch.
"""

from __future__ import annotations

import functools
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from enhancer.explain.cam import colorize_jet
from enhancer.store.tables import ColumnReader

# Panel name -> caption; a panel is drawn when the dataset has the fields it needs.
PANELS = {"image": "input", "overlay": "Grad-CAM overlay, crop box", "crop": "crop", "enhanced": "enhanced"}
_NEEDS = {"image": ("image",), "overlay": ("image", "heatmap"), "crop": ("crop",), "enhanced": ("enhanced",)}
CARD_PX = 160
PER_FOLDER = 1000
OVERLAY_ALPHA = 0.4
COLD = 51  # heat below 20% of the maximum stays uncoloured, as in `enhancer show`
BOX_RGB = (255, 255, 255)


def panels_for(fields: Sequence[str], per_class: Sequence[str] = ()) -> tuple[str, ...]:
    """The panels a dataset with ``fields`` can show, in strip order. In a dataset of maps per class (``per_class``:
    the fields with a slot axis) the overlay shows the union of an image's maps, and crops and enhanced images made
    per map are left to the sections of the explained classes."""
    return tuple(
        p
        for p, needs in _NEEDS.items()
        if all(f in fields for f in needs) and not (p in ("crop", "enhanced") and p in per_class)
    )


def thumb_paths(position: int) -> tuple[str, str]:
    """(strip, card) file names, relative to the report, of the sample at dataset ``position``
    (report.js builds the same names)."""
    folder = f"thumbs/{position // PER_FOLDER:03d}"
    return f"{folder}/{position}.jpg", f"{folder}/{position}.card.jpg"


@functools.cache
def jet_table() -> np.ndarray:
    """(256, 3) uint8: the product's JET colour of each heat level (``colorize_jet``), for numpy lookups."""
    # (level + 0.5) / 255 makes colorize_jet's truncation land on the level itself.
    levels = (torch.arange(256, dtype=torch.float32) + 0.5) / 255
    return colorize_jet(levels[None, None, :])[0, :, 0, :].T.contiguous().numpy()


def overlay(grey: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """JET heat over grey images: (B, H, W) uint8 each -> (B, H, W, 3) uint8; cold pixels keep the grey."""
    colour = jet_table()[heat].astype(np.float32)  # a table lookup: no torch call per batch
    a = np.where(heat[..., None] >= COLD, alpha, 0.0)
    rgb = np.repeat(grey[..., None], 3, -1).astype(np.float32)
    return (rgb * (1 - a) + colour * a).round().astype(np.uint8)


def draw_boxes(rgb: np.ndarray, boxes: np.ndarray, orig_size: np.ndarray, thickness: int = 2) -> np.ndarray:
    """Draw each sample's crop box (x0, y0, x1, y1 in original pixels; ``orig_size`` rows are (height, width)) as
    a frame on its (B, H, W, 3) image at model resolution, in place; returns ``rgb``."""
    _, h, w, _ = rgb.shape
    sy = h / orig_size[:, 0].astype(np.float64)
    sx = w / orig_size[:, 1].astype(np.float64)
    x0 = np.clip(np.floor(boxes[:, 0] * sx), 0, w - 1)[:, None, None]
    x1 = np.clip(np.ceil(boxes[:, 2] * sx), 1, w)[:, None, None]
    y0 = np.clip(np.floor(boxes[:, 1] * sy), 0, h - 1)[:, None, None]
    y1 = np.clip(np.ceil(boxes[:, 3] * sy), 1, h)[:, None, None]
    ys = np.arange(h)[None, :, None]
    xs = np.arange(w)[None, None, :]
    outer = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    inner = (xs >= x0 + thickness) & (xs < x1 - thickness) & (ys >= y0 + thickness) & (ys < y1 - thickness)
    rgb[outer & ~inner] = BOX_RGB
    return rgb


def panel_batch(batch: dict[str, np.ndarray], panels: Sequence[str]) -> dict[str, np.ndarray]:
    """The panels' pixels for a batch of samples: (B, H, W) grey or (B, H, W, 3) RGB uint8 arrays."""
    out: dict[str, np.ndarray] = {}
    for p in panels:
        if p == "overlay":
            heat = batch["heatmap"]
            # maps per class (B, K, H, W): their union, the pixelwise max (empty slots are zeros)
            rgb = overlay(batch["image"][:, 0], heat.max(1) if heat.ndim == 4 else heat)
            if "crop_box" in batch and batch["crop_box"].ndim == 2:
                draw_boxes(rgb, batch["crop_box"], batch["orig_size"], thickness=max(1, rgb.shape[2] // 112))
            out[p] = rgb
        else:
            out[p] = batch[p][:, 0]
    return out


def _save(panels: list[np.ndarray], card: int, strip_path: Path, card_path: Path) -> None:
    """One sample: the strip (every panel at the first panel's size) and the card image."""
    h, w = panels[0].shape[:2]
    strip = Image.new("RGB", (w * len(panels), h))
    for k, array in enumerate(panels):
        img = Image.fromarray(array).convert("RGB")
        if img.size != (w, h):
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        strip.paste(img, (k * w, 0))
    strip.save(strip_path, "JPEG", quality=85)
    small = Image.fromarray(panels[card]).convert("RGB")
    small = small.resize((CARD_PX, round(CARD_PX * h / w)), Image.Resampling.BILINEAR)
    small.save(card_path, "JPEG", quality=80)


def write_thumbnails(
    dataset_dir: str | os.PathLike[str],
    positions: Sequence[int] | np.ndarray,
    out_dir: str | os.PathLike[str],
    *,
    workers: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> int:
    """Write the strip and card of every sample in ``positions`` under ``out_dir``; returns how many."""
    out_dir = Path(out_dir)
    positions = np.asarray(positions, dtype=np.int64)
    with ColumnReader(dataset_dir) as reader:
        per_class = tuple(n for n, info in reader.manifest.fields.items() if info.get("per_class"))
        panels = panels_for(tuple(reader.manifest.fields), per_class)
        if not panels or not len(positions):
            return 0
        fields = sorted(
            {f for p in panels for f in _NEEDS[p]} | {"crop_box", "orig_size"} & set(reader.manifest.fields)
        )
        card = panels.index("overlay") if "overlay" in panels else 0
        for folder in np.unique(positions // PER_FOLDER).tolist():
            (out_dir / "thumbs" / f"{folder:03d}").mkdir(parents=True, exist_ok=True)
        workers = workers or min(8, os.cpu_count() or 1)
        pending: deque[Future[None]] = deque()
        bar = tqdm(total=len(positions), desc="thumbnails", unit="img", disable=not progress)
        with bar, ThreadPoolExecutor(workers, thread_name_prefix="thumbs") as pool:
            for start in range(0, len(positions), batch_size):
                chunk = positions[start : start + batch_size]
                pixels = panel_batch(reader.read(fields, chunk), panels)
                for k, pos in enumerate(chunk.tolist()):
                    strip, small = thumb_paths(pos)
                    job = pool.submit(_save, [pixels[p][k] for p in panels], card, out_dir / strip, out_dir / small)
                    job.add_done_callback(lambda _: bar.update(1))
                    pending.append(job)
                while len(pending) > 4 * batch_size:  # bound the memory held by queued samples
                    pending.popleft().result()
            while pending:
                pending.popleft().result()
    return len(positions)
