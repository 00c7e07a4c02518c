"""Resample one box per image to a fixed size exactly as ``torchvision.ops.roi_align(aligned=True, sampling_ratio=0)``.

Usage::

    out = roi_resample(source, boxes, (224, 224))  # source (N, C, H, W) float, boxes (N, 4) xyxy: (N, C, 224, 224)

Why it exists: the crops need roi_align's resampling, but any ``torchvision`` import runs ``torchvision/__init__``,
which imports ``torchvision.ops.roi_align``, which imports ``torch._dynamo``: about 2 s of start-up in every
``enhancer enhance`` process (more than the 64-image job's crops take in total). This module is plain torch, runs on
any device, and has no host synchronisation when the caller passes ``max_grid``.

What it matches: box n of ``boxes`` (xyxy, continuous pixel coordinates of ``source``, pixel i covering [i, i+1)) is
cut out of image n and divided into Hc x Wc bins; each bin averages ceil(box_h / Hc) x ceil(box_w / Wc) bilinear
samples spread evenly inside it (``sampling_ratio=0``), coordinates shifted by half a pixel (``aligned=True``). The
edge rules are torchvision's kernel's (``torchvision/csrc/ops/cpu/roi_align_common.h``): a sample more than one pixel
outside the image (y < -1 or y > H, likewise x) contributes 0 but still counts in the average; coordinates in [-1, 0]
are clamped to 0; the last row and column are replicated; a box with no samples gives 0. The coordinates are
computed with the same float operations in the same order, so the sample positions and weights are torchvision's;
only the order of the final sums differs: below 1e-4 on values 0..255 (float32) with up to ~100 samples per bin (the
crops have at most 3 x 3); with thousands, float32 sums of either move ~1e-3 from the float64 result.

How: with these rules the sample's bilinear weight factorises into a y part and an x part (the validity factor
too), and so does the average: out[n] = Ay[n] @ source[n] @ Ax[n]^T with Ay (Hc, H) and Ax (Wc, W) sparse, at most
2 * grid non-zeros a row. Each product is one weighted row gather, ``embedding_bag(mode="sum")``: fused and
vectorised over the batch, with no per-image or per-pixel Python loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def roi_resample(
    source: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], max_grid: int | None = None
) -> torch.Tensor:
    """Resample box n of boxes (N, 4) xyxy (in source pixels, float) out of image n of source (N, C, H, W) to size.

    source is floating point (float32 or float64); boxes are cast to its dtype, as roi_align requires. max_grid is
    the most samples per bin along either axis the caller's boxes can need, e.g. ``H // Hc + 1`` for boxes inside the
    image (``//`` + 1 rather than ceil: a box edge one rounding step past the image must not lose its extra sample);
    None reads it from the boxes (one device-to-host synchronisation). A box that needs more samples than max_grid
    takes max_grid evenly spread ones, as ``roi_align(sampling_ratio=max_grid)`` would. Returns (N, C, Hc, Wc) of
    source's dtype, contiguous, on source's device.
    """
    if not source.is_floating_point():
        raise TypeError(f"roi_resample needs a floating-point source, got {source.dtype}; convert it with .float()")
    if max_grid is not None and max_grid < 1:
        raise ValueError(f"max_grid must be at least 1 (samples per bin), got {max_grid}; None reads it from the boxes")
    n, c, h, w = source.shape
    out_h, out_w = size
    boxes = boxes.to(device=source.device, dtype=source.dtype).reshape(n, 4)
    if max_grid is None:
        max_grid = _max_grid(boxes, size)
    x1, y1, x2, y2 = boxes.unbind(1)
    planes = torch.arange(n * c, device=source.device).view(n, c, 1)  # plane n * C + k holds image n, channel k
    y_rows, y_weight = _axis_taps(y1, y2, out_h, h, max_grid, planes * h)
    x_rows, x_weight = _axis_taps(x1, x2, out_w, w, max_grid, planes * w)
    # every output row of plane p is a weighted sum of rows of p, then every output column one of its columns
    rows = _weighted_rows(source.reshape(n * c * h, w), y_rows, y_weight, c)  # (N * C * Hc, W)
    columns = rows.view(n * c, out_h, w).transpose(1, 2).reshape(n * c * w, out_h)  # (N * C * W, Hc)
    out = _weighted_rows(columns, x_rows, x_weight, c)  # (N * C * Wc, Hc)
    return out.view(n, c, out_w, out_h).transpose(2, 3).contiguous()


def _axis_taps(
    lo: torch.Tensor, hi: torch.Tensor, out: int, length: int, max_grid: int, first_rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sparse resampling matrix of one axis: (N, C, out, 2 * max_grid) table rows and (N, out, 2 * max_grid)
    weights.

    lo, hi (N,) are the box edges along the axis, first_rows (N, C, 1) the table row of each plane's index 0. Each
    sample of an output bin gives two taps, its lower and upper neighbour; their weights hold the bilinear weight,
    the validity factor and 1 / grid (the average). The loop runs over the <= max_grid samples of a bin and writes
    (N, out) slices: small enough at usual batch sizes for torch to run each op on one thread (an op split over two
    threads waits milliseconds when the second core is busy, and this is bookkeeping, not work).
    """
    n, taps = len(lo), 2 * max_grid
    rows = torch.empty(n, first_rows.shape[1], out, taps, dtype=torch.long, device=lo.device)
    weights = torch.empty(n, out, taps, dtype=lo.dtype, device=lo.device)
    start = lo - 0.5  # aligned=True: pixel centres at i + 0.5
    extent = (hi - 0.5) - start
    bin_size = extent / out
    grid = torch.ceil(extent / out).clamp(max=max_grid)  # samples per bin; NaN or <= 0 for empty boxes
    share = (1 / torch.where(grid >= 1, grid, 1.0))[:, None]
    corner = start[:, None] + torch.arange(out, device=lo.device, dtype=lo.dtype) * bin_size[:, None]  # (N, out)
    for g in range(max_grid):
        # torchvision's float operations in its order: start + bin * size + ((g + 0.5) * size) / grid
        pos = corner + ((g + 0.5) * bin_size / grid)[:, None]
        valid = (pos >= -1.0) & (pos <= length) & (g < grid)[:, None]  # NaN positions (empty boxes) fail too
        # [-1, 0] reads row 0; [length - 1, length] reads the last row with weight 1 (it is replicated)
        pos = torch.where(valid, pos, 0.0).clamp(0, length - 1)
        low = pos.floor()
        weight = valid * share
        weights[..., 2 * g + 1] = (pos - low) * weight
        weights[..., 2 * g] = weight - weights[..., 2 * g + 1]
        low = low.long()
        rows[..., 2 * g] = first_rows + low[:, None]
        rows[..., 2 * g + 1] = first_rows + (low + 1).clamp(max=length - 1)[:, None]
    return rows, weights


def _weighted_rows(table: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor, channels: int) -> torch.Tensor:
    """sum_t weights[n, o, t] * table[rows[n, k, o, t]] for every image n, channel k, output index o."""
    n, _, out, taps = rows.shape
    weights = weights[:, None].expand(n, channels, out, taps).reshape(-1, taps)  # a view for one channel
    return F.embedding_bag(rows.view(-1, taps), table, per_sample_weights=weights, mode="sum")


def _max_grid(boxes: torch.Tensor, size: tuple[int, int]) -> int:
    """The most samples per bin any box needs along either axis (one synchronisation); at least 1."""
    starts, ends = boxes[:, :2] - 0.5, boxes[:, 2:] - 0.5  # the extent as _axis_taps computes it, to the last bit
    extent = (ends - starts).flip(1)  # (h, w)
    need = torch.ceil(extent / torch.tensor(size, device=boxes.device, dtype=boxes.dtype))
    return int(need.nan_to_num(0.0, posinf=0.0).amax().clamp_min(1)) if need.numel() else 1
